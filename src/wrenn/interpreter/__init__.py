"""The code interpreter's execution server: guest code, beside envd in the `code-interpreter` image.

It speaks E2B's code-interpreter protocol on port 49999 (`POST /execute` streams JSON lines; contexts are
Jupyter kernels) in front of Jupyter Server on 8888, so that `e2b-code-interpreter`'s `run_code` works
unchanged. It imports nothing of Wrenn's server side:

    app = create_app(InterpreterConfig(jupyter_url="http://127.0.0.1:8888"))
"""

from ._app import create_app
from ._config import InterpreterConfig
from ._languages import LANGUAGES, UnknownLanguage

__all__ = ["LANGUAGES", "InterpreterConfig", "UnknownLanguage", "create_app"]
