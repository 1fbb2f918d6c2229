"""Teams, members, user search and the audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from wrenn.controlplane import Settings

from ._db import capsule_status, insert_capsule, insert_users, set_capsule_status, set_host
from .test_accounts import auth, signup


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The suite's settings, without host monitor rounds during the test: its hosts are fakes whose
    agents never answer, and a round would change their rows under the test."""
    return Settings(database_url=database_url, data_dir=tmp_path / "cp", monitor_interval_s=3600)


def _code(response: object) -> tuple[int, str]:
    r = response  # httpx.Response
    return r.status_code, r.json()["error"]["code"]  # type: ignore[attr-defined]


def test_team_lifecycle_and_roles(api: TestClient) -> None:
    ada, bob = signup(api, "ada@example.com"), signup(api, "bob@example.com")
    a, b = auth(ada["token"]), auth(bob["token"])

    created = api.post("/v1/teams", json={"name": "  Research  "}, headers=a)
    assert created.status_code == 201, created.text
    team = created.json()
    assert team["name"] == "Research" and team["role"] == "owner" and team["id"].startswith("team-")
    tid = team["id"]
    assert {t["id"]: t["role"] for t in api.get("/v1/teams", headers=a).json()} == {
        ada["team_id"]: "owner",
        tid: "owner",
    }
    assert api.post("/v1/teams", json={"name": "   "}, headers=a).status_code == 400

    # bob is no member: the team does not exist for him
    for method, path in [("GET", ""), ("PATCH", ""), ("GET", "/members"), ("POST", "/leave")]:
        r = api.request(method, f"/v1/teams/{tid}{path}", json={"name": "x"}, headers=b)
        assert _code(r) == (404, "not_found"), (method, path, r.text)

    added = api.post(f"/v1/teams/{tid}/members", json={"email": "BOB@example.com"}, headers=a)
    assert added.status_code == 201 and added.json() == {
        "user_id": bob["user_id"],
        "name": "Ada",
        "email": "bob@example.com",
        "role": "member",
    }
    assert _code(api.post(f"/v1/teams/{tid}/members", json={"email": "bob@example.com"}, headers=a)) == (
        409,
        "conflict",
    )
    assert _code(api.post(f"/v1/teams/{tid}/members", json={"email": "zed@example.com"}, headers=a)) == (
        404,
        "not_found",
    )
    detail = api.get(f"/v1/teams/{tid}", headers=b).json()
    assert detail["team"]["role"] == "member"
    assert [(m["email"], m["role"]) for m in detail["members"]] == [
        ("ada@example.com", "owner"),
        ("bob@example.com", "member"),
    ]

    # a plain member can read but not manage
    assert _code(api.patch(f"/v1/teams/{tid}", json={"name": "Mine"}, headers=b)) == (403, "forbidden")
    assert _code(api.post(f"/v1/teams/{tid}/members", json={"email": "ada@example.com"}, headers=b)) == (
        403,
        "forbidden",
    )
    assert _code(api.delete(f"/v1/teams/{tid}", headers=b)) == (403, "forbidden")
    # roles: owner only; the owner is protected
    assert _code(
        api.patch(f"/v1/teams/{tid}/members/{ada['user_id']}", json={"role": "admin"}, headers=b)
    ) == (
        403,
        "forbidden",
    )
    assert _code(
        api.patch(f"/v1/teams/{tid}/members/{ada['user_id']}", json={"role": "member"}, headers=a)
    ) == (
        403,
        "forbidden",
    )
    assert (
        api.patch(f"/v1/teams/{tid}/members/{bob['user_id']}", json={"role": "owner"}, headers=a).status_code
        == 400
    )
    assert (
        api.patch(f"/v1/teams/{tid}/members/{bob['user_id']}", json={"role": "admin"}, headers=a).status_code
        == 204
    )
    assert api.patch(f"/v1/teams/{tid}", json={"name": "Lab"}, headers=b).status_code == 204
    assert api.get(f"/v1/teams/{tid}", headers=a).json()["team"]["name"] == "Lab"
    assert _code(api.delete(f"/v1/teams/{tid}/members/{ada['user_id']}", headers=b)) == (403, "forbidden")
    assert _code(api.delete(f"/v1/teams/{tid}/members/usr-nobody", headers=a)) == (404, "not_found")

    # leaving: the owner cannot; bob can (he has his own team); nobody leaves their last team
    assert _code(api.post(f"/v1/teams/{tid}/leave", headers=a)) == (403, "forbidden")
    assert api.post(f"/v1/teams/{tid}/leave", headers=b).status_code == 204
    assert api.get(f"/v1/teams/{tid}", headers=b).status_code == 404
    carol = signup(api, "carol@example.com")
    assert _code(api.delete(f"/v1/teams/{carol['team_id']}", headers=auth(carol["token"]))) == (
        409,
        "conflict",
    )
    assert (
        api.post(f"/v1/teams/{tid}/members", json={"email": "carol@example.com"}, headers=a).status_code
        == 201
    )
    assert _code(api.post(f"/v1/teams/{carol['team_id']}/leave", headers=auth(carol["token"]))) == (
        403,
        "forbidden",
    )

    # a member's token for the team stops working as soon as they are removed
    switched = api.post("/v1/auth/switch-team", json={"team_id": tid}, headers=auth(carol["token"])).json()
    assert api.get("/v1/capsules", headers=auth(switched["token"])).status_code == 200
    assert api.delete(f"/v1/teams/{tid}/members/{carol['user_id']}", headers=a).status_code == 204
    assert api.get("/v1/capsules", headers=auth(switched["token"])).status_code == 403

    # deletion: owner only, never the owner's last team; keys and memberships go, the team 404s
    lab = auth(api.post("/v1/auth/switch-team", json={"team_id": tid}, headers=a).json()["token"])
    key = api.post("/v1/api-keys", json={"name": "k"}, headers=lab).json()["key"]
    assert api.get("/v1/capsules", headers={"X-API-Key": key}).status_code == 200
    assert api.delete(f"/v1/teams/{ada['team_id']}", headers=lab).status_code == 204  # she still has Lab
    assert api.get("/v1/me", headers=a).status_code == 403  # her token for the deleted team is dead
    assert _code(api.delete(f"/v1/teams/{tid}", headers=lab)) == (409, "conflict")  # Lab is her last
    assert api.post("/v1/teams", json={"name": "Spare"}, headers=lab).status_code == 201
    assert api.delete(f"/v1/teams/{tid}", headers=lab).status_code == 204
    assert api.get("/v1/capsules", headers={"X-API-Key": key}).status_code == 401
    again = api.post("/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    assert [t["name"] for t in api.get("/v1/teams", headers=auth(again.json()["token"])).json()] == ["Spare"]
    assert api.get(f"/v1/teams/{tid}", headers=auth(again.json()["token"])).status_code == 404


def test_deleting_a_team_destroys_its_capsules(api: TestClient) -> None:
    ada = signup(api, "ada@example.com")
    a = auth(ada["token"])
    spare = api.post("/v1/teams", json={"name": "Spare"}, headers=a).json()
    idle = insert_capsule(api, ada["team_id"], status="paused")  # no host: nothing to call
    done = insert_capsule(api, ada["team_id"], status="stopped")
    stuck = insert_capsule(api, ada["team_id"], status="running", host="unreachable")
    refused = api.delete(f"/v1/teams/{ada['team_id']}", headers=a)
    assert _code(refused) == (503, "host_unavailable") and stuck in refused.json()["error"]["message"]
    assert api.get(f"/v1/teams/{ada['team_id']}", headers=a).status_code == 200  # kept
    assert capsule_status(api, idle) == "stopped" and capsule_status(api, stuck) == "running"
    set_capsule_status(api, stuck, "error")  # say an operator cleared it up
    set_host(api, stuck, None)
    assert api.delete(f"/v1/teams/{ada['team_id']}", headers=a).status_code == 204
    assert {capsule_status(api, c) for c in (idle, done, stuck)} == {"stopped"}
    relogin = api.post("/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    assert relogin.json()["team_id"] == spare["id"]
    logs = api.get("/v1/audit-logs", headers=auth(relogin.json()["token"])).json()["items"]
    assert logs == [] or all(e["resource_type"] == "team" for e in logs)


def test_user_search(api: TestClient) -> None:
    token = signup(api, "ada@example.com")["token"]
    for name in ("bob@example.com", "bob@example.org", "bobby@example.com", "b_b@example.com"):
        signup(api, name)
    search = lambda q: api.get("/v1/users/search", params={"email": q}, headers=auth(token))  # noqa: E731
    assert [u["email"] for u in search("bob@").json()] == ["bob@example.com", "bob@example.org"]
    assert [u["email"] for u in search("BOB@example.c").json()] == ["bob@example.com"]
    assert search("%@%").json() == [] and search("b_b@").json()[0]["email"] == "b_b@example.com"
    assert search("___@").json() == []  # LIKE wildcards are escaped
    for bad in ("bo", "bobby", "@e"):
        assert _code(search(bad)) == (400, "invalid_request"), bad
    assert api.get("/v1/users/search", params={"email": "bob@"}).status_code == 401
    insert_users(api, [f"many@d{i:02d}.example.com" for i in range(12)] + ["gone@example.com"])
    assert len(search("many@").json()) == 10
    assert search("gone@").json() == []  # disabled accounts are not found


def test_audit_log(api: TestClient) -> None:
    ada, bob = signup(api, "ada@example.com"), signup(api, "bob@example.com")
    a, b = auth(ada["token"]), auth(bob["token"])
    tid = ada["team_id"]
    for i in range(5):
        assert api.post("/v1/api-keys", json={"name": f"k{i}"}, headers=a).status_code == 201
    assert (
        api.post(f"/v1/teams/{tid}/members", json={"email": "bob@example.com"}, headers=a).status_code == 201
    )
    assert api.patch(f"/v1/teams/{tid}", json={"name": "Renamed"}, headers=a).status_code == 204

    everything = api.get("/v1/audit-logs", headers=a).json()
    actions = [(e["resource_type"], e["action"]) for e in everything["items"]]
    assert actions[:2] == [("team", "rename"), ("member", "add")] and actions[-1] == ("user", "signup")
    assert everything["next_before"] is None and everything["next_before_id"] is None
    assert {e["scope"] for e in everything["items"]} == {"team", "admin"}

    # pagination: pages of 2, newest first, no gaps or repeats
    seen: list[str] = []
    params: dict[str, object] = {"limit": 2}
    while True:
        page = api.get("/v1/audit-logs", params=params, headers=a).json()
        seen += [e["id"] for e in page["items"]]
        if page["next_before"] is None:
            break
        params = {"limit": 2, "before": page["next_before"], "before_id": page["next_before_id"]}
    assert seen == [e["id"] for e in everything["items"]]

    # filters, repeatable or comma-separated
    keys = api.get("/v1/audit-logs", params={"resource_type": "api_key"}, headers=a).json()["items"]
    assert len(keys) == 5 and all(e["action"] == "create" for e in keys)
    both = api.get("/v1/audit-logs?resource_type=team&resource_type=member", headers=a).json()["items"]
    assert {e["resource_type"] for e in both} == {"team", "member"}
    assert len(api.get("/v1/audit-logs?resource_type=team,member&action=add", headers=a).json()["items"]) == 1

    # bob, a plain member of ada's team, sees its team-scoped events only
    as_bob = auth(api.post("/v1/auth/switch-team", json={"team_id": tid}, headers=b).json()["token"])
    bobs = api.get("/v1/audit-logs", headers=as_bob).json()["items"]
    assert bobs and all(e["scope"] == "team" for e in bobs)
    assert len(bobs) == len(everything["items"]) - 1  # the member add is hidden
    # and in his own team he sees nothing of ada's
    assert all(e["actor_id"] == bob["user_id"] for e in api.get("/v1/audit-logs", headers=b).json()["items"])

    assert api.get("/v1/audit-logs", params={"limit": 1000}, headers=a).status_code == 200
    for bad in ({"limit": 0}, {"before": "yesterday"}, {"before_id": "log-x"}):
        assert _code(api.get("/v1/audit-logs", params=bad, headers=a)) == (400, "invalid_request"), bad
