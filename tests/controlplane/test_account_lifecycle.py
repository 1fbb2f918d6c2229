"""An account's life: renaming, signing out (one session or all), changing the password, deletion with a
grace period and the janitor that deletes for good (its teams, keys and rows; the audit log anonymised),
an operator restoring an account within the grace period. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import bootstrap_admin
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane.db import ApiKey, AuditLog, Membership, Team, User, utcnow

from ._db import insert_capsule, run
from .test_accounts import auth, signup


def _login(
    api: TestClient, email: str = "ada@example.com", password: str = "correct horse"
) -> dict[str, str]:
    r = api.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return auth(r.json()["token"])


def test_rename_and_me(api: TestClient) -> None:
    jwt = auth(signup(api)["token"])
    r = api.patch("/v1/me", json={"name": "  Ada Lovelace "}, headers=jwt)
    assert r.status_code == 200 and r.json()["name"] == "Ada Lovelace"
    assert r.json()["has_password"] is True and r.json()["providers"] == []
    assert api.patch("/v1/me", json={"name": ""}, headers=jwt).status_code == 400


def test_sign_out_this_session_or_all(api: TestClient) -> None:
    signup(api)
    one, two, three = _login(api), _login(api), _login(api)
    assert api.post("/v1/auth/logout", json={}, headers=one).status_code == 204
    assert api.get("/v1/me", headers=one).status_code == 401  # this one only
    assert api.get("/v1/me", headers=two).status_code == 200
    assert api.post("/v1/auth/logout", json={"everywhere": True}, headers=two).status_code == 204
    assert api.get("/v1/me", headers=three).status_code == 401
    assert api.get("/v1/me", headers=_login(api)).status_code == 200  # signing in again works


def test_a_password_change_signs_out_every_other_session(api: TestClient) -> None:
    signup(api)
    mine, elsewhere = _login(api), _login(api)
    wrong = api.post("/v1/me/password", json={"current_password": "nope nope", "new_password": "battery staple"},
                     headers=mine)  # fmt: skip
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "wrong_password")
    missing = api.post("/v1/me/password", json={"new_password": "battery staple"}, headers=mine)
    assert missing.status_code == 403
    changed = api.post("/v1/me/password", json={"current_password": "correct horse", "new_password": "battery staple"},
                       headers=mine)  # fmt: skip
    assert changed.status_code == 200
    assert api.get("/v1/me", headers=mine).status_code == 401
    assert api.get("/v1/me", headers=elsewhere).status_code == 401
    assert api.get("/v1/me", headers=auth(changed.json()["token"])).status_code == 200
    _login(api, password="battery staple")


def _backdate(api: TestClient, user_id: str, days: float) -> None:
    async def change(session: object) -> None:
        user = await session.get(User, user_id)  # type: ignore[attr-defined]
        user.deleted_at = utcnow() - timedelta(days=days)

    run(api, change)  # type: ignore[arg-type]


def test_deletion_then_the_grace_period_then_gone(api: TestClient) -> None:
    account = signup(api)
    jwt = auth(account["token"])
    key = {"X-API-Key": api.post("/v1/api-keys", json={"name": "ci"}, headers=jwt).json()["key"]}
    mate = signup(api, "mate@example.com")
    assert api.post(f"/v1/teams/{account['team_id']}/members", json={"email": "mate@example.com"},
                    headers=jwt).status_code == 201  # fmt: skip
    shared = api.request("DELETE", "/v1/me", json={"confirmation": "ada@example.com"}, headers=jwt)
    assert (shared.status_code, shared.json()["error"]["code"]) == (409, "owns_shared_team")
    assert (
        api.delete(f"/v1/teams/{account['team_id']}/members/{mate['user_id']}", headers=jwt).status_code
        == 204
    )

    typo = api.request("DELETE", "/v1/me", json={"confirmation": "ada@example.org"}, headers=jwt)
    assert typo.status_code == 400
    gone = api.request("DELETE", "/v1/me", json={"confirmation": "ADA@example.com"}, headers=jwt)
    assert gone.status_code == 202, gone.text
    assert api.get("/v1/me", headers=jwt).status_code in (401, 403)
    assert api.get("/v1/capsules", headers=key).status_code == 403  # its key stopped with it
    login = api.post("/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    assert (login.status_code, login.json()["error"]["code"]) == (403, "account_disabled")

    janitor = api.app.state.janitor  # type: ignore[attr-defined]
    assert api.portal is not None
    assert api.portal.call(janitor.tick) == 0  # within the grace period: kept
    _backdate(api, account["user_id"], 16)
    assert api.portal.call(janitor.tick) == 1

    async def after(session: object) -> dict[str, object]:
        s = session
        return {
            "user": await s.get(User, account["user_id"]),  # type: ignore[attr-defined]
            "team": await s.get(Team, account["team_id"]),  # type: ignore[attr-defined]
            "memberships": (
                await s.execute(select(Membership).where(Membership.user_id == account["user_id"]))
            ).all(),  # type: ignore[attr-defined]
            "keys": (await s.execute(select(ApiKey).where(ApiKey.team_id == account["team_id"]))).all(),  # type: ignore[attr-defined]
            "named": (
                await s.execute(select(AuditLog.actor_name).where(AuditLog.actor_id == account["user_id"]))
            )
            .scalars()
            .all(),  # type: ignore[attr-defined]
        }

    state = run(api, after)  # type: ignore[arg-type]
    assert state["user"] is None and state["memberships"] == [] and state["keys"] == []
    team = state["team"]
    assert team is not None and team.deleted_at is not None  # type: ignore[attr-defined]
    assert set(state["named"]) == {"deleted user"}  # type: ignore[arg-type]
    assert (
        api.post(
            "/v1/auth/signup", json={"email": "ada@example.com", "password": "correct horse"}
        ).status_code
        == 201
    )


def test_the_janitor_destroys_the_deleted_accounts_capsules_and_fails_safe(api: TestClient) -> None:
    """A team whose capsule cannot be destroyed (its host does not answer) keeps the account for the next
    round; nothing is half deleted."""
    account = signup(api)
    insert_capsule(api, account["team_id"], status="running", host="unreachable")
    jwt = auth(account["token"])
    assert (
        api.request("DELETE", "/v1/me", json={"confirmation": "ada@example.com"}, headers=jwt).status_code
        == 202
    )
    _backdate(api, account["user_id"], 30)
    assert api.portal is not None
    assert api.portal.call(api.app.state.janitor.tick) == 0  # type: ignore[attr-defined]

    async def user(session: object) -> object:
        return await session.get(User, account["user_id"])  # type: ignore[attr-defined]

    assert run(api, user) is not None  # type: ignore[arg-type]


def test_an_operator_restores_an_account_within_the_grace_period(api: TestClient) -> None:
    admin = auth(
        bootstrap_admin(api.post, api.app.state.settings.data_dir, "root@example.com").json()["token"]
    )  # type: ignore[attr-defined]
    account = signup(api)
    jwt = auth(account["token"])
    assert (
        api.request("DELETE", "/v1/me", json={"confirmation": "ada@example.com"}, headers=jwt).status_code
        == 202
    )
    listed = api.get("/v1/admin/users", params={"status": "deleted"}, headers=admin).json()
    assert [u["email"] for u in listed["items"]] == ["ada@example.com"] and listed["items"][0]["deleted_at"]
    restored = api.put(f"/v1/admin/users/{account['user_id']}/active", json={"active": True}, headers=admin)
    assert restored.status_code == 200 and restored.json()["status"] == "active"
    assert api.get("/v1/me", headers=jwt).status_code == 401  # its old sessions stay signed out
    _login(api)
    assert api.portal is not None
    _backdate(api, account["user_id"], 30)  # no effect: it is no longer deleted
    assert api.portal.call(api.app.state.janitor.tick) == 0  # type: ignore[attr-defined]


def test_two_control_planes_purge_an_account_once(database_url: str, tmp_path: Path) -> None:
    """Two control planes on one database run their janitors at the same moment: the account is purged
    once, and neither round fails."""
    if not database_url.startswith("postgresql"):
        pytest.skip("several control planes share a PostgreSQL database")
    settings = Settings(database_url=database_url, data_dir=tmp_path / "cp", monitor_interval_s=3600,
                        janitor_interval_s=3600)  # fmt: skip
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        accounts = [signup(one, f"u{i}@example.com") for i in range(5)]
        for account in accounts:
            jwt = auth(account["token"])
            confirm = {"confirmation": account["email"]}
            assert one.request("DELETE", "/v1/me", json=confirm, headers=jwt).status_code == 202
            _backdate(one, account["user_id"], 30)
        results: list[int] = []

        def tick(api: TestClient) -> None:
            assert api.portal is not None
            results.append(api.portal.call(api.app.state.janitor.tick))  # type: ignore[attr-defined]

        threads = [threading.Thread(target=tick, args=(api,)) for api in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sum(results) == 5 and len(results) == 2

        async def users(session: object) -> int:
            return len((await session.execute(select(User.id))).all())  # type: ignore[attr-defined]

        assert run(one, users) == 0  # type: ignore[arg-type]
