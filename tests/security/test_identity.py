"""Sign-in with an identity provider as an attacker meets it, against a real OIDC provider on loopback: a
callback without this browser's state (login CSRF), a replayed or forged state, a code exchanged without
the PKCE verifier, ID tokens with a wrong nonce, audience, issuer or signing key, redirects to another
site, and a provider on an address the operator did not allow. Each is refused and signs nobody in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.controlplane._browser import CP, Browser
from tests.controlplane._oidc_provider import Account, Provider, running_provider
from tests.controlplane.test_oidc import DASHBOARD, START, corp_settings
from wrenn.controlplane import create_app
from wrenn.controlplane.db import Identity, User

from .conftest import rows


@pytest.fixture
def provider() -> Iterator[Provider]:
    with running_provider(f"{CP}/v1/auth/oauth/corp/callback") as found:
        found.add("ada", Account(password="ada's password", sub="sub-ada", email="ada@corp.example"))
        found.add("eve", Account(password="eve's password", sub="sub-eve", email="eve@corp.example"))
        yield found


@pytest.fixture
def api(database_url: str, tmp_path: Path, provider: Provider) -> Iterator[TestClient]:
    with TestClient(
        create_app(corp_settings(database_url, tmp_path / "cp", provider)), base_url=CP
    ) as client:
        yield client


def _accounts(api: TestClient) -> int:
    found = rows(api)
    return len(found[User.__tablename__]) + len(found[Identity.__tablename__])


def _signed_in(api: TestClient) -> object:
    return api.get("/v1/dashboard/session", headers=DASHBOARD).json()["me"]


def test_a_callback_without_this_browsers_state_signs_nobody_in(api: TestClient, provider: Provider) -> None:
    """Eve starts a sign-in with her own provider account and sends Ada the callback URL (login CSRF):
    Ada's browser does not hold Eve's state, so nothing happens there."""
    eve = Browser(api)
    page = eve.follow(eve.request("GET", START))
    eves_callback = eve.sign_in_at_provider(page, "eve", "eve's password").headers["location"]
    api.cookies.clear()  # Ada's browser: no flow cookie of Eve's
    r = api.get(eves_callback, follow_redirects=False)
    assert r.headers["location"] == "/login?error=invalid_state"
    assert _signed_in(api) is None and _accounts(api) == 0


def test_a_state_works_once(api: TestClient, provider: Provider) -> None:
    browser = Browser(api)
    page = browser.follow(browser.request("GET", START))
    callback = browser.sign_in_at_provider(page, "ada", "ada's password").headers["location"]
    cookie = api.cookies.get("__Host-wrenn_oauth")
    assert api.get(callback, follow_redirects=False).headers["location"] == "/"
    api.cookies.clear()
    api.cookies.set("__Host-wrenn_oauth", cookie or "", domain="testserver")
    replay = api.get(callback, follow_redirects=False)  # the same state and code again
    assert replay.headers["location"] == "/login?error=invalid_state"


@pytest.mark.parametrize("state", ["", "forged", "x" * 256])
def test_forged_states_are_refused(api: TestClient, state: str) -> None:
    api.cookies.set("__Host-wrenn_oauth", state or "nothing", domain="testserver")
    before = rows(api)
    r = api.get(f"/v1/auth/oauth/corp/callback?state={state}&code=abc", follow_redirects=False)
    assert r.headers["location"] == "/login?error=invalid_state"
    assert rows(api) == before


def test_the_code_is_useless_without_the_pkce_verifier(api: TestClient, provider: Provider) -> None:
    """A code intercepted on its way back cannot be exchanged by anyone who lacks the verifier, which
    never leaves the control plane (the provider enforces PKCE S256)."""
    browser = Browser(api)
    page = browser.follow(browser.request("GET", START))
    code = parse_qs(
        urlsplit(browser.sign_in_at_provider(page, "ada", "ada's password").headers["location"]).query
    )
    c = provider.client
    stolen = httpx.post(f"{provider.issuer}/token", data={
        "grant_type": "authorization_code", "code": code["code"][0], "redirect_uri": c.redirect_uri,
    }, auth=(c.client_id, c.client_secret))  # fmt: skip
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_request"
    assert "code_verifier" in stolen.json()["error_description"]


@pytest.mark.parametrize("tamper", ["nonce", "audience", "issuer", "unpublished_key"])
def test_id_tokens_that_do_not_check_out_sign_nobody_in(
    api: TestClient, provider: Provider, tamper: str
) -> None:
    provider.tamper.add(tamper)
    done = Browser(api).sign_in(START, "ada", "ada's password")
    assert done.headers["location"] == "/login?error=exchange_failed", (tamper, done.headers)
    assert _signed_in(api) is None and _accounts(api) == 0


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "http:/evil", "javascript:alert(1)",
               "/ok\r\nSet-Cookie: x=y"],
)  # fmt: skip
def test_no_open_redirect(api: TestClient, target: str) -> None:
    r = api.get("/v1/auth/oauth/corp", params={"next": target}, follow_redirects=False)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


def test_a_provider_outside_the_allowed_networks_is_not_fetched(
    database_url: str, tmp_path: Path, provider: Provider
) -> None:
    """The provider's URLs are the operator's, but go through the SSRF guard all the same: a loopback
    provider needs its network allowed explicitly."""
    settings = corp_settings(database_url, tmp_path / "cp2", provider)
    settings = type(settings)(
        **{**{f: getattr(settings, f) for f in settings.__slots__}, "idp_allow_networks": ()}
    )
    with TestClient(create_app(settings), base_url=CP) as api:
        r = api.get(START, follow_redirects=False)
        assert r.status_code == 502 and r.json()["error"]["code"] == "provider_unreachable"
        assert api.get("/v1/auth/oauth/nope", follow_redirects=False).status_code == 404
