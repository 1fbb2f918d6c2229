"""Accounts as an attacker meets them: becoming a platform admin, managing a team's keys without the rights,
keys that outlive their creator, and guessing passwords (one address spraying many emails, or locking a
user out). In-process control plane, on SQLite and PostgreSQL; each refusal changes no row."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta

import httpx
from fastapi.testclient import TestClient

from wrenn.controlplane.db import ApiKey, User

from .conftest import Account, account, api_key, rows


def _is_admin(api: TestClient, user_id: str) -> bool:
    async def get(session: object) -> bool:
        user = await session.get(User, user_id)  # type: ignore[attr-defined]
        return bool(user.is_admin)

    from tests.controlplane._db import run

    return run(api, get)  # type: ignore[arg-type]


def test_no_signup_makes_an_admin_and_the_bootstrap_token_works_once(cp: TestClient) -> None:
    data_dir = cp.app.state.settings.data_dir  # type: ignore[attr-defined]
    first = account(cp, "first@example.com")  # first through the door, as `wrenn server` alone allows
    assert not _is_admin(cp, first.user_id)
    assert cp.post("/v1/hosts", json={"type": "regular"}, headers=first.jwt).status_code == 403
    token_file = data_dir / "bootstrap-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()

    before = rows(cp)
    for guess in ("", "0" * 64, token[:-1] + ("0" if token[-1] != "0" else "1"), token.upper()):
        r = cp.post("/v1/admin/bootstrap", json={"token": guess or "x", "email": "evil@example.com",
                                                "password": "long enough"})  # fmt: skip
        assert r.status_code == 401, r.text
    assert rows(cp) == before

    async def race() -> list[int]:
        transport = httpx.ASGITransport(app=cp.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            answers = await asyncio.gather(*(
                client.post("/v1/admin/bootstrap", json={"token": token, "email": f"r{i}@example.com",
                                                         "password": "long enough"})
                for i in range(6)
            ))  # fmt: skip
        return sorted(a.status_code for a in answers)

    assert cp.portal is not None
    assert cp.portal.call(race) == [201, 401, 401, 401, 401, 401]  # one admin, however they race


def test_only_owners_and_admins_manage_keys(cp: TestClient) -> None:
    owner = account(cp, "owner@example.com")
    member = account(cp, "member@example.com")
    assert cp.post(f"/v1/teams/{owner.team_id}/members", json={"email": member.email},
                   headers=owner.jwt).status_code == 201  # fmt: skip
    switched = cp.post("/v1/auth/switch-team", json={"team_id": owner.team_id}, headers=member.jwt).json()
    as_member = {"Authorization": f"Bearer {switched['token']}"}
    key_id = cp.post("/v1/api-keys", json={"name": "ci"}, headers=owner.jwt).json()["id"]

    before = rows(cp)
    r = cp.post("/v1/api-keys", json={"name": "mine"}, headers=as_member)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert cp.delete(f"/v1/api-keys/{key_id}", headers=as_member).status_code == 403
    assert rows(cp) == before
    listed = cp.get("/v1/api-keys", headers=as_member)
    assert listed.status_code == 200 and "key" not in listed.json()[0]  # members see names, never keys


def test_a_key_dies_with_its_creators_membership(cp: TestClient) -> None:
    owner = account(cp, "owner@example.com")
    mate = account(cp, "mate@example.com")
    quitter = account(cp, "quitter@example.com")
    for who in (mate, quitter):
        cp.post(f"/v1/teams/{owner.team_id}/members", json={"email": who.email}, headers=owner.jwt)
        cp.patch(
            f"/v1/teams/{owner.team_id}/members/{who.user_id}", json={"role": "admin"}, headers=owner.jwt
        )
    keys = {}
    for who in (mate, quitter):
        token = cp.post("/v1/auth/switch-team", json={"team_id": owner.team_id}, headers=who.jwt).json()[
            "token"
        ]
        keys[who.email] = api_key(cp, Account({"Authorization": f"Bearer {token}"}, who.user_id, owner.team_id,
                                              who.email))  # fmt: skip
        assert cp.get("/v1/capsules", headers=keys[who.email]).status_code == 200
    owners_key = api_key(cp, owner)

    assert (
        cp.delete(f"/v1/teams/{owner.team_id}/members/{mate.user_id}", headers=owner.jwt).status_code == 204
    )
    assert cp.post(f"/v1/teams/{owner.team_id}/leave", headers=quitter.jwt).status_code == 204
    for who in (mate, quitter):
        r = cp.get("/v1/capsules", headers=keys[who.email])
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), who.email
    assert cp.get("/v1/capsules", headers=owners_key).status_code == 200  # others' keys live on
    log = cp.get("/v1/audit-logs?resource_type=api_key&action=revoke", headers=owner.jwt).json()["items"]
    assert len(log) == 2 and {e["metadata"]["reason"] for e in log} == {"creator_left"}


def test_viewer_keys_read_and_change_nothing(cp: TestClient) -> None:
    owner = account(cp, "owner@example.com")
    viewer = api_key(cp, owner, role="viewer")
    assert cp.get("/v1/capsules", headers=viewer).status_code == 200
    assert cp.get("/v2/sandboxes", headers=viewer).status_code == 200
    before = rows(cp)
    for method, path, body in (
        ("POST", "/v1/capsules", {}),
        ("POST", "/sandboxes", {"templateID": "base"}),
        ("DELETE", "/v1/capsules/cl-x", None),
        ("POST", "/v1/snapshots", {"sandbox_id": "cl-x"}),
    ):
        r = cp.request(method, path, json=body, headers=viewer)
        assert r.status_code == 403, (path, r.text)
    assert rows(cp) == before
    with cp.websocket_connect("/v1/capsules/cl-x/exec/stream", headers=viewer) as ws:  # refused in-band
        assert ws.receive_json()["code"] == "forbidden"
    r = cp.post("/v1/api-keys", json={"name": "x", "role": "owner"}, headers=owner.jwt)
    assert r.status_code == 400  # no such key role


def test_expired_keys_are_refused(cp: TestClient) -> None:
    owner = account(cp, "owner@example.com")
    soon = datetime.now(UTC) + timedelta(seconds=2)
    created = cp.post(
        "/v1/api-keys", json={"name": "brief", "expires_at": soon.isoformat()}, headers=owner.jwt
    )
    assert created.status_code == 201 and created.json()["expires_at"], created.text
    key = {"X-API-Key": created.json()["key"]}
    assert cp.get("/v1/capsules", headers=key).status_code == 200

    async def expire(session: object) -> None:
        row = await session.get(ApiKey, created.json()["id"])  # type: ignore[attr-defined]
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)

    from tests.controlplane._db import run

    run(cp, expire)  # type: ignore[arg-type]
    r = cp.get("/v1/capsules", headers=key)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized") and "expired" in r.text
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert (
        cp.post("/v1/api-keys", json={"name": "x", "expires_at": past}, headers=owner.jwt).status_code == 400
    )


def test_login_guessing_is_throttled_per_address_and_cannot_lock_a_user_out(cp: TestClient) -> None:
    settings = cp.app.state.settings  # type: ignore[attr-defined]
    victim = account(cp, "victim@example.com", "the real password")
    for i in range(8):
        account(cp, f"u{i}@example.com")

    def login(email: str, password: str, address: str) -> int:
        r = cp.post("/v1/auth/login", json={"email": email, "password": password},
                    headers={"X-Test-Client": address})  # fmt: skip
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) > 0
        return r.status_code

    # An attacker locks itself out of the victim's account, not the victim.
    codes = [login(victim.email, f"guess-{i}", "203.0.113.7") for i in range(settings.login_attempts + 2)]
    assert codes[-1] == 429 and set(codes[: settings.login_attempts]) == {401}
    assert login(victim.email, "the real password", "198.51.100.1") == 200
    # Spraying one password over many emails from one address stops at the address's limit.
    sprayed = [login(f"u{i % 8}@example.com", f"Summer202{i}", "203.0.113.9") for i in range(40)]
    assert 429 in sprayed and sprayed.index(429) <= settings.login_attempts_per_address
    assert login("u1@example.com", "correct horse", "203.0.113.9") == 429  # the address is throttled
    assert login("u1@example.com", "correct horse", "198.51.100.2") == 200
