"""The operators' API (`/v1/admin/*`) and the sessions it ends: a disabled account's JWTs and API keys stop at
once, its owned teams' capsules are destroyed on their host; users, teams (BYOC, delete), capsules and
templates of every team; every admin action audited; an admin cannot lock themselves out. In-process
control plane over the recording agent, on SQLite and PostgreSQL. (That `/v1/admin/*` refuses everyone
but platform admins is checked route by route in tests/controlplane/test_isolation.py.)"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.controlplane._db import insert_template
from wrenn.controlplane.db import ApiKey

from ._fake_agent import FakeAgent
from .conftest import Account, account, admin_account, api_key, rows


def _create(cp: TestClient, key: dict[str, str]) -> str:
    r = cp.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=key)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _audit(cp: TestClient, admin: Account, **params: Any) -> list[dict[str, Any]]:
    r = cp.get("/v1/admin/audit-logs", params=params, headers=admin.jwt)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_a_disabled_accounts_tokens_and_keys_stop_at_once(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    ada = account(cp, "ada@example.com")
    bob = account(cp, "bob@example.com")  # a member of Ada's team, with a key of his own there
    assert (
        cp.post(f"/v1/teams/{ada.team_id}/members", json={"email": bob.email}, headers=ada.jwt).status_code
        == 201
    )
    ada_key = api_key(cp, ada)
    capsule = _create(cp, ada_key)
    second_session = {"Authorization": "Bearer " + cp.post("/v1/auth/login", json={
        "email": ada.email, "password": "correct horse"}).json()["token"]}  # fmt: skip

    r = cp.put(f"/v1/admin/users/{ada.user_id}/active", json={"active": False}, headers=admin.jwt)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "disabled" and r.json()["capsules_not_destroyed"] == []
    for headers in (ada.jwt, second_session):
        refused = cp.get("/v1/capsules", headers=headers)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "account_deactivated")
    assert cp.get("/v1/capsules", headers=ada_key).status_code == 403
    assert cp.get(f"/v1/teams/{ada.team_id}", headers=bob.jwt).status_code == 200  # Bob is not disabled
    assert ("destroy_sandbox", capsule) in [
        (n, getattr(req, "sandbox_id", "")) for n, req in fake_agent.recorder.calls
    ]
    login = cp.post("/v1/auth/login", json={"email": ada.email, "password": "correct horse"})
    assert (login.status_code, login.json()["error"]["code"]) == (403, "account_disabled")
    assert any(e["action"] == "disable" and e["resource_id"] == ada.user_id for e in _audit(cp, admin))

    # enabled again: new sign-ins work; the old sessions stay signed out
    assert (
        cp.put(f"/v1/admin/users/{ada.user_id}/active", json={"active": True}, headers=admin.jwt).status_code
        == 200
    )
    assert cp.get("/v1/capsules", headers=ada.jwt).status_code == 401
    assert cp.get("/v1/capsules", headers=ada_key).status_code == 200  # her key works again
    assert (
        cp.post("/v1/auth/login", json={"email": ada.email, "password": "correct horse"}).status_code == 200
    )


def test_admins_cannot_lock_themselves_out(cp: TestClient) -> None:
    admin = admin_account(cp)
    before = rows(cp)
    for path, body in ((f"/v1/admin/users/{admin.user_id}/active", {"active": False}),
                       (f"/v1/admin/users/{admin.user_id}/admin", {"admin": False})):  # fmt: skip
        r = cp.put(path, json=body, headers=admin.jwt)
        assert r.status_code == 409, r.text
    last = cp.request("DELETE", "/v1/me", json={"confirmation": admin.email}, headers=admin.jwt)
    assert (last.status_code, last.json()["error"]["code"]) == (409, "last_admin")
    assert rows(cp) == before


def test_making_an_admin(cp: TestClient) -> None:
    admin = admin_account(cp)
    ada = account(cp, "ada@example.com")
    assert cp.get("/v1/admin/users", headers=ada.jwt).status_code == 403
    made = cp.put(f"/v1/admin/users/{ada.user_id}/admin", json={"admin": True}, headers=admin.jwt)
    assert made.status_code == 200 and made.json()["is_admin"] is True
    assert cp.get("/v1/admin/users", headers=ada.jwt).status_code == 200  # at once, same token
    assert (
        cp.put(f"/v1/admin/users/{ada.user_id}/admin", json={"admin": False}, headers=admin.jwt).status_code
        == 200
    )
    assert cp.get("/v1/admin/users", headers=ada.jwt).status_code == 403
    actions = [e["action"] for e in _audit(cp, admin, resource_type="user")]
    assert "grant_admin" in actions and "revoke_admin" in actions


def test_users_are_listed_and_searched(cp: TestClient) -> None:
    admin = admin_account(cp)
    for name in ("ada", "bob", "carol"):
        account(cp, f"{name}@example.com")
    page = cp.get("/v1/admin/users", params={"per_page": 2}, headers=admin.jwt).json()
    assert page["total"] == 4 and len(page["items"]) == 2 and page["per_page"] == 2
    found = cp.get("/v1/admin/users", params={"q": "BOB"}, headers=admin.jwt).json()["items"]
    assert [u["email"] for u in found] == ["bob@example.com"]
    assert found[0]["teams_owned"] == 1 and found[0]["has_password"] is True
    assert cp.get("/v1/admin/users", params={"q": "%"}, headers=admin.jwt).json()["items"] == []  # literal
    assert cp.get("/v1/admin/users", params={"status": "nope"}, headers=admin.jwt).status_code == 400
    assert cp.get("/v1/admin/users/usr-nobody", headers=admin.jwt).status_code == 404


def test_teams_byoc_and_deletion(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    ada = account(cp, "ada@example.com")
    capsule = _create(cp, api_key(cp, ada))
    listed = cp.get("/v1/admin/teams", params={"q": "ada"}, headers=admin.jwt).json()["items"]
    assert [(t["id"], t["owner_email"], t["capsules"], t["byoc_enabled"]) for t in listed] == [
        (ada.team_id, ada.email, 1, True)
    ]
    off = cp.put(f"/v1/admin/teams/{ada.team_id}/byoc", json={"enabled": False}, headers=admin.jwt)
    assert off.status_code == 200 and off.json()["byoc_enabled"] is False and off.json()["byoc_own"] is False
    refused = cp.post("/v1/hosts", json={"type": "byoc"}, headers=ada.jwt)
    assert refused.status_code == 403 and "BYOC" in refused.json()["error"]["message"]
    assert (
        cp.put(f"/v1/admin/teams/{ada.team_id}/byoc", json={"enabled": None}, headers=admin.jwt).status_code
        == 200
    )
    assert cp.post("/v1/hosts", json={"type": "byoc"}, headers=ada.jwt).status_code == 201

    assert cp.delete(f"/v1/admin/teams/{ada.team_id}", headers=admin.jwt).status_code == 204
    assert ("destroy_sandbox", capsule) in [
        (n, getattr(r, "sandbox_id", "")) for n, r in fake_agent.recorder.calls
    ]
    assert cp.get(f"/v1/teams/{ada.team_id}", headers=ada.jwt).status_code in (403, 404)
    assert cp.delete(f"/v1/admin/teams/{ada.team_id}", headers=admin.jwt).status_code == 404
    team_log = [e for e in _audit(cp, admin, team_id=ada.team_id) if e["actor_id"] == admin.user_id]
    assert {"byoc", "delete"} <= {e["action"] for e in team_log}


def test_capsules_and_templates_of_every_team(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    ada, bob = account(cp, "ada@example.com"), account(cp, "bob@example.com")
    mine, theirs = _create(cp, api_key(cp, ada)), _create(cp, api_key(cp, bob))
    every = cp.get("/v1/admin/capsules", headers=admin.jwt).json()
    assert {c["id"] for c in every["items"]} == {mine, theirs} and every["total"] == 2
    only = cp.get("/v1/admin/capsules", params={"team_id": bob.team_id}, headers=admin.jwt).json()["items"]
    assert [c["id"] for c in only] == [theirs]
    assert cp.delete(f"/v1/admin/capsules/{theirs}", headers=admin.jwt).status_code == 204
    assert cp.get(f"/v1/capsules/{theirs}", headers=bob.jwt).json()["status"] == "stopped"
    bobs_log = cp.get("/v1/audit-logs", headers=bob.jwt).json()["items"]
    assert any(e["action"] == "destroy" and e["actor_id"] == admin.user_id for e in bobs_log)  # Bob sees it
    stopped = cp.get("/v1/admin/capsules", params={"status": "stopped"}, headers=admin.jwt).json()["items"]
    assert [c["id"] for c in stopped] == [theirs]
    assert cp.delete("/v1/admin/capsules/cl-nothing", headers=admin.jwt).status_code == 404

    insert_template(cp, bob.team_id, "bobs-tpl")
    templates = cp.get("/v1/admin/templates", headers=admin.jwt).json()["items"]
    assert [(t["name"], t["team_id"]) for t in templates] == [("bobs-tpl", bob.team_id)]
    assert cp.delete(f"/v1/admin/templates/{templates[0]['id']}", headers=admin.jwt).status_code == 204
    assert cp.get("/v1/admin/templates", headers=admin.jwt).json()["items"] == []


def test_host_tags_and_delete_preview(cp: TestClient) -> None:
    ada = account(cp, "ada@example.com")
    mate = account(cp, "mate@example.com")
    assert (
        cp.post(f"/v1/teams/{ada.team_id}/members", json={"email": mate.email}, headers=ada.jwt).status_code
        == 201
    )
    host = cp.post("/v1/hosts", json={"type": "byoc"}, headers=ada.jwt).json()["host"]["id"]
    assert cp.post(f"/v1/hosts/{host}/tags", json={"tag": "gpu"}, headers=ada.jwt).json() == ["gpu"]
    assert cp.post(f"/v1/hosts/{host}/tags", json={"tag": "eu-west"}, headers=ada.jwt).json() == [
        "eu-west",
        "gpu",
    ]
    assert cp.post(f"/v1/hosts/{host}/tags", json={"tag": "bad tag!"}, headers=ada.jwt).status_code == 400
    assert cp.get(f"/v1/hosts/{host}/tags", headers=ada.jwt).json() == ["eu-west", "gpu"]
    assert cp.delete(f"/v1/hosts/{host}/tags/gpu", headers=ada.jwt).status_code == 204
    assert cp.delete(f"/v1/hosts/{host}/tags/gpu", headers=ada.jwt).status_code == 404
    assert cp.get(f"/v1/hosts/{host}/delete-preview", headers=ada.jwt).json() == {
        "host": host,
        "sandbox_ids": [],
    }
    as_mate = {"Authorization": "Bearer " + cp.post("/v1/auth/switch-team", json={"team_id": ada.team_id},
                                                    headers=mate.jwt).json()["token"]}  # fmt: skip
    before = rows(cp)
    assert cp.post(f"/v1/hosts/{host}/tags", json={"tag": "x"}, headers=as_mate).status_code == 403
    assert cp.get(f"/v1/hosts/{host}/delete-preview", headers=as_mate).status_code == 403
    assert rows(cp) == before


def test_keys_of_a_deleted_creator_are_revoked_for_good(cp: TestClient) -> None:
    """The janitor's purge removes the keys a deleted account created in other teams too."""
    ada, bob = account(cp, "ada@example.com"), account(cp, "bob@example.com")
    assert (
        cp.post(f"/v1/teams/{bob.team_id}/members", json={"email": ada.email}, headers=bob.jwt).status_code
        == 201
    )
    cp.patch(f"/v1/teams/{bob.team_id}/members/{ada.user_id}", json={"role": "admin"}, headers=bob.jwt)
    as_ada = {"Authorization": "Bearer " + cp.post("/v1/auth/switch-team", json={"team_id": bob.team_id},
                                                   headers=ada.jwt).json()["token"]}  # fmt: skip
    key = cp.post("/v1/api-keys", json={"name": "ada's"}, headers=as_ada)
    assert key.status_code == 201
    assert (
        cp.request("DELETE", "/v1/me", json={"confirmation": ada.email}, headers=ada.jwt).status_code == 202
    )
    assert cp.get("/v1/capsules", headers={"X-API-Key": key.json()["key"]}).status_code == 403
    settings = cp.app.state.settings  # type: ignore[attr-defined]
    assert settings.account_grace_days > 0
    from tests.controlplane.test_account_lifecycle import _backdate

    _backdate(cp, ada.user_id, settings.account_grace_days + 1)
    assert cp.portal is not None and cp.portal.call(cp.app.state.janitor.tick) == 1  # type: ignore[attr-defined]
    assert [k for k in rows(cp)[ApiKey.__tablename__] if k[0] == key.json()["id"]] == []
    assert cp.get("/v1/capsules", headers={"X-API-Key": key.json()["key"]}).status_code == 401
