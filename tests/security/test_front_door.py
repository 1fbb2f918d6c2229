"""The front door: what anyone on the internet (no API key at all) can send through the traffic proxy,
and what any user of the host can send to the host agent.

1. The traffic proxy forwards `{port}-{id}.{domain}` (or E2B's headers) to the agent. A path that climbs
   out of `/proxy/{id}/{port}/` (`..`, encoded or not, doubled, backslashes, empty segments) is refused
   before anything is looked up, and even a path that got through would land on the agent's traffic
   listener, which serves nothing but `/proxy/...`: the agent's API is never reachable from there.
2. A local agent listens on loopback: without its secret (a root-only file) it answers 401 on both its
   listeners, and every name that becomes a path on the host is checked (`../../tmp/evil` is no template).
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess

import pytest
from connectrpc.errors import ConnectError

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .conftest import GUEST_PORT, Platform, raw_http, request

pytestmark = pytest.mark.vm

RPC = "hostagent.v1.HostAgentService/ListSandboxes"
#: Ways to climb from `/proxy/{id}/{port}/` to the agent's root, as an attacker would spell them.
TRAVERSALS = [
    f"/../../../{RPC}",
    f"/%2e%2e/%2e%2e/%2e%2e/{RPC}",
    f"/%2E%2E/%2E%2E/%2E%2E/{RPC}",
    f"/%252e%252e/%252e%252e/%252e%252e/{RPC}",
    f"/..%2f..%2f..%2f{RPC.replace('/', '%2f')}",
    f"/..%5c..%5c..%5c{RPC}",
    f"/..\\..\\..\\{RPC}",
    f"//..//..//..//{RPC}",
    f"/./.././../../{RPC}",
    f"/a/%2e%2e/%2e%2e/%2e%2e/%2e%2e/{RPC}",
    f"/.%2e/.%2e/.%2e/{RPC}",
]


def _routes(p: Platform) -> list[dict[str, str]]:
    cid = p.capsule.capsule_id
    return [
        {"Host": f"{GUEST_PORT}-{cid}.wrenn.local"},
        {"Host": "127.0.0.1", "E2b-Sandbox-Id": cid, "E2b-Sandbox-Port": str(GUEST_PORT)},
        {"Host": "127.0.0.1", "E2b-Sandbox-Id": cid, "E2b-Sandbox-Port": "49983"},
    ]


def test_a_plain_path_is_served(platform: Platform) -> None:
    """The control: the same requests with an honest path reach the guest (so a refusal below is the
    path's doing, not a broken route)."""
    for headers in _routes(platform)[:2]:
        status, data = raw_http(platform.cp_port, request("GET", "/hello.txt", headers))
        assert status == 200 and data.endswith(b"hello from the guest\n"), data[:300]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_through_the_proxy_is_refused(platform: Platform, path: str) -> None:
    body = b"{}"
    for headers in _routes(platform):
        rpc = {**headers, "Content-Type": "application/json"}
        status, data = raw_http(platform.cp_port, request("POST", path, rpc, body))
        assert status == 400, data[:500]
        assert (
            b"sandboxes" not in data
            and platform.capsule.capsule_id.encode() not in data.split(b"\r\n\r\n")[-1]
        )
        upgrade = {**headers, "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        status, data = raw_http(platform.cp_port, request("GET", path, upgrade))
        assert status == 400, data[:500]


def test_the_traffic_listener_serves_nothing_but_proxy(platform: Platform) -> None:
    """Even with the agent's own secret, the traffic listener has no RPCs and refuses climbing paths."""
    agent = platform.agent
    auth = {"Host": "127.0.0.1", "Content-Type": "application/json", **agent.headers}
    status, data = raw_http(agent.proxy_port, request("POST", f"/{RPC}", auth, b"{}"))
    assert status == 404, data[:300]
    cid = platform.capsule.capsule_id
    for path in TRAVERSALS:
        status, data = raw_http(
            agent.proxy_port, request("POST", f"/proxy/{cid}/{GUEST_PORT}{path}", auth, b"{}")
        )
        assert status == 400, (path, data[:300])
    status, data = raw_http(agent.proxy_port, request("GET", f"/proxy/{cid}/{GUEST_PORT}/hello.txt", auth))
    assert status == 200 and data.endswith(b"hello from the guest\n")


def test_the_agents_listeners_want_its_secret(platform: Platform) -> None:
    agent = platform.agent
    cid = platform.capsule.capsule_id
    plain = {"Host": "127.0.0.1", "Content-Type": "application/json"}
    for port, path in ((agent.port, f"/{RPC}"), (agent.proxy_port, f"/proxy/{cid}/{GUEST_PORT}/hello.txt")):
        for headers in (
            plain,
            {**plain, "X-Wrenn-Agent-Token": "guess"},
            {**plain, "Authorization": "Bearer x"},
        ):
            status, data = raw_http(port, request("POST", path, headers, b"{}"))
            assert status == 401, data[:300]
    mode = agent.token_file.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and agent.token_file.stat().st_uid == 0


LOCAL_USER_PROBE = r"""
import json, socket, sys
port, proxy_port, token_file, cid = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
try:
    open(token_file).read()
    out["token"] = "read"
except OSError as exc:
    out["token"] = type(exc).__name__
def call(p, path):
    s = socket.create_connection(("127.0.0.1", int(p)))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return int(data.split()[1])
out["api"] = call(port, "/hostagent.v1.HostAgentService/ListSandboxes")
out["create"] = call(port, "/hostagent.v1.HostAgentService/CreateSandbox")
out["proxy"] = call(proxy_port, f"/proxy/{cid}/49983/health")
print(json.dumps(out))
"""


def test_a_local_unprivileged_user_gets_nothing(platform: Platform, test_user: pwd.struct_passwd) -> None:
    agent = platform.agent
    args = [str(agent.port), str(agent.proxy_port), str(agent.token_file), platform.capsule.capsule_id]
    result = subprocess.run(
        ["runuser", "-u", test_user.pw_name, "--", "/usr/bin/python3", "-c", LOCAL_USER_PROBE, *args],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"token": "PermissionError", "api": 401, "create": 401, "proxy": 401}


@pytest.mark.parametrize(
    "template",
    ["../../../tmp/evil", "..", ".", "minimal/../python", "/tmp/evil", "a" * 65, "MINIMAL", "min\x00imal"],
)
async def test_names_that_would_become_paths_are_refused(
    platform: Platform, template: str, tmp_path: object
) -> None:
    async with platform.agent.client() as client:
        with pytest.raises(ConnectError) as err:
            await client.create_sandbox(
                pb.CreateSandboxRequest(sandbox_id="sb-evil", template=template, vcpus=1, memory_mb=256),
                timeout_ms=60_000,
            )
        assert err.value.code.name in ("INVALID_ARGUMENT", "NOT_FOUND"), err.value
        for sandbox_id in ("../x", "..", "a/b", "A", "-x"):
            with pytest.raises(ConnectError) as err:
                await client.create_sandbox(
                    pb.CreateSandboxRequest(sandbox_id=sandbox_id, template="minimal", vcpus=1, memory_mb=256)
                )
            assert err.value.code.name == "INVALID_ARGUMENT"
        for name in ("../../images", "..", "a/b"):
            with pytest.raises(ConnectError) as err:
                await client.delete_template(pb.DeleteTemplateRequest(name=name))
            assert err.value.code.name in ("INVALID_ARGUMENT", "NOT_FOUND")
        listed = await client.list_sandboxes(pb.ListSandboxesRequest())
        assert [s.sandbox_id for s in listed.sandboxes] == [platform.capsule.capsule_id]
    assert (platform.agent.data_dir / "images").exists() and os.listdir(platform.agent.data_dir / "images")
