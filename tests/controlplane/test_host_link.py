"""An agent's link to its control plane: a real control plane on loopback, a registered host's heartbeats
(the agent's own `HostLink`), the control plane stopped and started again. After three failed heartbeats
in a row the agent says once that it is disconnected (log and `/metrics`), and once that it is back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests._serving import serving_asgi
from tests.conftest import bootstrap_admin
from tests.controlplane.conftest import _free_port
from wrenn.agent._prometheus import with_metrics
from wrenn.agent._registration import DISCONNECTED_AFTER, Credentials, CredentialStore, HostLink
from wrenn.controlplane import Settings, create_app

GAUGE = "wrenn_agent_control_plane_connected"


def _gauge(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value(GAUGE)
    assert value is not None
    return value


def test_heartbeats_lost_and_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'wrenn.db'}", data_dir=tmp_path / "cp")
    port = _free_port()
    with serving_asgi(create_app(settings), port) as base:
        admin = bootstrap_admin(httpx.post, settings.data_dir, "root@example.com", base=base).json()["token"]
        created = httpx.post(f"{base}/v1/hosts", json={}, headers={"Authorization": f"Bearer {admin}"})
        registered = httpx.post(f"{base}/v1/hosts/register", json={
            "token": created.json()["registration_token"], "address": "127.0.0.1:1", "arch": "x86_64",
            "cpu_cores": 2, "memory_mb": 4096, "disk_gb": 10,
        })  # fmt: skip
        assert registered.status_code == 201, registered.text
    (agent_dir := tmp_path / "agent").mkdir()
    creds = Credentials.from_response(registered.json(), base, "127.0.0.1:1")
    link = HostLink(CredentialStore(agent_dir), creds, 3600, ssl_contexts=list, on_deleted=lambda: None)
    registry = CollectorRegistry()
    with_metrics(lambda scope, receive, send: None, list, 1, registry, link=link.state)  # type: ignore[arg-type,return-value]

    async def beats(n: int) -> list[str]:
        return [await link.heartbeat() for _ in range(n)]

    caplog.set_level(logging.INFO, logger="wrenn.agent")
    # the control plane is down: two failures are not yet a disconnection, the third is, said once
    assert asyncio.run(beats(DISCONNECTED_AFTER - 1)) == ["failed"] * (DISCONNECTED_AFTER - 1)
    assert link.state.connected and _gauge(registry) == 1
    assert asyncio.run(beats(2)) == ["failed", "failed"]
    assert not link.state.connected and _gauge(registry) == 0
    said = [r for r in caplog.records if "disconnected from the control plane" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and "keep running" in said[0].getMessage()
    assert f"{GAUGE} 0.0" in generate_latest(registry).decode()

    with serving_asgi(create_app(settings), port):  # back, on its address, with its database
        assert asyncio.run(beats(2)) == ["ok", "ok"]
    assert link.state.connected and link.state.failures == 0 and _gauge(registry) == 1
    back = [r for r in caplog.records if "reconnected" in r.getMessage()]
    assert len(back) == 1 and back[0].__dict__["failed_heartbeats"] == DISCONNECTED_AFTER + 1
