"""Attacks on the dashboard's session and files (in-process, no VMs).

The session cookie is the user's JWT. Capsule hosts (`{port}-{id}.{domain}`) are on the dashboard's own
*site*, so SameSite does not keep a capsule's page from sending it: the cookie must count only where a
cross-origin page cannot reach (a custom header, a same-origin WebSocket, a same-origin navigation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from wrenn.controlplane import Settings, create_app
from wrenn.controlplane._session import COOKIE

DASH = {"X-Wrenn-Dashboard": "1"}
ACCOUNT = {"email": "eve-target@example.com", "password": "correct horse"}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "dashboard"
    (root / "_app" / "immutable").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>dashboard</title>")
    (root / "_app" / "immutable" / "start.abc.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not for the web")
    return root


@pytest.fixture
def api(tmp_path: Path, site: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "cp", dashboard_dir=site)
    (tmp_path / "cp").mkdir()
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        yield client


@pytest.fixture
def token(api: TestClient) -> str:
    r = api.post("/v1/dashboard/signup", json=ACCOUNT, headers=DASH)
    assert r.status_code == 201, r.text
    assert "token" not in r.json()  # page scripts never see it
    return r.cookies[COOKIE]


def test_the_cookie_is_host_only_secure_httponly_strict(api: TestClient) -> None:
    r = api.post("/v1/dashboard/signup", json=ACCOUNT, headers=DASH)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "domain" not in attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    out = api.delete("/v1/dashboard/session", headers=DASH)
    assert out.status_code == 204 and "max-age=0" in out.headers["set-cookie"].lower()


def test_login_and_signup_refuse_requests_without_the_dashboard_header(api: TestClient) -> None:
    """No login CSRF: a cross-site form cannot sign the victim into the attacker's account."""
    assert api.post("/v1/dashboard/signup", json=ACCOUNT).status_code == 403
    api.post("/v1/auth/signup", json=ACCOUNT)
    r = api.post("/v1/dashboard/session", json=ACCOUNT)
    assert r.status_code == 403 and COOKIE not in r.cookies
    assert api.delete("/v1/dashboard/session").status_code == 403
    ok = api.post("/v1/dashboard/session", json=ACCOUNT, headers=DASH)
    assert ok.status_code == 200 and ok.cookies[COOKIE]


def test_the_cookie_counts_only_with_the_header_from_the_same_origin(api: TestClient, token: str) -> None:
    api.cookies.clear()
    api.cookies.set(COOKIE, token)
    assert api.get("/v1/me", headers=DASH).status_code == 200
    assert api.get("/v1/me", headers={**DASH, "Sec-Fetch-Site": "same-origin"}).status_code == 200
    # What a capsule's page (same site, other origin) or another site can send:
    assert api.get("/v1/me").status_code == 401
    assert api.post("/v1/api-keys", json={"name": "stolen"}).status_code == 401
    for site in ("same-site", "cross-site", "none"):
        r = api.post("/v1/api-keys", json={"name": "stolen"}, headers={**DASH, "Sec-Fetch-Site": site})
        assert r.status_code == 401, site
    assert api.get("/v1/me", headers={"X-Wrenn-Dashboard": "true"}).status_code == 401
    api.cookies.clear()
    assert api.get("/v1/api-keys", headers={"Authorization": f"Bearer {token}"}).json() == []


def test_session_probe_never_fails(api: TestClient, token: str) -> None:
    api.cookies.clear()
    assert api.get("/v1/dashboard/session", headers=DASH).json() == {"me": None}
    api.cookies.set(COOKIE, "not.a.jwt")
    assert api.get("/v1/dashboard/session", headers=DASH).json() == {"me": None}
    api.cookies.set(COOKIE, token)
    assert api.get("/v1/dashboard/session").json() == {"me": None}  # no header: the cookie does not count
    me = api.get("/v1/dashboard/session", headers=DASH).json()["me"]
    assert me["email"] == ACCOUNT["email"] and me["is_admin"] is False  # no sign-up makes an admin


def _first_message(api: TestClient, origin: str | None, first: dict[str, str]) -> dict[str, str]:
    headers = {"origin": origin} if origin else {}
    with api.websocket_connect("/v1/capsules/cl-nothere/pty", headers=headers) as ws:
        ws.send_text(json.dumps(first))
        try:
            return dict(json.loads(ws.receive_text()))
        except WebSocketDisconnect:
            return {}


def test_websockets_take_the_cookie_from_the_same_origin_only(api: TestClient, token: str) -> None:
    api.cookies.set(COOKIE, token)
    start = {"type": "start"}
    # Same origin: the cookie authenticates, so the answer is about the capsule, not the caller.
    assert _first_message(api, "https://testserver", start)["code"] == "not_found"
    for origin in ("https://8000-cl-abc.testserver", "https://evil.example", "null", None):
        assert _first_message(api, origin, start)["code"] == "unauthorized", origin


def test_downloads_need_a_same_origin_navigation(api: TestClient, token: str) -> None:
    url = "/v1/dashboard/capsules/cl-nothere/files/download?path=/etc/passwd"
    api.cookies.set(COOKIE, token)
    assert api.get(url, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 404  # authenticated
    for headers in ({}, {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"}, DASH):
        assert api.get(url, headers=headers).status_code == 401, headers
    api.cookies.clear()
    bearer = {"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "same-origin"}
    assert api.get(url, headers=bearer).status_code == 401  # this route is the cookie's only
    assert api.get(url.split("?")[0], headers={"Sec-Fetch-Site": "same-origin"}).status_code == 400


def test_pages_never_shadow_the_api(api: TestClient) -> None:
    for path in ("/", "/login", "/signup", "/dashboard", "/dashboard/capsules/cl-x", "/admin/hosts"):
        r = api.get(path)
        assert r.status_code == 200 and r.text.startswith("<!doctype html>"), path
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert api.get("/openapi.json").json()["info"]["title"] == "Wrenn"
    assert "swagger" in api.get("/docs").text.lower()
    assert api.get("/health").json()["status"] == "ok"
    for path in ("/v1/nowhere", "/dashboards", "/sandboxes/x/nothing", "/index.html", "/_app/nothing.js"):
        r = api.get(path)
        assert r.status_code == 404 and not r.text.startswith("<!doctype"), path
    assert api.get("/sandboxes").status_code == 401  # E2B's routes are still E2B's
    assert api.get("/v2/sandboxes").status_code == 401
    assert api.delete("/templates/x").status_code == 401
    # The traffic proxy still comes first: a capsule host's /dashboard is the capsule's.
    r = api.get("/dashboard/capsules", headers={"host": "8000-cl-nothere.testserver"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "not_found"  # E2B's proxy's answer


def test_assets_stay_inside_the_build(api: TestClient) -> None:
    ok = api.get("/_app/immutable/start.abc.js")
    assert ok.status_code == 200 and "immutable" in ok.headers["cache-control"]
    for path in ("/_app/../secret.txt", "/_app/%2e%2e/secret.txt", "/_app/..%2fsecret.txt",
                 "/_app/immutable/../../../secret.txt", "/_app//etc/passwd"):  # fmt: skip
        r = api.get(path)
        assert r.status_code == 404 and "not for the web" not in r.text, path
