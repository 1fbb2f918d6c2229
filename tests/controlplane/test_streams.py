"""The WebSockets' handshake and in-band errors, without VMs: capsule rows are written straight to the database.

The streams themselves (exec, process, pty, watch) are exercised end to end by tests/sdk/test_sdk_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx_ws
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from wrenn.controlplane.db import Capsule, Host
from wrenn.controlplane.routes import streams

ROUTES = [
    "/v1/capsules/{id}/exec/stream",
    "/v1/capsules/{id}/processes/proc-x/stream",
    "/v1/capsules/{id}/pty",
    "/v1/capsules/{id}/files/watch?path=/tmp",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket closes


def _account(api: TestClient, name: str) -> dict[str, str]:
    r = api.post("/v1/auth/signup", json={"email": f"{name}@example.com", "password": "correct horse"})
    assert r.status_code == 201, r.text
    account = dict(r.json())
    key = api.post(
        "/v1/api-keys", json={"name": "k"}, headers={"Authorization": f"Bearer {account['token']}"}
    )
    account["key"] = key.json()["key"]
    return account


def _add(api: TestClient, *rows: Any) -> None:
    async def insert() -> None:
        async with api.app.state.sessions() as session:  # type: ignore[attr-defined]
            session.add_all(rows)
            await session.commit()

    assert api.portal is not None
    api.portal.call(insert)


def _capsule(capsule_id: str, team_id: str, host_id: str | None, status: str = "running") -> Capsule:
    return Capsule(
        id=capsule_id,
        team_id=team_id,
        host_id=host_id,
        template="minimal",
        vcpus=1,
        memory_mb=256,
        status=status,
    )


@pytest.fixture
def world(api: TestClient) -> dict[str, Any]:
    """Two teams; ada owns a running capsule on an online host whose agent does not answer, a stopped
    one, and one whose host is offline."""
    ada, bob = _account(api, "ada"), _account(api, "bob")
    _add(
        api,
        Host(id="host-dead", address=f"http://127.0.0.1:{_closed_port()}", status="online"),
        Host(id="host-off", address="http://127.0.0.1:1", status="unreachable"),
    )
    _add(
        api,
        _capsule("cl-running", ada["team_id"], "host-dead"),
        _capsule("cl-stopped", ada["team_id"], "host-dead", status="stopped"),
        _capsule("cl-offline", ada["team_id"], "host-off"),
    )
    return {"ada": ada, "bob": bob}


def _error(
    api: TestClient, path: str, headers: dict[str, str] | None = None, *first: dict[str, Any]
) -> dict[str, Any]:
    """The in-band error of a socket, checking that the server closes it right after."""
    with api.websocket_connect(path, headers=dict(headers or {})) as ws:
        for message in first:
            ws.send_json(message)
        reply = dict(ws.receive_json())
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    assert reply["type"] == "error", reply
    return reply


@pytest.mark.parametrize("route", ROUTES)
def test_bad_credentials_get_an_in_band_error_then_a_close(api: TestClient, route: str) -> None:
    path = route.format(id="cl-x")
    reply = _error(api, path, {"X-API-Key": "wrn_" + "0" * 32})
    assert reply["code"] == "unauthorized"
    assert _error(api, path, {"Authorization": "Bearer not-a-jwt"})["code"] == "unauthorized"
    if route.endswith("/pty"):
        assert reply["fatal"] is True


def test_first_message_auth(api: TestClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    ada = world["ada"]
    path = "/v1/capsules/cl-nope/exec/stream"
    # A valid JWT or API key in the first message: the caller is known, so the capsule is looked up.
    assert _error(api, path, None, {"type": "auth", "token": ada["token"]})["code"] == "not_found"
    assert _error(api, path, None, {"type": "auth", "token": ada["key"]})["code"] == "not_found"
    # Bad ones are refused.
    assert _error(api, path, None, {"type": "auth", "token": "wrn_" + "1" * 32})["code"] == "unauthorized"
    assert _error(api, path, None, {"type": "auth", "token": "junk"})["code"] == "unauthorized"
    assert _error(api, path, None, {"type": "start", "cmd": "ls"})["code"] == "unauthorized"
    # Nothing within the time limit.
    monkeypatch.setattr(streams, "AUTH_TIMEOUT_S", 0.2)
    reply = _error(api, path)
    assert reply["code"] == "unauthorized" and "within" in reply["data"]


@pytest.mark.parametrize("route", ROUTES)
def test_capsule_checks_are_in_band(api: TestClient, world: dict[str, Any], route: str) -> None:
    ada, bob = {"X-API-Key": world["ada"]["key"]}, {"Authorization": f"Bearer {world['bob']['token']}"}
    assert _error(api, route.format(id="cl-missing"), ada)["code"] == "not_found"
    assert _error(api, route.format(id="cl-running"), bob)["code"] == "not_found"  # another team's
    assert _error(api, route.format(id="cl-stopped"), ada)["code"] == "invalid_state"
    assert _error(api, route.format(id="cl-offline"), ada)["code"] == "host_unavailable"


def test_bad_first_messages(api: TestClient, world: dict[str, Any]) -> None:
    ada = {"X-API-Key": world["ada"]["key"]}
    exec_path, pty_path = "/v1/capsules/cl-running/exec/stream", "/v1/capsules/cl-running/pty"
    assert _error(api, exec_path, ada, {"type": "start"})["code"] == "invalid_request"
    assert (
        _error(api, exec_path, ada, {"type": "start", "cmd": "ls", "args": "-l"})["code"] == "invalid_request"
    )
    reply = _error(api, pty_path, ada, {"type": "hello"})
    assert (reply["code"], reply["fatal"]) == ("invalid_request", True)
    assert _error(api, pty_path, ada, {"type": "connect"})["code"] == "invalid_request"
    assert _error(api, pty_path, ada, {"type": "start", "cols": 0})["code"] == "invalid_request"
    assert _error(api, "/v1/capsules/cl-running/files/watch", ada)["code"] == "invalid_request"  # no path


def test_an_unreachable_agent_is_an_in_band_error(api: TestClient, world: dict[str, Any]) -> None:
    ada = {"X-API-Key": world["ada"]["key"]}
    start = {"type": "start", "cmd": "/bin/true"}
    assert _error(api, "/v1/capsules/cl-running/exec/stream", ada, start)["code"] == "host_unavailable"
    reply = _error(api, "/v1/capsules/cl-running/pty", ada, {"type": "start"})
    assert (reply["code"], reply["fatal"]) == ("host_unavailable", True)
    assert _error(api, "/v1/capsules/cl-running/files/watch?path=/tmp", ada)["code"] == "host_unavailable"


def test_pty_input_is_coalesced_in_order_and_never_dropped() -> None:
    async def scenario() -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(4)
        for message in (
            {"type": "input", "data": "Yg=="},  # b
            {"type": "input", "data": "Yw=="},  # c
            {"type": "resize", "cols": 10, "rows": 5},
            {"type": "input", "data": "ZA=="},  # d
        ):
            queue.put_nowait(message)
        data, pending = streams._coalesce(queue, b"a")
        assert (data, pending) == (b"abc", {"type": "resize", "cols": 10, "rows": 5})
        assert streams._coalesce(queue, b"") == (b"d", None)
        queue.put_nowait({"type": "input", "data": "!!"})
        data, pending = streams._coalesce(queue, b"e")
        assert data == b"e" and pending == {"type": "input", "data": "!!"}  # reported in its turn

    asyncio.run(scenario())


# --- against the real platform (control plane process, host agent, VM) ------------------------------------


@pytest.fixture(scope="module")
def live(wrenn_server: tuple[str, str]) -> Iterator[tuple[httpx.Client, str]]:
    """An API client and a running capsule on the real platform."""
    base_url, key = wrenn_server
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=300) as client:
        created = client.post("/v1/capsules", json={"memory_mb": 256})
        assert created.status_code == 201, created.text
        capsule_id = created.json()["id"]
        yield client, capsule_id
        client.delete(f"/v1/capsules/{capsule_id}")


def _running(client: httpx.Client, capsule_id: str, needle: str) -> bool:
    """Whether a process whose command line contains `needle` runs in the capsule."""
    listing = client.post(
        f"/v1/capsules/{capsule_id}/exec",
        json={"cmd": "/bin/sh", "args": ["-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"]},
    )
    return needle in listing.json()["stdout"]


def _gone(client: httpx.Client, capsule_id: str, needle: str) -> bool:
    deadline = time.monotonic() + 15
    while _running(client, capsule_id, needle) and time.monotonic() < deadline:
        time.sleep(0.3)
    return not _running(client, capsule_id, needle)


@pytest.mark.vm
def test_exec_stream_stop_and_drop_kill_the_command(live: tuple[httpx.Client, str]) -> None:
    client, capsule_id = live
    path = f"/v1/capsules/{capsule_id}/exec/stream"
    with httpx_ws.connect_ws(path, client) as ws:
        ws.send_json({"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo ready; exec sleep 301"]})
        assert ws.receive_json(timeout=30)["type"] == "start"
        assert ws.receive_json(timeout=30) == {"type": "stdout", "data": "ready\n"}
        ws.send_json({"type": "stop"})
        end = ws.receive_json(timeout=15)
        assert end["type"] == "exit" and end["exit_code"] != 0  # the real exit, not just a close
    assert _gone(client, capsule_id, "sleep 301")
    with httpx_ws.connect_ws(path, client) as ws:
        ws.send_json({"type": "start", "cmd": "/bin/sh", "args": ["-c", "exec sleep 302"]})
        assert ws.receive_json(timeout=30)["type"] == "start"
    assert _gone(client, capsule_id, "sleep 302")  # the socket dropped


@pytest.mark.vm
def test_first_message_auth_on_a_real_socket(live: tuple[httpx.Client, str]) -> None:
    client, capsule_id = live
    with (
        httpx.Client(base_url=str(client.base_url)) as anonymous,
        httpx_ws.connect_ws(f"/v1/capsules/{capsule_id}/exec/stream", anonymous) as ws,
    ):
        ws.send_json({"type": "auth", "token": client.headers["X-API-Key"]})
        ws.send_json({"type": "start", "cmd": "/bin/echo", "args": ["hi"]})
        kinds = [ws.receive_json(timeout=30) for _ in range(3)]
    assert [k["type"] for k in kinds] == ["start", "stdout", "exit"] and kinds[1]["data"] == "hi\n"


@pytest.mark.vm
def test_pty_user_and_a_burst_of_input_in_order(live: tuple[httpx.Client, str]) -> None:
    client, capsule_id = live
    payload = hashlib.sha256(b"wrenn").hexdigest() * 4  # 256 characters, one message each
    with httpx_ws.connect_ws(f"/v1/capsules/{capsule_id}/pty", client) as ws:
        ws.send_json(
            {
                "type": "start",
                "cmd": "/bin/sh",
                "cols": 1000,
                "rows": 24,
                "user": "nobody",
                "cwd": "/tmp",
                "encoding": "base64",
            }
        )
        started = ws.receive_json(timeout=30)
        assert started["type"] == "started" and started["tag"].startswith("pty-") and started["pid"] > 0
        prompt = b""
        while b"$ " not in prompt:  # typed-ahead input races the shell's own terminal setup
            prompt += base64.b64decode(ws.receive_json(timeout=60).get("data", ""))
        for char in f"id -un; echo {payload}\n":
            ws.send_json({"type": "input", "data": base64.b64encode(char.encode()).decode()})
        out = b""
        deadline = time.monotonic() + 60
        while out.count(payload.encode()) < 2 and time.monotonic() < deadline:
            message = ws.receive_json(timeout=60)
            assert message["type"] in ("output", "ping"), message
            out += base64.b64decode(message.get("data", ""))
        assert out.count(payload.encode()) >= 2, out  # echoed as typed, then printed
        assert b"\nnobody" in out.replace(b"\r", b"")
        ws.send_json({"type": "resize", "cols": 0, "rows": 0})
        error = ws.receive_json(timeout=30)
        while error["type"] in ("output", "ping"):  # the shell's next prompt may still be on its way
            error = ws.receive_json(timeout=30)
        assert (error["type"], error["code"], error["fatal"]) == ("error", "invalid_request", False)
        ws.send_json({"type": "kill"})
        while (message := ws.receive_json(timeout=30))["type"] != "exit":
            pass
