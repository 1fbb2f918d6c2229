"""Hosts: registration with one-time tokens, credentials, heartbeats, deletion, the internal CA, mutual
TLS to a (fake) agent, and the host monitor. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import bootstrap_admin
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane._ca import CertificateAuthority
from wrenn.controlplane._inflight import InFlight
from wrenn.controlplane.db import Capsule, Host, make_engine, utcnow
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentService, HostAgentServiceASGIApplication


@pytest.fixture
def quiet(settings: Settings) -> Iterator[TestClient]:
    """The app with a monitor that only runs when a test ticks it."""
    with TestClient(create_app(dataclasses.replace(settings, monitor_interval_s=3600))) as client:
        yield client


def _signup(api: TestClient, name: str) -> dict[str, str]:
    r = api.post("/v1/auth/signup", json={"email": f"{name}@example.com", "password": "correct horse"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _admin(api: TestClient) -> dict[str, str]:
    """The platform's admin (the bootstrap token's account)."""
    data_dir = api.app.state.settings.data_dir  # type: ignore[attr-defined]
    r = bootstrap_admin(api.post, data_dir, "root@example.com")
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _register(api: TestClient, token: str, address: str = "127.0.0.1:1") -> Any:
    return api.post("/v1/hosts/register", json={
        "token": token, "arch": "x86_64", "cpu_cores": 4, "memory_mb": 8192, "disk_gb": 100, "address": address,
    })  # fmt: skip


def _run(api: TestClient, fn: Any, *args: Any) -> Any:
    assert api.portal is not None
    return api.portal.call(fn, *args)


def _db(api: TestClient, fn: Any) -> Any:
    async def go() -> Any:
        async with api.app.state.sessions() as session:  # type: ignore[attr-defined]
            result = await fn(session)
            await session.commit()
            return result

    return _run(api, go)


def test_registration_round_trip(quiet: TestClient) -> None:
    api = quiet
    admin = _admin(api)
    created = api.post("/v1/hosts", json={"type": "regular"}, headers=admin)
    assert created.status_code == 201, created.text
    host, token = created.json()["host"], created.json()["registration_token"]
    assert host["status"] == "pending" and host["id"].startswith("host-")
    assert len(token) == 64 and int(token, 16) >= 0

    r = _register(api, token, "127.0.0.1:50051")
    assert r.status_code == 201, r.text
    creds = r.json()
    assert creds["host"]["status"] == "online" and creds["host"]["address"] == "https://127.0.0.1:50051"
    assert _register(api, token).status_code == 401  # one-time

    ca = api.app.state.ca  # type: ignore[attr-defined]
    assert creds["ca_cert_pem"] == ca.cert_pem
    cert = ca.verify(creds["cert_pem"])
    assert cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == host["id"]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # the certificate names the host's id, never its address: an address grants no identity
    assert sans.get_values_for_type(x509.DNSName) == [f"{host['id']}.hosts.wrenn.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == []

    # Heartbeats: the host token only, for its own host.
    beat = f"/v1/hosts/{host['id']}/heartbeat"
    assert api.post(beat, headers={"X-Host-Token": creds["token"]}).status_code == 204
    # ... with the capacity and use placement weighs; values no column holds are refused, changing nothing.
    usage = {"cpu_cores": 16, "cpu_load": 3.5, "memory_mb": 65536, "disk_gb": 900, "disk_free_mb": 400_000}
    assert api.post(beat, json=usage, headers={"X-Host-Token": creds["token"]}).status_code == 204
    for bad in ({"disk_free_mb": 2**31}, {"memory_mb": -1}, {"cpu_load": "nan"}, {"cpu_cores": 10**9}):
        r = api.post(beat, json=bad, headers={"X-Host-Token": creds["token"]})
        assert r.status_code in (400, 422), (bad, r.status_code)
    seen = api.get(f"/v1/hosts/{host['id']}", headers=admin).json()
    assert {k: seen[k] for k in usage} == usage and seen["cordoned"] is False
    assert api.post(beat).status_code == 401
    assert api.post(beat, headers={"X-Host-Token": admin["Authorization"][7:]}).status_code == 401
    assert api.get("/v1/hosts", headers={"Authorization": f"Bearer {creds['token']}"}).status_code == 401

    # Refresh rotates: the old refresh token is spent.
    refreshed = api.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != creds["refresh_token"] and new["cert_pem"] != creds["cert_pem"]
    again = api.post("/v1/hosts/auth/refresh", json={"refresh_token": creds["refresh_token"]})
    assert again.status_code == 401
    assert api.post(beat, headers={"X-Host-Token": new["token"]}).status_code == 204

    # Unreachable -> online on a heartbeat.
    async def silence(session: Any) -> None:
        h = await session.get(Host, host["id"])
        h.status = "unreachable"

    _db(api, silence)
    assert api.post(beat, headers={"X-Host-Token": new["token"]}).status_code == 204
    assert api.get(f"/v1/hosts/{host['id']}", headers=admin).json()["status"] == "online"

    listed = api.get("/v1/hosts", headers=admin).json()
    assert [h["id"] for h in listed] == [host["id"]]
    other = _signup(api, "bob")
    assert api.get("/v1/hosts", headers=other).json() == []
    assert api.get(f"/v1/hosts/{host['id']}", headers=other).status_code == 404
    assert api.post("/v1/hosts", json={"type": "regular"}, headers=other).status_code == 403


def test_expired_and_unknown_tokens_are_refused(settings: Settings) -> None:
    expired = dataclasses.replace(settings, registration_token_ttl_s=-1, monitor_interval_s=3600)
    with TestClient(create_app(expired)) as api:
        admin = _admin(api)
        token = api.post("/v1/hosts", json={}, headers=admin).json()["registration_token"]
        r = _register(api, token)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert _register(api, "0" * 64).status_code == 401
        assert _register(api, token).status_code == 401
        assert api.post("/v1/hosts/auth/refresh", json={"refresh_token": "f" * 64}).status_code == 401


def test_byoc_hosts_belong_to_a_team(quiet: TestClient) -> None:
    api = quiet
    admin = _admin(api)
    owner = _signup(api, "olga")
    created = api.post("/v1/hosts", json={}, headers=owner)  # a non-admin gets a BYOC host
    assert created.status_code == 201, created.text
    host = created.json()["host"]
    assert host["type"] == "byoc" and host["team_id"]
    assert [h["id"] for h in api.get("/v1/hosts", headers=owner).json()] == [host["id"]]
    assert host["id"] in [h["id"] for h in api.get("/v1/hosts", headers=admin).json()]
    renewed = api.post(f"/v1/hosts/{host['id']}/token", headers=owner)
    assert (
        renewed.status_code == 201
        and renewed.json()["registration_token"] != created.json()["registration_token"]
    )
    assert api.delete(f"/v1/hosts/{host['id']}", headers=owner).status_code == 204


def test_delete_with_and_without_force(quiet: TestClient) -> None:
    api = quiet
    admin = _admin(api)
    token = api.post("/v1/hosts", json={}, headers=admin).json()["registration_token"]
    creds = _register(api, token, f"127.0.0.1:{_free_port()}").json()  # nothing listens there
    host_id = creds["host"]["id"]
    team_id = api.get("/v1/me", headers=admin).json()["team_id"]

    async def add(session: Any) -> None:
        for i, status in enumerate(("running", "missing", "stopped")):
            session.add(Capsule(id=f"cl-del{i}", team_id=team_id, host_id=host_id, template="minimal",
                                vcpus=1, memory_mb=256, status=status))  # fmt: skip

    _db(api, add)
    refused = api.delete(f"/v1/hosts/{host_id}", headers=admin)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "has_active_sandboxes" and error["sandbox_ids"] == ["cl-del0", "cl-del1"]

    assert api.delete(f"/v1/hosts/{host_id}?force=true", headers=admin).status_code == 204
    assert api.get(f"/v1/hosts/{host_id}", headers=admin).status_code == 404

    async def statuses(session: Any) -> dict[str, str]:
        return {c.id: c.status for c in (await session.execute(select(Capsule))).scalars()}

    assert _db(api, statuses) == {"cl-del0": "stopped", "cl-del1": "stopped", "cl-del2": "stopped"}
    beat = api.post(f"/v1/hosts/{host_id}/heartbeat", headers={"X-Host-Token": creds["token"]})
    assert beat.status_code == 404  # the agent drops its credentials and exits


def test_the_ca_signs_what_verifies(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    again = CertificateAuthority.load_or_create(tmp_path)
    assert again.cert_pem == ca.cert_pem  # kept across restarts
    host = ca.issue_host("host-abc")
    cert = ca.verify(host.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["host-abc.hosts.wrenn.internal"]
    assert timedelta(days=6) < cert.not_valid_after_utc - utcnow() <= timedelta(days=7)
    ca.verify(ca.issue_client().cert_pem)
    with pytest.raises(ValueError, match="not signed"):
        CertificateAuthority.generate().verify(host.cert_pem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeAgent(HostAgentService):
    """An agent that lists what the test says, served over mutual TLS like a registered one."""

    def __init__(self) -> None:
        self.sandboxes: list[pb.SandboxInfo] = []
        self.destroyed: list[str] = []

    async def destroy_sandbox(self, request: pb.DestroySandboxRequest, ctx: Any) -> pb.DestroySandboxResponse:
        self.destroyed.append(request.sandbox_id)
        self.sandboxes = [s for s in self.sandboxes if s.sandbox_id != request.sandbox_id]
        return pb.DestroySandboxResponse()

    async def list_sandboxes(self, request: pb.ListSandboxesRequest, ctx: Any) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(sandboxes=self.sandboxes)

    async def get_host_info(self, request: pb.GetHostInfoRequest, ctx: Any) -> pb.GetHostInfoResponse:
        return pb.GetHostInfoResponse(hostname="fake", slot_capacity=4)


@dataclasses.dataclass
class Served:
    agent: FakeAgent
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _serve_tls(tmp: Path, port: int, creds: dict[str, str]) -> Served:
    for name in ("cert_pem", "key_pem", "ca_cert_pem"):
        (tmp / name).write_text(creds[name])
    agent = FakeAgent()
    config = uvicorn.Config(
        HostAgentServiceASGIApplication(agent), host="127.0.0.1", port=port, log_config=None,
        ssl_certfile=str(tmp / "cert_pem"), ssl_keyfile=str(tmp / "key_pem"),
        ssl_ca_certs=str(tmp / "ca_cert_pem"), ssl_cert_reqs=ssl.CERT_REQUIRED,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return Served(agent, server, thread)


def _fake_host(api: TestClient, tmp_path: Path) -> tuple[dict[str, str], str, dict[str, Any], Served]:
    """The admin's headers and team, and a host registered by the admin whose (fake) agent is served."""
    admin = _admin(api)
    team_id = api.get("/v1/me", headers=admin).json()["team_id"]
    port = _free_port()
    token = api.post("/v1/hosts", json={}, headers=admin).json()["registration_token"]
    creds = _register(api, token, f"127.0.0.1:{port}").json()
    return admin, team_id, creds, _serve_tls(tmp_path, port, creds)


