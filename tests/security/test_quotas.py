"""Quotas as a greedy or hostile team meets them: no more capsules, vCPUs, memory or disk than its team may
hold, not by racing creates, not by resuming, not with one absurd disk; and only a platform admin changes
a team's quotas. In-process control plane on SQLite and PostgreSQL over a recording agent."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.controlplane._db import insert_capsule, run
from wrenn.controlplane.db import Capsule

from .conftest import FakeAgent, account, admin_account, api_key, rows


def _quota(cp: TestClient, admin: dict[str, str], team_id: str, **values: Any) -> dict[str, Any]:
    r = cp.put(f"/v1/admin/teams/{team_id}/quotas", json=values, headers=admin)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _live(cp: TestClient, team_id: str) -> int:
    async def count(session: Any) -> int:
        found = await session.execute(Capsule.__table__.select().where(Capsule.team_id == team_id))
        return sum(1 for row in found if row.status in ("pending", "running"))

    return run(cp, count)


def test_only_platform_admins_change_quotas(cp: TestClient) -> None:
    admin = admin_account(cp)
    owner = account(cp, "owner@example.com")
    key = api_key(cp, owner)
    before = rows(cp)
    for who in (owner.jwt, key):
        r = cp.put(f"/v1/admin/teams/{owner.team_id}/quotas", json={"capsules": 1000}, headers=who)
        assert r.status_code in (401, 403), r.text
        assert cp.get(f"/v1/admin/teams/{owner.team_id}/quotas", headers=who).status_code in (401, 403)
    after = rows(cp)
    after["team_api_keys"] = before["team_api_keys"]  # the key's last_used moved, nothing else did
    assert after == before
    mine = cp.get(f"/v1/teams/{owner.team_id}/quotas", headers=owner.jwt).json()
    assert mine["quotas"] == mine["defaults"] and mine["usage"]["capsules"] == 0
    report = _quota(cp, admin.jwt, owner.team_id, capsules=1, disk_mb=None)
    assert (
        report["quotas"]["capsules"] == 1
        and report["own"]["capsules"] == 1
        and report["own"]["disk_mb"] is None
    )
    assert cp.put("/v1/admin/teams/team-nope/quotas", json={}, headers=admin.jwt).status_code == 404
    assert cp.put(f"/v1/admin/teams/{owner.team_id}/quotas", json={"capsules": -1},
                  headers=admin.jwt).status_code == 400  # fmt: skip


def test_creates_over_a_quota_are_refused_and_leave_nothing(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    owner = account(cp, "owner@example.com")
    key = api_key(cp, owner)
    _quota(cp, admin.jwt, owner.team_id, capsules=2, vcpus=3, memory_mb=4096, disk_mb=20 * 1024)
    assert cp.post("/v1/capsules", json={"vcpus": 2}, headers=key).status_code == 201
    before, calls = rows(cp), len(fake_agent.recorder.names())
    for body, what in (
        ({"vcpus": 2}, "vCPUs"),
        ({"memory_mb": 4096}, "memory"),
        ({"disk_size_mb": 16 * 1024}, "disk"),
    ):
        r = cp.post("/v1/capsules", json=body, headers=key)
        assert (r.status_code, r.json()["error"]["code"]) == (429, "quota_exceeded"), r.text
        assert what in r.json()["error"]["message"]
    e2b = cp.post("/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": key["X-API-Key"]})
    assert e2b.status_code == 201  # the second capsule fits
    r = cp.post("/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": key["X-API-Key"]})
    assert (r.status_code, r.json()["error_code"]) == (429, "quota_exceeded")
    assert len(rows(cp)["sandboxes"]) == 2 and len(fake_agent.recorder.names()) == 2
    assert before["teams"] == rows(cp)["teams"] and calls == 1


def test_no_capsule_has_an_absurd_shape(cp: TestClient, fake_agent: FakeAgent) -> None:
    owner = account(cp, "owner@example.com")
    before = rows(cp)
    for body in ({"disk_size_mb": 512 * 1024}, {"vcpus": 16}, {"memory_mb": 65536}):
        r = cp.post("/v1/capsules", json=body, headers=owner.jwt)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert rows(cp) == before and fake_agent.recorder.names() == []


def test_racing_creates_cannot_exceed_a_quota(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    owner = account(cp, "owner@example.com")
    key = api_key(cp, owner)
    _quota(cp, admin.jwt, owner.team_id, capsules=3)
    fake_agent.recorder.boot_s = 0.3  # boots overlap with the other requests' admissions

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=cp.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp", timeout=60) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/capsules", json={}, headers=key) for _ in range(10))
            )
        return [a.status_code for a in answers]

    assert cp.portal is not None
    codes = cp.portal.call(burst)
    assert sorted(codes) == [201] * 3 + [429] * 7, codes
    assert _live(cp, owner.team_id) == 3 and len(fake_agent.recorder.names()) == 3


def test_resuming_over_a_quota_is_refused(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    owner = account(cp, "owner@example.com")
    host_id = cp.get("/v1/hosts", headers=admin.jwt).json()[0]["id"]
    _quota(cp, admin.jwt, owner.team_id, capsules=1)
    insert_capsule(cp, owner.team_id, status="running", host=host_id)
    paused = insert_capsule(cp, owner.team_id, status="paused", host=host_id)
    before = rows(cp)
    r = cp.post(f"/v1/capsules/{paused}/resume", headers=owner.jwt)
    assert (r.status_code, r.json()["error"]["code"]) == (429, "quota_exceeded"), r.text
    r = cp.post(f"/sandboxes/{paused}/connect", json={}, headers=owner.jwt)
    assert (r.status_code, r.json()["error_code"]) == (429, "quota_exceeded"), r.text
    assert rows(cp) == before and "resume_sandbox" not in fake_agent.recorder.names()
