"""/health, /metrics, /envs, /init, the access token and /snapshot/prepare, on fresh envd processes."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from pathlib import Path

import httpx
import pytest
from connectrpc.errors import ConnectError

from tests.conftest import Envd, start_envd
from wrenn.proto.envd.process.process_pb import ListRequest, SendSignalRequest, Signal

from ._rpc import by_pid, code_of, process_client, start_request


def test_health_and_metrics(fresh_envd: Envd) -> None:
    health = httpx.get(f"{fresh_envd.url}/health")
    assert health.status_code == 204 and health.content == b""
    metrics = httpx.get(f"{fresh_envd.url}/metrics").json()
    for key in (
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "mem_cache",
        "mem_total_mib",
        "mem_used_mib",
        "disk_used",
        "disk_total",
    ):
        assert key in metrics, key
    assert metrics["mem_total"] >= metrics["mem_used"] > 0 and metrics["disk_total"] > 0


def test_init_validates_its_body(fresh_envd: Envd) -> None:
    def post(body: bytes) -> httpx.Response:
        return httpx.post(
            f"{fresh_envd.url}/init", content=body, headers={"Content-Type": "application/json"}
        )

    cases = {
        b"{not json": "invalid JSON",
        b"[1]": "JSON object",
        b'{"defaultUser": "no-such-user"}': "does not exist",
        b'{"envVars": {"A": 1}}': "envVars",
        b'{"timestamp": "yesterday"}': "RFC 3339",
        b'{"defaultWorkdir": "relative"}': "absolute",
        b'{"accessToken": 5}': "accessToken",
        b'{"hostname": "not a hostname"}': "hostname",
        b'{"entropy": "%%%"}': "base64",
        b'{"entropy": "' + base64.b64encode(bytes(513)) + b'"}': "at most 512",
    }
    for body, words in cases.items():
        r = post(body)
        assert r.status_code == 400, body
        assert r.json()["code"] == 400 and words in r.json()["message"], (body, r.text)


def test_init_sets_env_and_the_token_guards_everything_but_health(fresh_envd: Envd) -> None:
    url = fresh_envd.url
    assert (
        fresh_envd.init(
            envVars={"A": "1"}, accessToken="s3cret", timestamp="2026-01-01T00:00:00.123456789Z"
        ).status_code
        == 204
    )
    # the clock of a --dev envd is never touched
    assert time.time() > 1_790_000_000
    assert httpx.get(f"{url}/health").status_code == 204
    for method, path in (
        ("GET", "/envs"),
        ("GET", "/metrics"),
        ("POST", "/init"),
        ("POST", "/snapshot/prepare"),
    ):
        r = httpx.request(method, f"{url}{path}", json={})
        assert r.status_code == 401 and r.json()["code"] == 401, path
        wrong = httpx.request(method, f"{url}{path}", json={}, headers={"X-Access-Token": "s3cre7"})
        assert wrong.status_code == 401, path
    assert httpx.get(f"{url}/files", params={"path": "/etc/hostname"}).status_code == 401
    rpc = httpx.post(f"{url}/process.Process/List", json={}, headers={"Content-Type": "application/json"})
    assert rpc.status_code == 401 and rpc.json()["code"] == "unauthenticated"
    assert httpx.get(f"{url}/envs", headers={"X-Access-Token": "s3cret"}).json() == {"A": "1"}
    # a new token replaces the old one, and only the holder of the old one may set it
    assert fresh_envd.init(accessToken="next").status_code == 204
    assert httpx.get(f"{url}/envs", headers={"X-Access-Token": "s3cret"}).status_code == 401
    assert httpx.get(f"{url}/envs", headers={"X-Access-Token": "next"}).status_code == 200


async def test_connect_rpc_needs_the_token(fresh_envd: Envd) -> None:
    fresh_envd.init(accessToken="t")
    fresh_envd.access_token = None
    async with process_client(fresh_envd) as client:
        with pytest.raises(ConnectError) as err:
            await client.list(ListRequest())
        assert code_of(err.value) == "unauthenticated"
        listed = await client.list(ListRequest(), headers={"X-Access-Token": "t"})
    assert list(listed.processes) == []


def _idle_keepalive_connection(envd: Envd) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", envd.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"204" in s.recv(4096)
    s.settimeout(5)
    return s


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


async def test_snapshot_prepare_closes_idle_connections_and_restore_closes_the_rest(fresh_envd: Envd) -> None:
    envd = fresh_envd
    idle = _idle_keepalive_connection(envd)
    async with process_client(envd) as client:
        # a busy connection: a long-running Start stream, as an SDK holds for a background command
        stream = aiter(client.start(start_request("sleep", "600"), headers={"Keepalive-Ping-Interval": "1"}))
        pid = (await anext(stream)).event.event.value.pid  # type: ignore[union-attr]

        prepared = httpx.post(f"{envd.url}/snapshot/prepare")
        assert prepared.status_code == 204 and prepared.headers["connection"] == "close"
        assert await asyncio.to_thread(_closed_by_server, idle)
        idle.close()
        await anext(stream)  # the busy stream goes on until the restore

        # after a restore the host calls /init: connections from before the snapshot are cut
        assert httpx.post(f"{envd.url}/init", json={}).status_code == 204
        with pytest.raises(ConnectError):
            async for _ in stream:
                pass

    async with process_client(envd) as client:  # new connections work, the process is intact
        listed = await client.list(ListRequest())
        assert [p.pid for p in listed.processes] == [pid]
        await client.send_signal(SendSignalRequest(process=by_pid(pid), signal=Signal.SIGKILL))


def test_before_a_token_only_the_host_may_call(envd_tmp: Path) -> None:
    """A restored guest's envd has no token until the host's /init: in that window it answers only the
    host's address (here 127.0.0.2, as the guest's gateway is in a VM), whatever else reaches it (code in
    the guest on localhost, anything routed to it) gets 403; once a token is set, the token rules."""
    envd = start_envd(envd_tmp, "--host-address", "127.0.0.2")
    host = httpx.Client(base_url=envd.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    other = httpx.Client(base_url=envd.url)  # from 127.0.0.1
    try:
        assert other.get("/health").status_code == 204  # says nothing, and the host polls it
        for method, path in (("GET", "/envs"), ("POST", "/init"), ("GET", "/files?path=/etc/hostname")):
            refused = other.request(method, path, json={})
            assert refused.status_code == 403 and "only the host" in refused.json()["message"], path
        rpc = other.post("/process.Process/List", json={}, headers={"Content-Type": "application/json"})
        assert rpc.status_code == 403 and rpc.json()["code"] == "permission_denied"
        assert host.get("/envs").status_code == 200
        assert host.post("/init", json={"accessToken": "s3cret"}).status_code == 204
        assert other.get("/envs").status_code == 401
        assert other.get("/envs", headers={"X-Access-Token": "s3cret"}).status_code == 200
    finally:
        host.close()
        other.close()
        envd.stop()


def test_the_hosts_request_id_is_on_envds_log_records(fresh_envd: Envd) -> None:
    """The agent's envd client sends the request id of the call it serves (a create's /init here), and envd
    logs it with what it did for that request; a request without one is logged without."""
    from wrenn._shared.logs import request_id_bound
    from wrenn.agent._envd import EnvdClient

    async def init() -> None:
        client = EnvdClient("127.0.0.1", access_token=None, port=fresh_envd.port)
        with request_id_bound("req-envd-test.7"):
            await client.init(access_token=None, default_user="root", env={"A": "1"})
        await client.init(access_token=None, default_user="root", env={})
        await client.http.aclose()

    asyncio.run(init())
    lines = [line for line in fresh_envd.log().splitlines() if "initialised" in line]
    assert len(lines) == 2, fresh_envd.log()[-2000:]
    assert "request_id=req-envd-test.7" in lines[0] and "request_id" not in lines[1]
