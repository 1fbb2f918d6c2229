"""The platform the attack suite runs against: a control plane process over a real host agent that boots
real VMs, shared by every module of `tests/security` (one agent, one first boot). Two teams, each with an
API key; team A has a capsule serving HTTP on port 8000.

Attacks that need no VM run against the control plane in-process instead (`cp`, on SQLite and
PostgreSQL), over a recording stand-in agent (`_fake_agent.py`) that says which calls reached it."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.agent._agent import AgentProcess, running_agent
from tests.conftest import _control_plane, bootstrap_admin
from tests.controlplane import conftest as _cp_fixtures
from tests.controlplane._db import snapshot
from wrenn import Capsule
from wrenn.controlplane import Settings, create_app

from ._fake_agent import FakeAgent, settled

GUEST_PORT = 8000


@dataclass
class Platform:
    base_url: str
    agent: AgentProcess
    key_a: str
    key_b: str
    capsule: Capsule

    @property
    def cp_port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def platform(image: object) -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("the host agent needs root")
    with running_agent(f"sc{os.getpid() % 1000:03d}x") as agent:
        for base, key_a in _control_plane(agent.url, agent.token_file):
            b = httpx.post(
                f"{base}/v1/auth/signup", json={"email": "b@example.com", "password": "battery staple"}
            )
            jwt_b = {"Authorization": f"Bearer {b.json()['token']}"}
            key_b = httpx.post(f"{base}/v1/api-keys", json={"name": "b"}, headers=jwt_b).json()["key"]
            with Capsule(memory_mb=256, wait=True, api_key=key_a, base_url=base) as capsule:
                capsule.files.write("/tmp/www/hello.txt", "hello from the guest\n")
                capsule.commands.run(
                    f"cd /tmp/www && python3 -m http.server {GUEST_PORT}", background=True, tag="www"
                )
                ready = capsule.commands.run(
                    f"for i in $(seq 100); do curl -sf localhost:{GUEST_PORT}/hello.txt && exit 0; sleep 0.2;"
                    " done; exit 1",
                    timeout=60,
                )
                assert ready.exit_code == 0, "the guest server did not start"
                yield Platform(base, agent, key_a, key_b, capsule)


def raw_http(port: int, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send `request` as written (no client normalises its path) to 127.0.0.1:`port`; the status and
    whatever came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n", 1)[0].split()
    return (int(head[1]) if len(head) > 1 else 0), data


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


# --- in-process attacks: the control plane in the test process (SQLite and PostgreSQL), a recording agent


class ClientAddress:
    """The app, with the client address a test names in `X-Test-Client` (as a trusted proxy in front would
    say it), so one test can be several attackers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            given = dict(scope["headers"]).get(b"x-test-client")
            if given:
                scope = {**scope, "client": (given.decode(), 40000)}
        await self.app(scope, receive, send)


#: The control plane suite's database fixtures (SQLite, and a private PostgreSQL), shared with these tests.
database_url = _cp_fixtures.database_url
postgres_url = _cp_fixtures.postgres_url
fake_agent = _cp_fixtures.fake_agent


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, data_dir=data_dir, monitor_interval_s=3600, **overrides)


@pytest.fixture
def cp_settings(database_url: str, tmp_path: Path, fake_agent: FakeAgent) -> Settings:
    """A control plane with the recording agent as its one (local) host."""
    return make_settings(database_url, tmp_path / "cp", local_agents=(fake_agent.url,))


@pytest.fixture
def cp(cp_settings: Settings) -> Iterator[TestClient]:
    app = create_app(cp_settings)
    with TestClient(ClientAddress(app)) as client:
        settled(app)
        yield client


@dataclasses.dataclass
class Account:
    jwt: dict[str, str]
    user_id: str
    team_id: str
    email: str


def account(api: TestClient, email: str, password: str = "correct horse") -> Account:
    r = api.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    body = r.json()
    return Account({"Authorization": f"Bearer {body['token']}"}, body["user_id"], body["team_id"], email)


def admin_account(api: TestClient) -> Account:
    r = bootstrap_admin(api.post, api.app.state.settings.data_dir, "root@example.com")  # type: ignore[attr-defined]
    body = r.json()
    return Account(
        {"Authorization": f"Bearer {body['token']}"}, body["user_id"], body["team_id"], body["email"]
    )


def api_key(api: TestClient, owner: Account, **body: Any) -> dict[str, str]:
    r = api.post("/v1/api-keys", json={"name": "k", **body}, headers=owner.jwt)
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


def rows(api: TestClient) -> dict[str, Any]:
    """Every row of every table but `hosts` (the host monitor's first round touches heartbeats on its own
    schedule) and `events` (the dispatcher marks them dispatched on its own; an event comes with a change
    of another table anyway): what an attack must leave unchanged."""
    found = snapshot(api)
    found.pop("hosts", None)
    found.pop("events", None)
    return found
