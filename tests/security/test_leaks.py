"""Small leaks: Wrenn's credentials forwarded into a guest, upstream error text in 502s, the host's address
in capsule answers, unsigned-expiry file URLs where an operator forbids them. In-process: the traffic
listener here is the recording agent's echo server, which answers with what reached it."""

from __future__ import annotations

import dataclasses
import socket
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.controlplane._db import insert_capsule, run
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane.db import Host

from .conftest import ClientAddress, account, admin_account, api_key


def _capsule(cp: TestClient) -> tuple[str, dict[str, str], str]:
    admin = admin_account(cp)
    host_id = cp.get("/v1/hosts", headers=admin.jwt).json()[0]["id"]
    owner = account(cp, "owner@example.com")
    return (
        insert_capsule(cp, owner.team_id, status="running", host=host_id),
        owner.jwt,
        admin.jwt["Authorization"],
    )


def _seen(cp: TestClient, capsule_id: str, path: str = "/echo", **headers: str) -> dict[str, Any]:
    r = cp.get(path, headers={"Host": f"8000-{capsule_id}.wrenn.local", **headers})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_wrenn_credentials_never_reach_the_guest(cp: TestClient) -> None:
    capsule_id, owner_jwt, admin_bearer = _capsule(cp)
    owner = account(cp, "keyholder@example.com")
    key = api_key(cp, owner)["X-API-Key"]
    sent = {
        "X-API-Key": key, "X-Host-Token": "host.jwt.here", "X-Wrenn-Agent-Token": "guess",
        "X-Traffic-Access-Token": "t", "Cookie": "wrenn_session=abc; app=keep; Wrenn-Other=x",
        "X-App-Header": "keep me",
    }  # fmt: skip
    for authorization in (owner_jwt["Authorization"], admin_bearer, f"Bearer {key}"):
        headers = {
            k.lower(): v for k, v in _seen(cp, capsule_id, Authorization=authorization, **sent)["headers"]
        }
        assert "authorization" not in headers, authorization
        for wrenn in ("x-api-key", "x-host-token", "x-wrenn-agent-token", "x-traffic-access-token"):
            assert wrenn not in headers
        assert headers["cookie"] == "app=keep" and headers["x-app-header"] == "keep me"
    for own in ("Bearer the-apps-own-token", "Basic dXNlcjpwYXNz", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"):
        headers = {k.lower(): v for k, v in _seen(cp, capsule_id, Authorization=own)["headers"]}
        assert headers["authorization"] == own  # the application's own credentials pass


def _hang_up_server() -> tuple[socket.socket, threading.Thread]:
    """A listener that accepts each connection, reads the request and closes without a word."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_502_tells_nothing_of_the_upstream(cp: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    capsule_id, _, _ = _capsule(cp)
    listener, thread = _hang_up_server()

    async def repoint(session: Any) -> None:  # the host's traffic listener now hangs up on everyone
        for host in (await session.execute(select(Host))).scalars():
            host.proxy_port = listener.getsockname()[1]

    run(cp, repoint)
    try:
        r = cp.get("/anything", headers={"Host": f"8000-{capsule_id}.wrenn.local"})
    finally:
        listener.close()
        thread.join(5)
    assert r.status_code == 502 and r.json()["error"]["code"] == "bad_gateway"
    for secret in ("127.0.0.1", "RemoteProtocolError", "disconnected", "httpx", "Error("):
        assert secret not in r.text
    assert "upstream failed" in caplog.text  # the operator finds it in the log


def test_capsules_do_not_say_where_they_run(cp: TestClient) -> None:
    capsule_id, owner_jwt, _ = _capsule(cp)
    got = cp.get(f"/v1/capsules/{capsule_id}", headers=owner_jwt).json()
    assert got["host_ip"] == "" and "10.11.0.2" not in str(got)
    assert "10.11.0.2" not in cp.get("/v1/capsules", headers=owner_jwt).text
    assert "10.11.0.2" not in cp.get(f"/sandboxes/{capsule_id}", headers=owner_jwt).text


@pytest.mark.parametrize("required", [False, True])
def test_signed_urls_without_expiry_follow_the_operators_policy(
    cp_settings: Settings, required: bool
) -> None:
    """E2B's SDK signs file URLs without an expiry unless asked: they pass, unless the operator requires
    one (`WRENN_REQUIRE_SIGNED_URL_EXPIRY`)."""
    settings = dataclasses.replace(cp_settings, require_signed_url_expiry=required)
    with TestClient(ClientAddress(create_app(settings))) as client:
        capsule_id, _, _ = _capsule(client)
        host = {"Host": f"49983-{capsule_id}.wrenn.local"}
        r = client.get("/files?path=/etc/passwd&username=user&signature=v1_abc", headers=host)
        assert r.status_code == (403 if required else 200), r.text
        ok = client.get("/files?path=/x&signature=v1_abc&signature_expiration=1999999999", headers=host)
        assert ok.status_code == 200
        assert client.get("/files?path=/x", headers=host).status_code == 200  # unsigned: envd's token decides
