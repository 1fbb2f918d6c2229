"""What one client can make the control plane swallow: request bodies (413, also where no credential is
needed) and request rates (429 with `Retry-After`), on the API and on the traffic proxy."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from wrenn.controlplane import Settings, create_app

from .conftest import ClientAddress, account, api_key, rows

BIG = b'{"email": "' + b"a" * (2 << 20) + b'@example.com", "password": "long enough"}'


@pytest.mark.parametrize(
    "path", ["/v1/auth/signup", "/v1/auth/login", "/v1/hosts/register", "/v1/admin/bootstrap", "/sandboxes"]
)
def test_oversized_bodies_are_refused_before_they_are_read(cp: TestClient, path: str) -> None:
    before = rows(cp)
    headers = {"Content-Type": "application/json"}
    r = cp.post(path, content=BIG, headers=headers)
    assert r.status_code == 413, r.text[:300]
    if path == "/sandboxes":  # E2B's routes answer in E2B's shape
        assert r.json()["code"] == 413 and r.json()["error_code"] == "too_large"
    else:
        assert r.json()["error"]["code"] == "too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for i in range(0, len(BIG), 64 * 1024):
            yield BIG[i : i + 64 * 1024]

    r = cp.post(path, content=chunked(), headers=headers)
    assert r.status_code == 413, r.text[:300]
    assert rows(cp) == before


def test_a_body_under_the_limit_still_works(cp: TestClient) -> None:
    r = cp.post("/v1/auth/signup", json={"email": "ok@example.com", "password": "x" * 200, "name": "n" * 190})
    assert r.status_code == 201, r.text


@pytest.fixture
def strict(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url, data_dir=tmp_path / "cp", monitor_interval_s=3600,
        rate_unauthenticated=0.5, burst_unauthenticated=3, rate_per_key=1, burst_per_key=5,
        rate_per_address=1000, burst_per_address=1000, rate_proxy_per_address=1, burst_proxy_per_address=4,
    )  # fmt: skip
    with TestClient(ClientAddress(create_app(settings))) as client:
        yield client


def test_unauthenticated_routes_are_rate_limited_per_address(strict: TestClient) -> None:
    def signup(i: int, address: str) -> int:
        body = {"email": f"s{i}-{address}@example.com", "password": "long enough"}
        r = strict.post("/v1/auth/signup", json=body, headers={"X-Test-Client": address})
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        return r.status_code

    assert [signup(i, "203.0.113.5") for i in range(5)] == [201, 201, 201, 429, 429]
    assert signup(9, "198.51.100.5") == 201  # another address has its own bucket


def test_api_keys_are_rate_limited(strict: TestClient) -> None:
    owner = account(strict, "owner@example.com")
    key = api_key(strict, owner)
    codes = [strict.get("/v1/capsules", headers=key).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[-1] == 429
    e2b = strict.get("/v2/sandboxes", headers=key)
    assert e2b.status_code == 429 and e2b.json()["error_code"] == "rate_limited"  # E2B's SDK backs off


def test_the_traffic_proxy_is_rate_limited_per_address(strict: TestClient) -> None:
    host = {"Host": "8000-cl-nosuchcapsule.wrenn.local"}
    codes = [strict.get("/", headers={**host, "X-Test-Client": "203.0.113.8"}).status_code for _ in range(6)]
    assert codes[:4] == [502] * 4 and codes[-1] == 429  # 502: E2B's proxy's "sandbox not found"
    assert strict.get("/", headers={**host, "X-Test-Client": "198.51.100.8"}).status_code == 502


def test_limits_are_settings(cp_settings: Settings) -> None:
    assert dataclasses.replace(cp_settings, max_body_bytes=10).max_body_bytes == 10
    assert Settings.from_env().max_body_bytes == 1 << 20


def test_reading_a_dashboard_session_is_not_a_login(strict: TestClient) -> None:
    """The dashboard asks who is signed in on every page load: that spends the API's bucket, not the tight
    one for credential-less POSTs (sign-up, login), or a user browsing would be locked out."""
    codes = {strict.get("/v1/dashboard/session", headers={"X-Test-Client": "203.0.113.9"}).status_code
             for _ in range(10)}  # fmt: skip
    assert codes == {200}
    logins = [strict.post("/v1/dashboard/session", json={"email": "n@example.com", "password": "wrong one"},
                          headers={"X-Test-Client": "203.0.113.9"}).status_code for _ in range(5)]  # fmt: skip
    assert logins[-1] == 429
