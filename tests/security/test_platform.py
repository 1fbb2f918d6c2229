"""The control plane's attacks against the real platform (a control plane process, a real host agent, a
real VM): another team's template, a BYOC host pointed at the platform's agent, Wrenn's credentials sent
through the traffic proxy into a guest, another team's key on a capsule, and oversized bodies where no
credential is needed. Each is refused, and the platform goes on as before."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .conftest import Platform, raw_http, request

pytestmark = pytest.mark.vm

ECHO_PORT = 8001
ECHO = (
    "import http.server, json\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = json.dumps(dict(self.headers.items())).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    f"http.server.ThreadingHTTPServer(('0.0.0.0', {ECHO_PORT}), H).serve_forever()\n"
)


def _b_owner(p: Platform) -> dict[str, str]:
    r = httpx.post(
        f"{p.base_url}/v1/auth/login", json={"email": "b@example.com", "password": "battery staple"}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _agent_sandboxes(p: Platform) -> set[str]:
    async with p.agent.client() as client:
        return {s.sandbox_id for s in (await client.list_sandboxes(pb.ListSandboxesRequest())).sandboxes}


async def test_another_teams_template_boots_nothing(platform: Platform) -> None:
    p, base = platform, platform.base_url
    key_a, key_b = {"X-API-Key": p.key_a}, {"X-API-Key": p.key_b}
    made = httpx.post(f"{base}/sandboxes/{p.capsule.capsule_id}/snapshots", json={"name": "a-secrets"},
                      headers=key_a, timeout=300)  # fmt: skip
    assert made.status_code == 201, made.text
    try:
        ids = [d.name for d in (p.agent.data_dir / "templates").iterdir() if d.name.startswith("tpl-")]
        assert ids, "the template is on the host under its id"
        before = await _agent_sandboxes(p)
        for name in ("a-secrets", *ids):
            r = httpx.post(
                f"{base}/v1/capsules", json={"template": name, "memory_mb": 256}, headers=key_b, timeout=60
            )
            assert r.status_code == 404, (name, r.text)
            r = httpx.post(
                f"{base}/sandboxes", json={"templateID": name}, headers={"X-API-KEY": p.key_b}, timeout=60
            )
            assert (r.status_code, r.json().get("error_code")) == (404, "template_not_found"), (name, r.text)
        assert httpx.get(f"{base}/v1/capsules", headers=key_b).json() == []
        async with p.agent.client() as client:  # the agent's half: a base image's name is never a template
            for tpl_id in ids:
                with pytest.raises(Exception) as err:
                    await client.create_sandbox(pb.CreateSandboxRequest(
                        sandbox_id="cl-evil", template=tpl_id, vcpus=1, memory_mb=256), timeout_ms=60_000)  # fmt: skip
                assert getattr(err.value, "code", None) is not None and err.value.code.name == "NOT_FOUND"  # type: ignore[attr-defined]
        assert await _agent_sandboxes(p) == before
    finally:
        assert httpx.delete(f"{base}/templates/a-secrets", headers=key_a, timeout=60).status_code == 204


async def test_a_byoc_host_at_the_platform_agents_address_reaches_nothing(platform: Platform) -> None:
    p, base = platform, platform.base_url
    owner = _b_owner(p)
    created = httpx.post(f"{base}/v1/hosts", json={"type": "byoc"}, headers=owner)
    assert created.status_code == 201, created.text
    registered = httpx.post(f"{base}/v1/hosts/register", json={
        "token": created.json()["registration_token"], "address": f"127.0.0.1:{p.agent.port}",
        "memory_mb": 1 << 22, "cpu_cores": 64, "proxy_port": p.agent.proxy_port,
    })  # fmt: skip
    assert registered.status_code == 201, registered.text
    host_id = registered.json()["host"]["id"]
    before = await _agent_sandboxes(p)
    # B's capsule goes to B's "host" (it claims the most room): the call never reaches the real agent.
    r = httpx.post(
        f"{base}/v1/capsules", json={"memory_mb": 256}, headers={"X-API-Key": p.key_b}, timeout=120
    )
    assert (r.status_code, r.json()["error"]["code"]) == (503, "host_unavailable"), r.text
    assert "127.0.0.1" not in r.text
    r = httpx.delete(f"{base}/v1/hosts/{host_id}?force=true", headers=owner, timeout=60)
    assert r.status_code == 204, r.text  # and no Terminate reached the platform's agent:
    assert await _agent_sandboxes(p) == before and p.agent.proc.poll() is None
    assert p.capsule.commands.run("echo still here", timeout=60).stdout == "still here\n"


def test_wrenn_credentials_stay_out_of_the_guest(platform: Platform) -> None:
    p = platform
    p.capsule.commands.run(f'python3 -c "{ECHO}"', background=True, tag="echo")
    ready = p.capsule.commands.run(
        f"for i in $(seq 100); do curl -sf localhost:{ECHO_PORT}/ >/dev/null && exit 0; sleep 0.2; done; exit 1",
        timeout=60,
    )
    assert ready.exit_code == 0
    host = f"{ECHO_PORT}-{p.capsule.capsule_id}.wrenn.local"
    for authorization in (f"Bearer {p.key_a}", "Basic YXBwOnNlY3JldA=="):
        headers = {"Host": host, "X-API-Key": p.key_a, "Authorization": authorization,
                   "Cookie": "wrenn_session=s; app=1", "X-App": "yes"}  # fmt: skip
        status, data = raw_http(p.cp_port, request("GET", "/", headers))
        assert status == 200, data[:300]
        seen = {k.lower(): v for k, v in json.loads(data.split(b"\r\n\r\n", 1)[1]).items()}
        assert "x-api-key" not in seen and p.key_a not in json.dumps(seen)
        assert seen["cookie"] == "app=1" and seen["x-app"] == "yes"
        assert seen.get("authorization") == (None if authorization.startswith("Bearer") else authorization)


def test_another_teams_key_changes_nothing(platform: Platform) -> None:
    p, base = platform, platform.base_url
    cid = p.capsule.capsule_id
    for method, path, body in (
        ("POST", f"/v1/capsules/{cid}/exec", {"cmd": "touch", "args": ["/tmp/pwned"]}),
        ("DELETE", f"/v1/capsules/{cid}", None),
        ("POST", f"/v1/capsules/{cid}/pause", None),
        ("POST", f"/sandboxes/{cid}/timeout", {"timeout": 1}),
        ("DELETE", f"/sandboxes/{cid}", None),
    ):
        r = httpx.request(method, f"{base}{path}", json=body, headers={"X-API-Key": p.key_b}, timeout=60)
        assert r.status_code == 404, (path, r.text)
    assert p.capsule.get_info().status == "running"
    assert p.capsule.commands.run("test -e /tmp/pwned", timeout=60).exit_code == 1


def test_oversized_bodies_without_a_credential(platform: Platform) -> None:
    """A 1 GiB body announced to routes anyone may call is refused at once: the server answers 413 before
    the body is sent (it never waits for, let alone reads, what it would refuse)."""
    for path in ("/v1/auth/signup", "/v1/auth/login", "/v1/hosts/register", "/v1/admin/bootstrap"):
        head = request("POST", path, {"Host": "127.0.0.1", "Content-Type": "application/json"})
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % (1 << 30))
        with socket.create_connection(("127.0.0.1", platform.cp_port), timeout=30) as s:
            s.sendall(head + b'{"email": "' + b"x" * 1024)
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
