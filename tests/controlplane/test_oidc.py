"""Sign-in with an OpenID Connect provider end to end: a real provider (authlib's server components, over
HTTP on loopback: discovery, a sign-in form, PKCE-checked code exchange, RS256 ID tokens, JWKS, userinfo)
and a browser that follows the redirects. First sign-in creates the account and its team, the next signs
the same account in, linking and unlinking, a first password for a provider-made account. On SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from wrenn.controlplane import Settings, create_app
from wrenn.controlplane._settings import IdentityProvider

from ._browser import CP, Browser
from ._oidc_provider import Account, Provider, running_provider

DASHBOARD = {"X-Wrenn-Dashboard": "1"}
START = f"{CP}/v1/auth/oauth/corp"


@dataclass
class Stack:
    provider: Provider
    api: TestClient
    browser: Browser

    def me(self) -> dict[str, object] | None:
        found = self.api.get("/v1/dashboard/session", headers=DASHBOARD).json()["me"]
        return found if found is None else dict(found)


@pytest.fixture
def oidc_provider() -> Iterator[Provider]:
    with running_provider(f"{CP}/v1/auth/oauth/corp/callback") as provider:
        provider.add(
            "ada", Account(password="ada's password", sub="sub-ada", email="ada@corp.example", name="Ada")
        )
        provider.add("bob", Account(password="bob's password", sub="sub-bob", email="bob@corp.example",
                                    email_verified=False))  # fmt: skip
        yield provider


def corp_settings(database_url: str, data_dir: Path, provider: Provider, **more: object) -> Settings:
    corp = IdentityProvider(
        id="corp", kind="oidc", client_id=provider.client.client_id, client_secret=provider.client.client_secret,
        display_name="Corp SSO", discovery_url=provider.discovery_url,
    )  # fmt: skip
    return Settings(
        database_url=database_url, data_dir=data_dir, monitor_interval_s=3600, public_url=CP,
        identity_providers=(corp,), idp_allow_networks=("127.0.0.2/32",), **more,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def stack(database_url: str, tmp_path: Path, oidc_provider: Provider) -> Iterator[Stack]:
    app = create_app(corp_settings(database_url, tmp_path / "cp", oidc_provider))
    with TestClient(app, base_url=CP) as api:
        browser = Browser(api)
        yield Stack(oidc_provider, api, browser)
        browser.close()


def test_the_sign_in_page_lists_the_provider(stack: Stack) -> None:
    assert stack.api.get("/v1/auth/providers").json() == [{"id": "corp", "name": "Corp SSO", "kind": "oidc"}]


def test_first_sign_in_creates_the_account_and_the_next_signs_it_in(stack: Stack) -> None:
    done = stack.browser.sign_in(f"{START}?next=/dashboard/capsules", "ada", "ada's password")
    assert (done.status_code, done.headers["location"]) == (302, "/dashboard/capsules"), done.text
    me = stack.me()
    assert me is not None and me["email"] == "ada@corp.example" and me["name"] == "Ada"
    assert me["providers"] == ["corp"] and me["has_password"] is False and me["role"] == "owner"
    teams = stack.api.get("/v1/teams", headers=DASHBOARD).json()
    assert [t["role"] for t in teams] == ["owner"]  # the account came with its own team

    # PKCE: the authorization request carried an S256 challenge, the exchange its verifier
    assert stack.provider.token_requests[-1].get("code_verifier")
    first = me["user_id"]
    stack.api.cookies.clear()
    again = stack.browser.sign_in(START, "ada", "ada's password")
    assert again.headers["location"] == "/"
    me = stack.me()
    assert me is not None and me["user_id"] == first  # the same account, not a second one


def test_a_provider_that_does_not_vouch_for_the_email_creates_nothing(stack: Stack) -> None:
    done = stack.browser.sign_in(START, "bob", "bob's password")
    assert done.headers["location"] == "/login?error=email_unverified"
    assert stack.me() is None
    assert (
        stack.api.post("/v1/auth/login", json={"email": "bob@corp.example", "password": "x" * 8}).status_code
        == 401
    )


def test_an_existing_account_links_the_provider_from_its_settings(stack: Stack) -> None:
    api = stack.api
    r = api.post("/v1/dashboard/signup", json={"email": "ada@corp.example", "password": "correct horse"},
                 headers=DASHBOARD)  # fmt: skip
    assert r.status_code == 201
    user_id = r.json()["user_id"]
    api.cookies.clear()
    # Signing in with the provider does not take over the account that has the address
    taken = stack.browser.sign_in(START, "ada", "ada's password")
    assert taken.headers["location"] == "/login?error=email_taken" and stack.me() is None

    assert api.post("/v1/dashboard/session", json={"email": "ada@corp.example", "password": "correct horse"},
                    headers=DASHBOARD).status_code == 200  # fmt: skip
    connect = api.get(
        "/v1/me/providers/corp/connect", params={"next": "/dashboard/settings"}, headers=DASHBOARD
    )
    assert connect.status_code == 200, connect.text
    linked = stack.browser.sign_in(connect.json()["auth_url"], "ada", "ada's password")
    assert linked.headers["location"] == "/dashboard/settings"
    me = stack.me()
    assert me is not None and me["user_id"] == user_id and me["providers"] == ["corp"]

    api.cookies.clear()  # now the provider signs that account in
    assert stack.browser.sign_in(START, "ada", "ada's password").headers["location"] == "/"
    me = stack.me()
    assert me is not None and me["user_id"] == user_id

    # unlinking leaves the password; the provider then signs nobody in (its e-mail is taken again)
    assert api.delete("/v1/me/providers/corp", headers=DASHBOARD).status_code == 204
    me = stack.me()
    assert me is not None and me["providers"] == []


def test_a_provider_made_account_keeps_a_way_to_sign_in(stack: Stack) -> None:
    stack.browser.sign_in(START, "ada", "ada's password")
    api = stack.api
    last = api.delete("/v1/me/providers/corp", headers=DASHBOARD)
    assert (last.status_code, last.json()["error"]["code"]) == (409, "last_sign_in_method")
    first_password = api.post("/v1/me/password", json={"new_password": "correct horse"}, headers=DASHBOARD)
    assert first_password.status_code == 200, first_password.text  # no current password to give
    assert (
        api.post(
            "/v1/auth/login", json={"email": "ada@corp.example", "password": "correct horse"}
        ).status_code
        == 200
    )
    token = {"Authorization": f"Bearer {first_password.json()['token']}"}
    assert api.delete("/v1/me/providers/corp", headers=token).status_code == 204


def test_a_disabled_account_is_not_signed_in_by_its_provider(stack: Stack) -> None:
    from tests.conftest import bootstrap_admin

    stack.browser.sign_in(START, "ada", "ada's password")
    me = stack.me()
    assert me is not None
    stack.api.cookies.clear()
    admin = bootstrap_admin(stack.api.post, stack.api.app.state.settings.data_dir, "root@example.com")  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {admin.json()['token']}"}
    assert stack.api.put(f"/v1/admin/users/{me['user_id']}/active", json={"active": False},
                         headers=headers).status_code == 200  # fmt: skip
    refused = stack.browser.sign_in(START, "ada", "ada's password")
    assert refused.headers["location"] == "/login?error=account_disabled"


def test_the_authorization_request_carries_pkce_state_and_nonce(stack: Stack) -> None:
    r = stack.api.get(START, follow_redirects=False)
    assert r.status_code == 302
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert (
        query["nonce"][0]
        and query["state"][0]
        and query["redirect_uri"] == [f"{CP}/v1/auth/oauth/corp/callback"]
    )
    assert query["scope"] == ["openid email profile"]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-wrenn_oauth=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()


def test_sign_in_with_github(database_url: str, tmp_path: Path) -> None:
    """GitHub's OAuth app flow (GitHub Enterprise Server's addresses pointed at a stand-in): the account is
    made from the primary verified e-mail, its id is GitHub's numeric user id."""
    from ._github import running_github

    with running_github(f"{CP}/v1/auth/oauth/github/callback") as github:
        provider = IdentityProvider(
            id="github", kind="github", client_id=github["client_id"], client_secret=github["client_secret"],
            display_name="GitHub", scopes="read:user user:email", github_url=github["url"],
            github_api_url=f"{github['url']}/api",
        )  # fmt: skip
        settings = Settings(database_url=database_url, data_dir=tmp_path / "cp", monitor_interval_s=3600,
                            public_url=CP, identity_providers=(provider,), idp_allow_networks=("127.0.0.2/32",))  # fmt: skip
        with TestClient(create_app(settings), base_url=CP) as api:
            browser = Browser(api)
            page = browser.follow(browser.request("GET", f"{CP}/v1/auth/oauth/github?next=/dashboard"))
            back = browser.request("POST", str(page.request.url))
            done = browser.request("GET", back.headers["location"])
            assert done.headers["location"] == "/dashboard", done.headers
            me = api.get("/v1/dashboard/session", headers=DASHBOARD).json()["me"]
            assert (
                me["email"] == "octo@gh.example"
                and me["name"] == "Octo Cat"
                and me["providers"] == ["github"]
            )

            github["emails"] = [{"email": "other@gh.example", "primary": True, "verified": False}]
            github["user"] = {"id": 7, "login": "unverified"}
            api.cookies.clear()
            page = browser.follow(browser.request("GET", f"{CP}/v1/auth/oauth/github"))
            refused = browser.request(
                "GET", browser.request("POST", str(page.request.url)).headers["location"]
            )
            assert refused.headers["location"] == "/login?error=email_unverified"
            browser.close()
