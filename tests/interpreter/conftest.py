from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interpreter._server import Interpreter, running_interpreter


@pytest.fixture(scope="module")
def interpreter() -> Iterator[Interpreter]:
    """One execution server (with its Jupyter Server and envd) per module; keepalives every second."""
    with running_interpreter(keepalive_s=1.0) as server:
        yield server
