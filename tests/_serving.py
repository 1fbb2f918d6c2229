"""Serving an app for a test on loopback, in a thread: an ASGI app with uvicorn (a control plane with its
lifespan), or a WSGI one with werkzeug (test stand-ins for identity providers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from werkzeug.serving import make_server

from tests.controlplane.conftest import _free_port


@contextmanager
def serving_asgi(app: Any, port: int = 0, within_s: float = 20.0) -> Iterator[str]:
    """`http://127.0.0.1:<port>` (a free one unless given) while the app runs there (its lifespan too)."""
    port = port or _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + within_s
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serving_wsgi(app: Any, host: str) -> Iterator[str]:
    """`http://<host>:<port>` while the app runs there."""
    server = make_server(host, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
