"""The platform the attack suite runs against: a control plane process over a real host agent that boots
real VMs, shared by every module of `tests/security` (one agent, one first boot). Two teams, each with an
API key; team A has a capsule serving HTTP on port 8000."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.agent._agent import AgentProcess, running_agent
from tests.conftest import _control_plane
from wrenn import Capsule

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
