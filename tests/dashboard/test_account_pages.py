"""The dashboard's account and operator pages in a real browser (Debian's Chromium): forgot and reset a
password through a real SMTP server, sign in with an OpenID Connect provider's button (a real provider on
loopback), account settings (name, password, linked providers, deletion), the admin pages (users,
teams, capsules, the platform log), and the team's channels (a real webhook receiver on loopback). The control plane runs on loopback with no host agent: none of these
pages needs a VM."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests._serving import serving_asgi
from tests.conftest import bootstrap_admin
from tests.controlplane._oidc_provider import Account, Provider, running_provider
from tests.controlplane._receiver import Receiver, receiver
from tests.controlplane._smtp import Inbox, smtp_server
from tests.controlplane.conftest import _free_port
from wrenn.controlplane import Settings, _site, create_app
from wrenn.controlplane._settings import IdentityProvider

from .conftest import User, _watch, assert_clean, axe

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
ADMIN = ("root@example.com", "correct horse")


@dataclass
class Site:
    base: str
    inbox: Inbox
    provider: Provider
    hooks: Receiver


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not (_site.ASSETS / "index.html").is_file():
        pytest.fail("the dashboard is not built: run scripts/bootstrap")
    root = tmp_path_factory.mktemp("dash-accounts")
    port = _free_port()  # known before the app starts: the provider's registered callback names it
    base = f"http://127.0.0.1:{port}"
    with (
        smtp_server(root, "starttls") as inbox,
        running_provider(f"{base}/v1/auth/oauth/corp/callback") as provider,
        receiver("127.0.0.3") as hooks,
    ):
        provider.add(
            "ada", Account(password="ada's password", sub="sub-ada", email="ada@corp.example", name="Ada")
        )
        corp = IdentityProvider(id="corp", kind="oidc", client_id=provider.client.client_id,
                                client_secret=provider.client.client_secret, display_name="Corp SSO",
                                discovery_url=provider.discovery_url)  # fmt: skip
        mail = inbox.settings() | {"public_url": base}
        settings = Settings(database_url=f"sqlite+aiosqlite:///{root / 'wrenn.db'}", data_dir=root,
                            monitor_interval_s=3600, identity_providers=(corp,),
                            idp_allow_networks=("127.0.0.2/32",), webhook_allow_networks=("127.0.0.3/32",),
                            **mail)  # type: ignore[arg-type]  # fmt: skip
        with serving_asgi(create_app(settings), port=port):
            bootstrap_admin(httpx.post, root, ADMIN[0], ADMIN[1], base=base)
            yield Site(base, inbox, provider, hooks)


@pytest.fixture
def visitor(browser: Any) -> Iterator[User]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    page = context.new_page()
    user = User(context, page, "")
    _watch(page, user.errors)
    yield user
    context.close()


def _sign_in(page: Any, site: Site, email: str, password: str) -> None:
    page.goto(f"{site.base}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/capsules")


def test_forgot_and_reset_a_password(site: Site, visitor: User) -> None:
    httpx.post(f"{site.base}/v1/auth/signup", json={"email": "bob@example.com", "password": "old password"})
    page = visitor.page
    before = len(site.inbox.received)
    page.goto(f"{site.base}/login")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url("**/forgot-password")
    page.fill("#email", "bob@example.com")
    page.get_by_role("button", name="Send me a link").click()
    page.get_by_test_id("reset-sent").wait_for()
    assert axe(page) == []
    mail = site.inbox.wait(before + 1)[before]
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None
    link = re.search(r"(http://127\.0\.0\.1:\d+/reset-password\?token=[0-9a-f]{64})", text.get_content())
    assert link is not None
    page.goto(link.group(1))
    page.fill("#password", "new password!")
    page.get_by_role("button", name="Set the password").click()
    page.wait_for_url("**/login?notice=*")
    page.get_by_text("Your password is changed").wait_for()
    page.fill("#email", "bob@example.com")
    page.fill("#password", "new password!")
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/capsules")
    assert_clean(visitor)


def test_sign_in_with_a_provider_then_settings(site: Site, visitor: User) -> None:
    page = visitor.page
    page.goto(f"{site.base}/login")
    page.get_by_role("link", name="Continue with Corp SSO").click()
    page.wait_for_url(f"{site.provider.issuer}/authorize*")  # the provider's own sign-in page
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada's password")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dashboard/capsules")

    page.get_by_role("link", name="Settings").first.click()
    page.wait_for_url("**/dashboard/settings")
    providers = page.get_by_test_id("linked-providers")
    providers.locator("[data-provider=corp]").get_by_text("linked").wait_for()
    page.get_by_role("heading", name="Set a password").wait_for()  # a provider-made account has none yet
    page.fill("#fresh", "a first password")
    page.get_by_role("button", name="Set password").click()
    page.get_by_role("heading", name="Password", exact=True).wait_for()
    page.fill("#name", "Ada Lovelace")
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Name saved.").wait_for()
    providers.get_by_role("button", name="Unlink").click()
    providers.get_by_role("button", name="Link").wait_for()
    assert httpx.post(f"{site.base}/v1/auth/login",
                      json={"email": "ada@corp.example", "password": "a first password"}).status_code == 200  # fmt: skip

    page.get_by_role("button", name="Delete my account").click()
    page.fill("#confirm-email", "ada@corp.example")
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.wait_for_url("**/login?notice=*")
    gone = httpx.post(
        f"{site.base}/v1/auth/login", json={"email": "ada@corp.example", "password": "a first password"}
    )
    assert gone.status_code == 403
    assert_clean(visitor)


def test_admin_pages(site: Site, visitor: User) -> None:
    httpx.post(
        f"{site.base}/v1/auth/signup", json={"email": "carol@example.com", "password": "correct horse"}
    )
    page = visitor.page
    _sign_in(page, site, *ADMIN)
    page.get_by_role("link", name="Users").click()
    page.wait_for_url("**/admin/users")
    row = page.locator("[data-testid=user-list] [data-user='carol@example.com']")
    row.get_by_role("button", name="Disable carol@example.com").click()
    row.get_by_test_id("status").get_by_text("disabled").wait_for()
    assert httpx.post(f"{site.base}/v1/auth/login",
                      json={"email": "carol@example.com", "password": "correct horse"}).status_code == 403  # fmt: skip
    row.get_by_role("button", name="Enable carol@example.com").click()
    row.get_by_test_id("status").get_by_text("active").wait_for()

    page.get_by_role("link", name="All teams").click()
    page.locator('[data-testid=team-list] [data-team="carol\'s team"]').wait_for()
    page.get_by_role("link", name="All capsules").click()
    page.get_by_text("No capsule runs on the platform.").wait_for()
    page.get_by_role("link", name="Platform log").click()
    page.locator("[data-testid=platform-audit] [data-action=disable]").first.wait_for()
    for path in (
        "/admin/users",
        "/admin/teams",
        "/admin/capsules",
        "/admin/templates",
        "/admin/audit",
        "/dashboard/settings",
    ):
        page.goto(site.base + path)
        page.wait_for_timeout(300)
        page.locator("[aria-busy=true]").first.wait_for(state="detached")
        assert axe(page) == [], path
    assert_clean(visitor)


def test_channels_page(site: Site, visitor: User) -> None:
    """A webhook channel made, its secret shown once, tested (the receiver gets a signed `channel.test`,
    the delivery log shows it), its events edited, its config rotated (a new secret), deleted."""
    shots = os.environ.get("WRENN_SCREENSHOT_DIR")
    httpx.post(f"{site.base}/v1/auth/signup", json={"email": "dora@example.com", "password": "correct horse"})
    page = visitor.page
    _sign_in(page, site, "dora@example.com", "correct horse")
    page.get_by_role("link", name="Channels").click()
    page.wait_for_url("**/dashboard/channels")
    page.get_by_text("No channels yet.").wait_for()
    page.get_by_role("button", name="New channel").click()
    dialog = page.get_by_role("dialog", name="New channel")
    dialog.get_by_label("Name", exact=True).fill("ops-hook")
    kinds = dialog.get_by_label("Kind").locator("option").all_inner_texts()
    assert "webhook" in kinds and "slack" in kinds  # every kind the OpenAPI document lists
    dialog.get_by_label("Field 1 value (url)").fill(site.hooks.url)
    dialog.get_by_label("capsule.created").check()
    dialog.get_by_label("host.down").check()
    dialog.get_by_role("button", name="Create").click()
    secret = page.get_by_test_id("channel-secret").inner_text().strip()
    assert secret.startswith("whsec_")
    page.get_by_role("button", name="Done").click()
    row = page.locator('[data-testid=channel-list] [data-channel="ops-hook"]')
    assert "capsule.created, host.down" in row.inner_text()
    assert secret not in page.content()  # shown once

    row.get_by_role("button", name="Test ops-hook").click()
    got = site.hooks.wait(lambda r: any(x.headers.get("x-wrenn-event") == "channel.test" for x in r))
    assert got[-1].verified(secret)
    page.locator("[data-testid=delivery-list] [data-status=delivered]").first.wait_for()

    row.get_by_role("button", name="Edit ops-hook").click()
    dialog = page.get_by_role("dialog", name="Edit ops-hook")
    dialog.get_by_label("host.down").uncheck()
    dialog.get_by_role("button", name="Save").click()
    row.get_by_text("capsule.created").wait_for()
    page.wait_for_function(
        "() => !document.querySelector('[data-channel=ops-hook]')?.textContent.includes('host.down')"
    )
    if shots:
        for theme in ("light", "dark"):
            page.evaluate(f"localStorage.setItem('wrenn.theme', '{theme}')")
            page.reload()
            page.get_by_role("button", name="Deliveries of ops-hook").click()
            page.locator("[data-testid=delivery-list] [data-delivery]").first.wait_for()
            page.screenshot(path=os.path.join(shots, f"channels-{theme}.png"))
        page.evaluate("localStorage.removeItem('wrenn.theme')")
    for theme in ("light", "dark"):
        page.evaluate(f"localStorage.setItem('wrenn.theme', '{theme}')")
        for path in ("/dashboard/channels", "/dashboard/usage", "/dashboard/builds"):
            page.goto(site.base + path)
            page.wait_for_timeout(300)
            page.locator("[aria-busy=true]").first.wait_for(state="detached")
            if path.endswith("channels"):
                page.get_by_role("button", name="Deliveries of ops-hook").click()
                page.locator("[data-testid=delivery-list] [data-delivery]").first.wait_for()
            assert axe(page) == [], (path, theme)
    page.evaluate("localStorage.removeItem('wrenn.theme')")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing overflows sideways
    page.goto(f"{site.base}/dashboard/channels")
    page.get_by_role("button", name="Deliveries of ops-hook").click()
    page.locator("[data-testid=delivery-list] [data-delivery]").first.wait_for()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 391
    page.set_viewport_size({"width": 1280, "height": 800})

    page.goto(f"{site.base}/dashboard/channels")
    row.get_by_role("button", name="New config for ops-hook").click()
    dialog = page.get_by_role("dialog", name="New config for ops-hook")
    dialog.get_by_label("Field 1 value (url)").fill(site.hooks.url)
    dialog.get_by_role("button", name="Replace").click()
    rotated = page.get_by_test_id("channel-secret").inner_text().strip()
    assert rotated.startswith("whsec_") and rotated != secret
    page.get_by_role("button", name="Done").click()
    row.get_by_role("button", name="Test ops-hook").click()
    got = site.hooks.wait(
        lambda r: len([x for x in r if x.headers.get("x-wrenn-event") == "channel.test"]) >= 2
    )
    assert got[-1].verified(rotated) and not got[-1].verified(secret)

    row.get_by_role("button", name="Delete ops-hook").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.get_by_text("No channels yet.").wait_for()
    assert_clean(visitor)
