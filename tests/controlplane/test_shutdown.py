"""The control plane's process at SIGTERM: it stops within its grace (`WRENN_SHUTDOWN_GRACE_S`) even while a
client holds an endless stream open (the event stream), instead of waiting for the stream forever (until
whatever stops it gives up and kills it: a supervisor's, a test's or Kubernetes' own deadline)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import bootstrap_admin, start_control_plane


def test_sigterm_cuts_an_open_stream_after_the_grace(tmp_path: Path) -> None:
    server, base = start_control_plane(tmp_path, env={"WRENN_SHUTDOWN_GRACE_S": "2"})
    log = tmp_path / "server.log"
    try:
        token = bootstrap_admin(httpx.post, tmp_path, "ops@example.com", base=base).json()["token"]
        opened, ended = threading.Event(), threading.Event()

        def listen() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            try:
                with httpx.stream("GET", f"{base}/v1/events/stream", headers=headers, timeout=None) as r:
                    assert r.status_code == 200
                    opened.set()
                    for _ in r.iter_lines():
                        pass
            except httpx.HTTPError:
                pass
            finally:
                ended.set()

        threading.Thread(target=listen, daemon=True).start()
        assert opened.wait(15), "the event stream did not open"
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(20)  # raises if it waits for the stream
        took = time.monotonic() - stopping
        assert took < 15, took
        assert ended.wait(5), "the client's stream was left open"
        assert "timeout graceful shutdown exceeded" in log.read_text().lower(), log.read_text()[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
