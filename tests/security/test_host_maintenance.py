"""Cordon, uncordon, drain and resume (`/v1/hosts/{id}/cordon|uncordon|drain|resume`), as an operator uses them and as an
attacker tries them: a cordoned host gets no new capsule and resumes none of its paused ones; a drain
pauses the running capsules through the ordinary pause path and reports the rest; nobody but an admin (or
the owner of a BYOC host's team, for that host) cordons, drains or resumes a host's capsules, and a refused attempt changes
nothing and reaches no agent. In-process control plane over the recording agent, SQLite and PostgreSQL."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ._fake_agent import FakeAgent
from .conftest import account, admin_account, api_key, rows


def _create(cp: TestClient, key: dict[str, str]) -> str:
    r = cp.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=key)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _pauses(fake_agent: FakeAgent) -> list[str]:
    return [r.sandbox_id for name, r in fake_agent.recorder.calls if name == "pause_sandbox"]


def test_cordon_drain_and_uncordon(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    ada = account(cp, "ada@example.com")
    key = api_key(cp, ada)
    [host] = cp.get("/v1/hosts", headers=admin.jwt).json()
    first, second = _create(cp, key), _create(cp, key)

    r = cp.post(f"/v1/hosts/{host['id']}/cordon", headers=admin.jwt)
    assert r.status_code == 200 and r.json()["cordoned"] is True
    refused = cp.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=key)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "no_hosts_available")
    assert cp.get(f"/v1/capsules/{first}", headers=key).json()["status"] == "running"  # running ones stay

    r = cp.post(f"/v1/hosts/{host['id']}/drain", json={"deadline_s": 60}, headers=admin.jwt)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["paused"]) == sorted([first, second]) and r.json()["not_paused"] == {}
    assert sorted(_pauses(fake_agent)) == sorted([first, second])
    assert {cp.get(f"/v1/capsules/{c}", headers=key).json()["status"] for c in (first, second)} == {"paused"}
    # A paused capsule does not come back onto its cordoned host.
    resumed = cp.post(f"/v1/capsules/{first}/resume", headers=key)
    assert (resumed.status_code, resumed.json()["error"]["code"]) == (503, "host_cordoned")

    r = cp.post(f"/v1/hosts/{host['id']}/uncordon", headers=admin.jwt)
    assert r.status_code == 200 and r.json()["cordoned"] is False
    assert cp.post(f"/v1/capsules/{first}/resume", headers=key).status_code == 200
    # What a node's start does after `wrenn down --pause`: resume those the drain paused, by the host.
    other = _create(cp, api_key(cp, account(cp, "cy@example.com")))
    r = cp.post(f"/v1/hosts/{host['id']}/resume", json={"capsules": [second, first, other, "cl-nope", second]},
                headers=admin.jwt)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["resumed"] == [second]
    assert sorted(r.json()["not_resumed"]) == sorted([first, other, "cl-nope"])
    assert cp.get(f"/v1/capsules/{second}", headers=key).json()["status"] == "running"
    _create(cp, key)
    audit = cp.get("/v1/admin/audit-logs", params={"limit": 100}, headers=admin.jwt).json()["items"]
    assert {"cordon", "drain", "uncordon", "resume"} <= {
        e["action"] for e in audit if e["resource_id"] == host["id"]
    }


def test_a_drain_reports_what_it_could_not_pause(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    key = api_key(cp, account(cp, "ada@example.com"))
    [host] = cp.get("/v1/hosts", headers=admin.jwt).json()
    capsule = _create(cp, key)
    fake_agent.recorder.fail_pause = True
    r = cp.post(f"/v1/hosts/{host['id']}/drain", headers=admin.jwt)
    assert r.status_code == 200 and r.json()["paused"] == []
    assert list(r.json()["not_paused"]) == [capsule] and r.json()["host"]["cordoned"] is True
    assert cp.get(f"/v1/capsules/{capsule}", headers=key).json()["status"] == "running"


def test_nobody_else_cordons_or_drains_a_host(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    ada, bob, mate = (account(cp, f"{n}@example.com") for n in ("ada", "bob", "mate"))
    assert cp.post(f"/v1/teams/{ada.team_id}/members", json={"email": mate.email},
                   headers=ada.jwt).status_code == 201  # fmt: skip
    as_mate = {"Authorization": "Bearer " + cp.post("/v1/auth/switch-team", json={"team_id": ada.team_id},
                                                    headers=mate.jwt).json()["token"]}  # fmt: skip
    [platform_host] = cp.get("/v1/hosts", headers=admin.jwt).json()
    adas_host = cp.post("/v1/hosts", json={"type": "byoc"}, headers=ada.jwt).json()["host"]["id"]
    assert cp.post("/v1/hosts", json={"type": "byoc"}, headers=bob.jwt).status_code == 201  # Bob has his own
    _create(cp, api_key(cp, ada))
    hosts_before = cp.get("/v1/hosts", headers=admin.jwt).json()
    attempts = [
        (ada.jwt, platform_host["id"], 404),  # a platform host is not a user's to see
        (api_key(cp, ada), platform_host["id"], 401),  # API keys manage no hosts
        ({"Authorization": "Bearer forged"}, platform_host["id"], 401),
        (bob.jwt, adas_host, 404),  # another team's BYOC host owner
        (as_mate, adas_host, 403),  # a member, not the owner, of the host's team
        (admin.jwt, "host-nope", 404),
    ]
    paused = _create(cp, api_key(cp, ada))
    assert cp.post(f"/v1/capsules/{paused}/pause", headers=api_key(cp, ada)).status_code == 200
    before = rows(cp)
    for headers, host_id, status in attempts:
        for action in ("cordon", "uncordon", "drain", "resume"):
            r = cp.post(f"/v1/hosts/{host_id}/{action}", json={"capsules": [paused]}, headers=headers)
            assert r.status_code == status, (action, host_id, r.status_code, r.text)
    assert cp.post(f"/v1/hosts/{platform_host['id']}/drain", json={"deadline_s": 0},
                   headers=admin.jwt).status_code == 400  # fmt: skip
    assert cp.post(f"/v1/hosts/{platform_host['id']}/drain", json={"deadline_s": 10**9},
                   headers=admin.jwt).status_code == 400  # fmt: skip
    assert rows(cp) == before and cp.get("/v1/hosts", headers=admin.jwt).json() == hosts_before
    assert _pauses(fake_agent) == [paused]  # her own pause, and no other
    too_many = {"capsules": ["cl-x"] * 1001}
    assert (
        cp.post(f"/v1/hosts/{platform_host['id']}/resume", json=too_many, headers=admin.jwt).status_code
        == 400
    )
    # Ada, owner of her BYOC host's team, cordons it herself.
    r = cp.post(f"/v1/hosts/{adas_host}/cordon", headers=ada.jwt)
    assert r.status_code == 200 and r.json()["cordoned"] is True
