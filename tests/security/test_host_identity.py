"""A BYOC owner registers their "host" with the address of a platform agent, hoping the control plane sends
it their team's calls (and `DELETE ?force` -> Terminate). The control plane verifies who answers, not
where: the agent at that address holds its own host id's certificate, so every call to the impostor
fails with a clear error and reaches nothing. In-process, over a recording agent serving mutual TLS with
the platform host's credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.controlplane._db import run
from wrenn.controlplane import create_app
from wrenn.controlplane._errors import ApiError
from wrenn.controlplane.db import Host
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceASGIApplication

from ._fake_agent import Recorder, Served, free_port, serve
from .conftest import account, admin_account, make_settings


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url, tmp_path / "cp"))) as client:
        yield client


def _register(api: TestClient, token: str, address: str) -> dict[str, Any]:
    r = api.post("/v1/hosts/register", json={"token": token, "address": address, "memory_mb": 8192})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _serve_as(tmp: Path, port: int, creds: dict[str, Any], recorder: Recorder) -> Served:
    files = {}
    for name, field in (("cert", "cert_pem"), ("key", "key_pem"), ("ca", "ca_cert_pem")):
        files[name] = tmp / f"{name}.pem"
        files[name].write_text(creds[field])
    return serve(HostAgentServiceASGIApplication(recorder), port, tls=files)


def test_a_byoc_host_at_a_platform_agents_address_reaches_nothing(api: TestClient, tmp_path: Path) -> None:
    admin, owner = admin_account(api), account(api, "owner@example.com")
    port = free_port()
    platform_token = api.post("/v1/hosts", json={"type": "regular"}, headers=admin.jwt).json()
    platform = _register(api, platform_token["registration_token"], f"127.0.0.1:{port}")
    recorder = Recorder()
    served = _serve_as(tmp_path, port, platform, recorder)
    try:
        pool = api.app.state.agents  # type: ignore[attr-defined]
        legit = pool.client(platform["host"]["address"], host_id=platform["host"]["id"])
        assert run(api, lambda _: legit.get_host_info(pb.GetHostInfoRequest())).hostname == "fake"
        calls = len(recorder.calls)

        byoc = api.post("/v1/hosts", json={"type": "byoc"}, headers=owner.jwt).json()
        impostor = _register(api, byoc["registration_token"], f"127.0.0.1:{port}")["host"]
        assert impostor["address"] == platform["host"]["address"]  # the same place, another identity

        async def call(_: Any) -> Any:
            client = pool.client(impostor["address"], host_id=impostor["id"])
            return await pool.call(impostor["id"], client.list_sandboxes(pb.ListSandboxesRequest()))

        with pytest.raises(ApiError) as refused:
            run(api, call)
        assert (refused.value.status, refused.value.code) == (503, "host_unavailable")
        assert "did not prove its identity" in refused.value.message
        r = api.delete(f"/v1/hosts/{impostor['id']}?force=true", headers=owner.jwt)
        assert r.status_code == 204  # the owner's host is gone; the platform's agent heard nothing of it
        assert len(recorder.calls) == calls and "terminate" not in recorder.names()
        assert run(api, lambda _: legit.get_host_info(pb.GetHostInfoRequest())).hostname == "fake"
    finally:
        served.stop()


def test_a_host_registered_before_pinning_is_made_to_refresh(api: TestClient) -> None:
    admin = admin_account(api)
    token = api.post("/v1/hosts", json={}, headers=admin.jwt).json()["registration_token"]
    creds = _register(api, token, "127.0.0.1:1")
    host_id = creds["host"]["id"]

    async def legacy(session: Any) -> None:
        (await session.get(Host, host_id)).cert_pinned = False

    run(api, legacy)
    beat = f"/v1/hosts/{host_id}/heartbeat"
    r = api.post(beat, headers={"X-Host-Token": creds["token"]})
    assert r.status_code == 401 and "refresh" in r.json()["error"]["message"]  # the agent refreshes on 401
    fresh = api.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]}).json()
    assert api.post(beat, headers={"X-Host-Token": fresh["token"]}).status_code == 204
