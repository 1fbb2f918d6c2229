"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright (which never
downloads a browser of its own here), against the platform as a user meets it: a control plane process
over a real host agent that boots real VMs. One platform for the tests of this folder (package-scoped:
it is gone before other folders' tests start their own agents)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.agent._agent import running_agent
from tests.conftest import _control_plane
from wrenn.controlplane import _site

CHROMIUM = os.environ.get("WRENN_CHROMIUM", "/usr/bin/chromium")
#: As root, in a machine without a network beyond loopback: no sandbox, nothing in the background.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
AXE = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"
ADMIN = ("sdk@example.com", "correct horse")  # `_control_plane` bootstraps it: the platform's admin
PASSWORD = "a long passphrase"


@dataclass
class Platform:
    base_url: str
    root: Path
    api_key: str

    @property
    def database(self) -> Path:
        return self.root / "wrenn.db"


@pytest.fixture(scope="package")
def platform(image: object) -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("the host agent needs root")
    if not (_site.ASSETS / "index.html").is_file():
        pytest.fail("the dashboard is not built: run scripts/bootstrap")
    root = Path(tempfile.mkdtemp(prefix="wrenn-dash-"))
    try:
        with running_agent(f"db{os.getpid() % 1000:03d}x") as agent:
            for base, key in _control_plane(agent.url, agent.token_file, root):
                yield Platform(base, root, key)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: scripts/bootstrap installs Debian's chromium")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class User:
    """A browser context (its own cookies) for one account, and the console errors its pages logged."""

    context: Any
    page: Any
    email: str
    errors: list[str] = field(default_factory=list)

    def goto(self, base_url: str, path: str) -> None:
        self.page.goto(base_url + path)


def _watch(page: Any, errors: list[str]) -> None:
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))


@pytest.fixture(scope="package")
def new_user(browser: Any, platform: Platform) -> Iterator[Callable[..., User]]:
    """`new_user(email, signup=True, **context options)`: a fresh browser context signed in through the
    pages (sign-up, or sign-in of an existing account). Every page's console errors are collected; each
    test checks its own with `assert_clean`."""
    made: list[User] = []

    def make(email: str, *, signup: bool = True, password: str = PASSWORD, **options: Any) -> User:
        context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
        context.set_default_timeout(30_000)
        page = context.new_page()
        user = User(context, page, email)
        _watch(page, user.errors)
        page.goto(f"{platform.base_url}/{'signup' if signup else 'login'}")
        page.fill("#email", email)
        page.fill("#password", password)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/capsules")
        made.append(user)
        return user

    yield make
    for user in made:
        user.context.close()


def assert_clean(user: User, allow: str | None = None) -> None:
    """No console errors and no uncaught exceptions on the user's pages so far (but those containing
    `allow`: Chromium logs every 4xx answer, an expected 404 too)."""
    errors, user.errors[:] = [e for e in user.errors if not (allow and allow in e)], []
    assert errors == [], errors


def axe(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(
            AXE.read_text()
        )  # evaluated over the DevTools protocol: the page's CSP allows no inline script
    result = page.evaluate("async () => await window.axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
