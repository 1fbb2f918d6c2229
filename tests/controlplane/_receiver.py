"""Helpers of the events tests: a control plane's settings for them, its first owner, and a webhook
receiver (a real HTTP server on a loopback address, recording each request, answering with the statuses
a test queues, then 200)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests import seed_openapi
from tests.security._fake_agent import FakeAgent, settled
from wrenn.controlplane import Settings, create_app


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int

    def verified(self, secret: str) -> bool:
        """The signature checked as a receiver should: HMAC-SHA256 over `<timestamp>.<body>`, in constant
        time."""
        timestamp = self.headers["x-wrenn-timestamp"]
        mac = hmac.new(secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers["x-wrenn-signature"], f"sha256={mac}")


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    #: Statuses to answer, first to last; then 200.
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, check: object, timeout: float = 20.0) -> list[Received]:
        """Wait until `check(received)` holds; the requests so far."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = list(self.received)
            if check(got):  # type: ignore[operator]
                return got
            assert time.monotonic() < deadline, (
                f"the receiver got only {[r.headers.get('x-wrenn-event') for r in got]}"
            )
            time.sleep(0.05)


@contextmanager
def receiver(host: str = "127.0.0.2") -> Iterator[Receiver]:
    """A receiver on `host` (a loopback address other than the fake agent's 127.0.0.1: agents' addresses
    are never webhook targets)."""
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            me = state[0]
            with me.lock:
                status = me.answers.pop(0) if me.answers else 200
                me.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with _serving(host, Handler) as port:
        state.append(Receiver(f"http://{host}:{port}/hook"))
        yield state[0]


@contextmanager
def _serving(host: str, handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """`handler` served on `host` in a thread: its port."""
    server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Homeserver:
    """A Matrix homeserver's client API, as much as apprise uses to post a message: who am I, join the
    room, send to it. Records each request (method, path, Authorization, JSON body)."""

    url: str
    requests: list[tuple[str, str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for method, path, _, body in self.requests if method == "PUT" and "/send/" in path]


@contextmanager
def homeserver(host: str = "127.0.0.3", room: str = "!room:example.org") -> Iterator[Homeserver]:
    state: list[Homeserver] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            me = state[0]
            with me.lock:
                me.requests.append(
                    (
                        self.command,
                        self.path,
                        self.headers.get("authorization", ""),
                        json.loads(raw or b"null"),
                    )
                )
            found: dict[str, Any] = {}
            if self.path.endswith("/account/whoami"):
                found = {"user_id": "@wrenn:example.org", "device_id": "WRENN"}
            elif "/join/" in self.path:
                found = {"room_id": room}
            elif "/send/" in self.path:
                found = {"event_id": f"$ev{len(me.requests)}"}
            data = json.dumps(found).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = answer

        def log_message(self, *args: object) -> None:
            pass

    with _serving(host, Handler) as port:
        state.append(Homeserver(f"http://{host}:{port}"))
        yield state[0]


def events_settings(database_url: str, data_dir: Path, agent: FakeAgent, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "data_dir": data_dir, "local_agents": (agent.url,),
        "monitor_interval_s": 3600, "events_interval_s": 0.1, "webhook_retry_s": (0.2, 0.2),
        "webhook_allow_networks": ("127.0.0.0/8",),
    }  # fmt: skip
    return Settings(**(values | overrides))


@contextmanager
def control_plane(settings: Settings) -> Iterator[TestClient]:
    """The app in-process; every `/v1` answer the seed's OpenAPI document describes is checked against it."""
    app = create_app(settings)
    with TestClient(app) as client:
        settled(app)
        client.event_hooks["response"].append(seed_openapi.hook)
        yield client


def owner(api: TestClient) -> dict[str, str]:
    r = api.post("/v1/auth/signup", json={"email": "owner@example.com", "password": "correct horse"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}