def test_monitor_marks_silent_hosts_and_reconciles_them(quiet: TestClient, tmp_path: Path) -> None:
    api = quiet
    admin, team_id, creds, served = _fake_host(api, tmp_path)
    host_id = creds["host"]["id"]
    try:
        ids = ["cl-alive", "cl-gone", "cl-broke", "cl-new", "cl-archived", "cl-unarchived", "cl-slept"]

        async def setup(session: Any) -> None:
            long_ago = utcnow() - timedelta(seconds=600)
            h = await session.get(Host, host_id)
            h.last_heartbeat_at = long_ago
            for cid in ids[:3]:
                session.add(Capsule(id=cid, team_id=team_id, host_id=host_id, template="minimal", vcpus=1,
                                    memory_mb=256, status="running", last_updated=long_ago))  # fmt: skip
            session.add(Capsule(id="cl-new", team_id=team_id, host_id=host_id, template="minimal", vcpus=1,
                                memory_mb=256, status="pending"))  # fmt: skip
            # left mid-hibernation by a control plane that died; and one its host paused at its idle timeout
            for cid, status in (("cl-archived", "hibernating"), ("cl-unarchived", "hibernating"),
                                ("cl-slept", "running")):  # fmt: skip
                session.add(Capsule(id=cid, team_id=team_id, host_id=host_id, template="minimal", vcpus=1,
                                    memory_mb=256, status=status, last_updated=long_ago))  # fmt: skip

        async def state(session: Any) -> tuple[str, dict[str, str]]:
            h = await session.get(Host, host_id)
            rows = (await session.execute(select(Capsule).where(Capsule.id.in_(ids)))).scalars()
            return h.status, {c.id: c.status for c in rows}

        _db(api, setup)
        monitor = api.app.state.monitor  # type: ignore[attr-defined]
        _run(api, monitor.tick)
        status, capsules = _db(api, state)
        assert status == "unreachable"
        assert capsules == {
            "cl-alive": "missing",
            "cl-gone": "missing",
            "cl-broke": "missing",
            "cl-new": "pending",
            "cl-archived": "hibernating",
            "cl-unarchived": "hibernating",
            "cl-slept": "missing",
        }
        r = api.post("/v1/capsules/cl-alive/exec", headers=admin, json={"cmd": "true"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable", r.text

        # The host is back: a heartbeat, then the monitor asks its agent (over mutual TLS) what runs.
        served.agent.sandboxes = [
            pb.SandboxInfo(sandbox_id="cl-alive", status=pb.SandboxStatus.RUNNING),
            pb.SandboxInfo(sandbox_id="cl-broke", status=pb.SandboxStatus.ERROR, error="guest panic"),
            pb.SandboxInfo(sandbox_id="cl-unarchived", status=pb.SandboxStatus.PAUSED),
            pb.SandboxInfo(sandbox_id="cl-slept", status=pb.SandboxStatus.PAUSED),
        ]
        beat = api.post(f"/v1/hosts/{host_id}/heartbeat", headers={"X-Host-Token": creds["token"]})
        assert beat.status_code == 204
        time.sleep(0.05)  # reconciliation ignores capsules changed after the list was taken
        _run(api, monitor.tick)
        status, capsules = _db(api, state)
        assert status == "online"
        assert capsules == {
            "cl-alive": "running",
            "cl-gone": "stopped",
            "cl-broke": "error",
            "cl-new": "error",  # in flight in no control plane, and unknown to its host
            "cl-archived": "hibernated",
            "cl-unarchived": "paused",
            "cl-slept": "paused",
        }

        async def broke(session: Any) -> str:
            return str((await session.get(Capsule, "cl-broke")).error)

        assert _db(api, broke) == "guest panic"
    finally:
        served.stop()


def test_monitor_settles_what_a_dead_control_plane_left_in_flight(
    quiet: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """Capsules left `pending`/`starting` by a control plane that died are settled by what their host says;
    one still in flight (here, or on PostgreSQL in another control plane) is not; sandboxes no capsule
    wants are destroyed."""
    api = quiet
    _, team_id, creds, served = _fake_host(api, tmp_path)
    host_id = creds["host"]["id"]
    rows = {
        "cl-booted": "pending", "cl-booting": "pending", "cl-lost": "pending", "cl-held": "pending",
        "cl-woken": "starting", "cl-unwoken": "starting", "cl-unthawed": "starting",
        "cl-thawed": "hibernated", "cl-failed": "error",
    }  # fmt: skip

    async def setup(session: Any) -> None:
        long_ago = utcnow() - timedelta(seconds=600)
        for cid, status in rows.items():
            session.add(Capsule(id=cid, team_id=team_id, host_id=host_id, template="minimal", vcpus=1,
                                memory_mb=256, status=status, last_updated=long_ago,
                                paused_at=long_ago if status in ("starting", "hibernated") else None))  # fmt: skip

    async def state(session: Any) -> dict[str, str]:
        found = (await session.execute(select(Capsule).where(Capsule.id.in_(list(rows))))).scalars()
        return {c.id: c.status for c in found}

    # another control plane with a create in flight: on SQLite (one control plane) this one's own
    other = (
        InFlight(make_engine(settings.resolved_database_url))
        if "postgresql" in settings.database_url
        else None
    )
    holder = other or api.app.state.agents.inflight  # type: ignore[attr-defined]
    try:
        _db(api, setup)
        running = pb.SandboxStatus.RUNNING
        served.agent.sandboxes = [
            pb.SandboxInfo(sandbox_id="cl-booted", status=running, host_ip="10.11.0.2", envd_version="0.9"),
            pb.SandboxInfo(sandbox_id="cl-booting", status=pb.SandboxStatus.PENDING),
            pb.SandboxInfo(sandbox_id="cl-woken", status=running, host_ip="10.11.0.3"),
            pb.SandboxInfo(sandbox_id="cl-unwoken", status=pb.SandboxStatus.PAUSED),
            pb.SandboxInfo(sandbox_id="cl-thawed", status=running, host_ip="10.11.0.4"),
            pb.SandboxInfo(sandbox_id="cl-failed", status=running),  # its create gave up first
            pb.SandboxInfo(sandbox_id="cl-nobody", status=running),  # no row at all
            pb.SandboxInfo(sandbox_id="sb-operators", status=running),  # not a capsule: not ours to end
        ]
        assert (
            api.post(f"/v1/hosts/{host_id}/heartbeat", headers={"X-Host-Token": creds["token"]}).status_code
            == 204
        )
        monitor = api.app.state.monitor  # type: ignore[attr-defined]
        assert api.portal is not None
        with api.portal.wrap_async_context_manager(holder.hold(["cl-held"])):
            _run(api, monitor.tick)
            assert _db(api, state) == {
                "cl-booted": "running",  # adopted: its VM is healthy
                "cl-booting": "pending",  # its host still boots it
                "cl-lost": "error",
                "cl-held": "pending",  # in flight
                "cl-woken": "running",
                "cl-unwoken": "paused",
                "cl-unthawed": "hibernated",  # its thaw never reached the host
                "cl-thawed": "running",
                "cl-failed": "error",
            }
            assert sorted(served.agent.destroyed) == ["cl-failed", "cl-nobody"]
        _run(api, monitor.tick)
        assert _db(api, state)["cl-held"] == "error"  # no longer in flight, and its host never had it

        async def details(session: Any) -> tuple[Capsule, Capsule]:
            return await session.get(Capsule, "cl-booted"), await session.get(Capsule, "cl-lost")

        booted, lost = _db(api, details)
        assert booted.host_ip == "10.11.0.2" and booted.started_at is not None
        assert booted.metadata_["envd_version"] == "0.9"
        assert "interrupted" in lost.error
    finally:
        served.stop()
        if other is not None:
            _run(api, other.close)


def test_mutual_tls_wants_the_control_planes_certificate(quiet: TestClient, tmp_path: Path) -> None:
    """The agent's server accepts the control plane's client certificate, and nothing else: no
    certificate, another CA's, or another host's (server-only) certificate."""
    import pyqwest

    from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

    api = quiet
    admin = _admin(api)
    ca: CertificateAuthority = api.app.state.ca  # type: ignore[attr-defined]
    port = _free_port()
    token = api.post("/v1/hosts", json={}, headers=admin).json()["registration_token"]
    creds = _register(api, token, f"127.0.0.1:{port}").json()
    served = _serve_tls(tmp_path, port, creds)
    url = f"https://127.0.0.1:{port}"
    try:
        pool = api.app.state.agents  # type: ignore[attr-defined]
        info = _run(api, pool.client(url, host_id=creds["host"]["id"]).get_host_info, pb.GetHostInfoRequest())
        assert info.hostname == "fake"

        other_host = ca.issue_host("host-other")
        stranger = CertificateAuthority.generate().issue_client()
        for cert in (other_host, stranger, None):

            async def call(cert: Any = cert) -> str:
                transport = pyqwest.HTTPTransport(
                    tls_ca_cert=ca.cert_pem.encode(),
                    tls_cert=cert.cert_pem.encode() if cert else None,
                    tls_key=cert.key_pem.encode() if cert else None,
                    http_version=pyqwest.HTTPVersion.HTTP1,
                )
                client = HostAgentServiceClient(url, http_client=pyqwest.Client(transport))
                try:
                    await client.get_host_info(pb.GetHostInfoRequest(), timeout_ms=5000)
                    return "accepted"
                except Exception as exc:
                    return f"refused: {exc}"
                finally:
                    await transport.aclose()

            outcome = _run(api, call)
            assert outcome.startswith("refused"), cert
    finally:
        served.stop()
