"""Accounts, tokens, API keys and the error contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import stat

import pytest
from fastapi.testclient import TestClient

from wrenn.controlplane import Settings


def signup(
    api: TestClient, email: str = "ada@example.com", password: str = "correct horse"
) -> dict[str, str]:
    r = api.post("/v1/auth/signup", json={"email": email, "password": password, "name": "Ada"})
    assert r.status_code == 201, r.text
    return dict(r.json())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_signup_login_and_me(api: TestClient) -> None:
    account = signup(api)
    assert account["user_id"].startswith("usr-") and account["team_id"].startswith("team-")
    login = api.post("/v1/auth/login", json={"email": "ADA@example.com", "password": "correct horse"})
    assert login.status_code == 200 and login.json()["team_id"] == account["team_id"]
    me = api.get("/v1/me", headers=auth(login.json()["token"]))
    assert me.status_code == 200 and me.json()["email"] == "ada@example.com" and me.json()["role"] == "owner"


def test_bad_input_gets_a_clear_error(api: TestClient) -> None:
    cases = [
        (
            api.post("/v1/auth/signup", json={"email": "not-an-email", "password": "long enough"}),
            400,
            "invalid_request",
        ),
        (api.post("/v1/auth/signup", json={"email": "a@b.co", "password": "short"}), 400, "invalid_request"),
        (
            api.post("/v1/auth/signup", content=b"{nope", headers={"Content-Type": "application/json"}),
            400,
            "invalid_request",
        ),
        (api.get("/v1/me"), 401, "unauthorized"),
        (api.get("/v1/me", headers=auth("not.a.jwt")), 401, "unauthorized"),
        (api.get("/v1/nowhere"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert body["code"] == code and body["message"], body
    signup(api, "dup@example.com")
    dup = api.post("/v1/auth/signup", json={"email": "dup@example.com", "password": "long enough"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"


def test_failed_logins_are_rate_limited(api: TestClient) -> None:
    signup(api, "eve@example.com")
    for _ in range(3):
        r = api.post("/v1/auth/login", json={"email": "eve@example.com", "password": "wrong password"})
        assert r.status_code == 401
    locked = api.post("/v1/auth/login", json={"email": "eve@example.com", "password": "correct horse"})
    assert locked.status_code == 429 and locked.json()["error"]["code"] == "rate_limited"
    unknown = api.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever1"})
    assert unknown.status_code == 401  # same answer as a wrong password


def test_api_keys(api: TestClient) -> None:
    token = signup(api)["token"]
    created = api.post("/v1/api-keys", json={"name": "ci"}, headers=auth(token))
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("wrn_") and created.json()["key_prefix"] == key[:10]
    listed = api.get("/v1/api-keys", headers=auth(token)).json()
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]  # shown once only
    assert listed[0]["creator_email"] == "ada@example.com"
    assert api.get("/v1/capsules", headers={"X-API-Key": key}).status_code == 200
    assert api.get("/v1/capsules", headers={"X-API-Key": key + "x"}).status_code == 401
    assert api.get("/v1/api-keys", headers={"X-API-Key": key}).status_code == 401  # keys cannot manage keys
    assert api.delete(f"/v1/api-keys/{listed[0]['id']}", headers=auth(token)).status_code == 204
    assert api.get("/v1/capsules", headers={"X-API-Key": key}).status_code == 401


def test_teams_see_only_their_own(api: TestClient) -> None:
    ada, bob = signup(api, "ada@example.com")["token"], signup(api, "bob@example.com")["token"]
    key = api.post("/v1/api-keys", json={"name": "a"}, headers=auth(ada)).json()
    assert api.delete(f"/v1/api-keys/{key['id']}", headers=auth(bob)).status_code == 404
    assert api.get("/v1/capsules/cl-doesnotexist", headers=auth(bob)).status_code == 404
    switch = api.post("/v1/auth/switch-team", json={"team_id": key["team_id"]}, headers=auth(bob))
    assert switch.status_code == 404  # bob is no member of ada's team


def test_no_hosts_means_503_not_a_crash(api: TestClient) -> None:
    token = signup(api)["token"]
    r = api.post("/v1/capsules", json={"template": "minimal"}, headers=auth(token))
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_hosts_available"
    bad = api.post("/v1/capsules", json={"vcpus": 0, "template": "../x"}, headers=auth(token))
    assert bad.status_code == 400 and "vcpus" in bad.json()["error"]["message"]


def test_jwt_secret_is_generated_once_and_never_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from wrenn.controlplane import create_app

    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings)) as api:
        token = signup(api)["token"]
    secret_file = settings.data_dir / "jwt-secret"
    secret = secret_file.read_text()
    assert len(secret) >= 32 and stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret not in caplog.text
    with TestClient(create_app(settings)) as api:  # a restart keeps the secret: the token still works
        assert api.get("/v1/me", headers=auth(token)).status_code == 200


def test_openapi_is_published(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert "/v1/capsules" in spec["paths"] and "/v1/auth/login" in spec["paths"]
    assert api.get("/docs").status_code == 200
