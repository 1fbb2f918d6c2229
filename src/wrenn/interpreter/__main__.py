"""`python -m wrenn.interpreter`: the code interpreter's execution server (started by the
code-interpreter image's start command, beside Jupyter Server)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .._shared.logs import configure
from ._app import create_app
from ._config import InterpreterConfig


def main(argv: list[str] | None = None) -> int:
    defaults = InterpreterConfig()
    p = argparse.ArgumentParser(prog="python -m wrenn.interpreter", description=__doc__)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=49999)
    p.add_argument("--jupyter-url", default=defaults.jupyter_url)
    p.add_argument("--envd-url", default=defaults.envd_url)
    p.add_argument("--python-kernel", default=defaults.python_kernel, help="kernel spec of Python contexts")
    p.add_argument("--cwd", default=defaults.cwd, help="a new context's working directory")
    p.add_argument("--identity-file", type=Path, default=defaults.identity_file)
    p.add_argument("--preload", default=",".join(defaults.preload), help="languages started at once")
    p.add_argument("--warm-modules", default=",".join(defaults.warm_modules))
    p.add_argument("--keepalive-s", type=float, default=defaults.keepalive_s, help="keepalive line interval")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    args = p.parse_args(argv)
    configure(args.log_level, args.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request to Jupyter is noise
    config = InterpreterConfig(
        jupyter_url=args.jupyter_url,
        envd_url=args.envd_url,
        cwd=args.cwd,
        python_kernel=args.python_kernel,
        identity_file=args.identity_file,
        preload=tuple(x for x in args.preload.split(",") if x),
        warm_modules=tuple(x for x in args.warm_modules.split(",") if x),
        keepalive_s=args.keepalive_s,
    )
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=640,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
