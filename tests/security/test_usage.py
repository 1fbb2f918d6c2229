"""Attacks on metrics, stats and usage, in-process (SQLite and PostgreSQL) over the recording agent: another
team's capsule metrics are not there (404, /v1 and E2B; left out of E2B's batch), destroyed or not; stats
and usage show a team nothing of another's; a bad `range` or date is a 400 and changes nothing."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from ._fake_agent import FakeAgent
from .conftest import account, api_key, rows


def _unchanged(cp: TestClient) -> dict[str, Any]:
    """Every row, but the API keys (their `last_used_at` moves with each request)."""
    found = rows(cp)
    found.pop("team_api_keys")
    return found


def _capsule(cp: TestClient, jwt: dict[str, str], **body: Any) -> str:
    r = cp.post("/v1/capsules", json={"template": "minimal", **body}, headers=jwt)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def test_another_teams_metrics_stats_and_usage_are_not_there(cp: TestClient, fake_agent: FakeAgent) -> None:
    ada, bob = account(cp, "ada@example.com"), account(cp, "bob@example.com")
    ada_key, bob_key = api_key(cp, ada), api_key(cp, bob)
    running = _capsule(cp, ada.jwt, vcpus=2, memory_mb=1024)
    gone = _capsule(cp, ada.jwt)
    now = int(time.time())
    for capsule in (running, gone):
        fake_agent.recorder.samples[capsule] = [(now - 10, 42.0, 1 << 20, 1 << 20)]
    assert cp.delete(f"/v1/capsules/{gone}", headers=ada.jwt).status_code == 204
    # Ada sees both (a destroyed capsule's samples outlive it)
    for capsule in (running, gone):
        r = cp.get(f"/v1/capsules/{capsule}/metrics", headers=ada.jwt)
        assert r.status_code == 200 and r.json()["points"], r.text
    before = _unchanged(cp)
    for capsule in (running, gone, "cl-nosuchcapsule"):
        for headers in (bob.jwt, bob_key):
            r = cp.get(f"/v1/capsules/{capsule}/metrics", params={"range": "24h"}, headers=headers)
            assert r.status_code == 404, r.text
        r = cp.get(f"/sandboxes/{capsule}/metrics", headers=bob_key)
        assert r.status_code == 404, r.text
    batch = cp.get("/sandboxes/metrics", params={"sandbox_ids": f"{running},{gone}"}, headers=bob_key)
    assert batch.status_code == 200 and batch.json() == {"sandboxes": {}}
    mine = cp.get("/sandboxes/metrics", params={"sandbox_ids": f"{running},{gone}"}, headers=ada_key).json()
    assert set(mine["sandboxes"]) == {running, gone}  # the check can fail

    stats = cp.get("/v1/capsules/stats", params={"range": "5m"}, headers=bob_key).json()
    assert stats["current"]["running_count"] == 0 and stats["current"]["vcpus_reserved"] == 0
    assert stats["peaks"] == {"running_count": 0, "vcpus": 0, "memory_mb": 0}
    assert set(stats["series"]["vcpus"]) == {0}
    assert cp.get("/v1/capsules/stats", headers=ada_key).json()["current"]["vcpus_reserved"] == 2
    usage = cp.get("/v1/capsules/usage", headers=bob_key).json()
    assert all(p["cpu_minutes"] == 0 and p["ram_mb_minutes"] == 0 for p in usage["points"])
    assert _unchanged(cp) == before


def test_bad_ranges_and_dates_are_refused(cp: TestClient) -> None:
    ada = account(cp, "ada@example.com")
    key = api_key(cp, ada)
    capsule = _capsule(cp, ada.jwt)
    before = _unchanged(cp)
    for bad in ("", "1d", "10M", "24h ", "-5m", "5m,24h", "9" * 5000):
        r = cp.get(f"/v1/capsules/{capsule}/metrics", params={"range": bad}, headers=key)
        assert r.status_code == 400, (bad, r.text)
    for bad in ("", "5m ", "2h", "31d", "x" * 5000):
        r = cp.get("/v1/capsules/stats", params={"range": bad}, headers=key)
        assert r.status_code == 400, (bad, r.text)
    for params in (
        {"from": "yesterday"},
        {"to": "2026-13-01"},
        {"from": "2026-02-30"},
        {"from": "2026-02-02", "to": "2026-02-01"},  # backwards
        {"from": "0001-01-01", "to": "9999-12-31"},  # centuries of days: refused, not computed
        {"from": "2026-01-01T00:00:00"},
    ):
        r = cp.get("/v1/capsules/usage", params=params, headers=key)
        assert r.status_code == 400, (params, r.text)
    for bad in ("abc", "1e99", str(1 << 70)):
        r = cp.get(f"/sandboxes/{capsule}/metrics", params={"start": bad}, headers=key)
        assert r.status_code == 400, (bad, r.text)
    # unauthenticated: nothing
    for path in ("/v1/capsules/stats", "/v1/capsules/usage", f"/v1/capsules/{capsule}/metrics"):
        assert cp.get(path).status_code == 401, path
    assert _unchanged(cp) == before
