"""A user's way through the dashboard, in a real browser over a real platform: sign up, start a capsule,
its terminal, files and metrics, pause and resume, a template and a capsule from it, API keys; and what
others must not see. The tests run in order and share one account and as few VMs as honest (the first
capsule, then one started from its template)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.dashboard.conftest import ADMIN, Platform, User, assert_clean, axe

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

BOOT_S = 180  # a cold boot under TCG, on a shared machine
SHOTS = os.environ.get("WRENN_SCREENSHOT_DIR")  # scripts/dashboard-screenshots sets it


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What the tests of this module hand on to each other (the account, the capsules)."""
    return {}


@pytest.fixture(scope="module")
def alice(new_user: Any) -> User:
    return new_user(f"alice-{os.getpid()}@example.com")


def _status(page: Any, capsule_id: str, status: str, timeout_s: float = BOOT_S) -> None:
    page.locator(f'[data-capsule="{capsule_id}"] [data-status="{status}"]').wait_for(timeout=timeout_s * 1000)


def _open_capsule(user: User, base: str, capsule_id: str, tab: str) -> Any:
    page = user.page
    page.goto(f"{base}/dashboard/capsules/{capsule_id}?tab={tab}")
    page.get_by_role("tab", name=tab.capitalize(), selected=True).wait_for()
    return page


def _terminal_lines(page: Any) -> list[str]:
    return [line.strip() for line in page.locator(".xterm-rows").inner_text().splitlines()]


def _chart_has_points(page: Any) -> None:
    """Wait until the CPU chart draws at least one point (the agent samples every few seconds)."""
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=chart-cpu]')?.dataset.points) > 0", timeout=90_000
    )


def _type_in_terminal(page: Any, text: str) -> None:
    page.locator("[data-testid=terminal]").click()
    page.keyboard.type(text)


def test_sign_up_and_create_capsule(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    page = alice.page
    page.get_by_role("button", name="New capsule").click()
    dialog = page.get_by_role("dialog", name="New capsule")
    dialog.get_by_label("Template").select_option("minimal")
    dialog.get_by_label("Memory (MiB)").fill("512")
    dialog.get_by_role("button", name="Create").click()
    row = page.locator("[data-capsule]").first
    row.wait_for()  # listed while it starts: the list updates without a reload
    capsule_id = row.get_attribute("data-capsule")
    _status(page, capsule_id, "running")
    state["capsule"] = capsule_id
    assert_clean(alice)


def test_terminal_runs_a_command_and_reconnects(
    platform: Platform, alice: User, state: dict[str, Any]
) -> None:
    page = _open_capsule(alice, platform.base_url, state["capsule"], "terminal")
    page.locator("[data-terminal-state=open]").wait_for(timeout=60_000)
    _type_in_terminal(page, "echo hi\n")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.xterm-rows > div')].some(r => r.textContent.trim() === 'hi')"
    )
    # A reload reconnects to the same shell (its tag is kept for the tab): a variable set before survives.
    _type_in_terminal(page, "export WRENN_MARK=still-$((6*7))\n")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.xterm-rows > div')].some(r => r.textContent.includes('WRENN_MARK'))"
    )
    page.reload()
    page.locator("[data-terminal-state=open]").wait_for(timeout=60_000)
    _type_in_terminal(page, "echo $WRENN_MARK\n")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.xterm-rows > div')].some(r => r.textContent.trim() === 'still-42')"
    )
    assert_clean(alice)


def test_files_upload_list_download(
    platform: Platform, alice: User, state: dict[str, Any], tmp_path: Path
) -> None:
    page = _open_capsule(alice, platform.base_url, state["capsule"], "files")
    page.locator("[data-testid=file-list], [data-testid=files] p").first.wait_for()
    # The upload button's file chooser ...
    local = tmp_path / "hello.txt"
    local.write_bytes(b"hello from the browser\n" * 1000)
    page.locator("[data-testid=upload-input]").set_input_files(str(local))
    page.locator('[data-file="hello.txt"]').wait_for()
    # ... and a drop on the list.
    page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(['dropped\\n'], 'dropped.txt', {type: 'text/plain'}));
            const zone = document.querySelector('[data-testid=files]');
            zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
        }"""
    )
    page.locator('[data-file="dropped.txt"]').wait_for()
    # Download: the browser streams it to disk from a same-origin navigation.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download hello.txt").click()
    saved = tmp_path / "saved.txt"
    download.value.save_as(saved)
    assert saved.read_bytes() == local.read_bytes()
    # Preview, new folder, rename, delete.
    page.get_by_role("button", name="dropped.txt", exact=True).click()
    assert page.locator("[data-testid=file-preview]").inner_text().strip() == "dropped"
    page.keyboard.press("Escape")
    page.get_by_role("button", name="New folder").click()
    page.get_by_label("Name", exact=True).fill("made-here")
    page.get_by_role("button", name="Create").click()
    page.locator('[data-file="made-here"]').wait_for()
    page.get_by_role("button", name="Rename dropped.txt").click()
    page.get_by_label("New name", exact=True).fill("renamed.txt")
    page.get_by_role("button", name="Rename", exact=True).click()
    page.locator('[data-file="renamed.txt"]').wait_for()
    page.get_by_role("button", name="Delete renamed.txt").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.locator('[data-file="renamed.txt"]').wait_for(state="detached")
    assert_clean(alice)


def test_metrics_chart_has_points(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    page = _open_capsule(alice, platform.base_url, state["capsule"], "metrics")
    _chart_has_points(page)
    assert page.locator("[data-testid=chart-memory] canvas").count() == 1
    assert_clean(alice)


def test_processes_lists_the_terminal(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    page = _open_capsule(alice, platform.base_url, state["capsule"], "processes")
    page.locator("[data-testid=process-list] [data-pid]").first.wait_for()
    assert_clean(alice)


def test_pause_and_resume(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    page = alice.page
    page.goto(f"{platform.base_url}/dashboard/capsules")
    capsule_id = state["capsule"]
    row = page.locator(f'[data-capsule="{capsule_id}"]')
    row.get_by_role("button", name="Pause").click()
    _status(page, capsule_id, "paused")
    row.get_by_role("button", name="Resume").click()
    _status(page, capsule_id, "running")
    assert_clean(alice)


def test_snapshot_to_template_and_start_from_it(
    platform: Platform, alice: User, state: dict[str, Any]
) -> None:
    page = alice.page
    capsule_id = state["capsule"]
    page.goto(f"{platform.base_url}/dashboard/capsules/{capsule_id}?tab=connect")
    page.get_by_role("button", name="Snapshot").click()
    page.get_by_label("Template name", exact=True).fill("from-the-browser")
    page.get_by_role("button", name="Create template").click()
    page.get_by_text("Template from-the-browser created.").wait_for(timeout=BOOT_S * 1000)
    page.goto(f"{platform.base_url}/dashboard/templates")
    template = page.locator('[data-template="from-the-browser"]')
    template.get_by_role("button", name="Launch").click()
    dialog = page.get_by_role("dialog", name="New capsule")
    assert dialog.get_by_label("Template").input_value() == "from-the-browser"
    dialog.get_by_text("Egress policy").click()  # set at create: the next test reads it back
    dialog.get_by_label("Allow out", exact=True).fill("pypi.org\n*.pythonhosted.org")
    dialog.get_by_label('Internet access (off: only what "Allow out" names)').uncheck()
    dialog.get_by_role("button", name="Create").click()
    page.get_by_text(re.compile(r"Capsule cl-\S+ is running\.")).wait_for(timeout=BOOT_S * 1000)
    page.goto(f"{platform.base_url}/dashboard/capsules")
    second = page.locator("[data-capsule]").filter(has_text="from-the-browser").first
    second.locator('[data-status="running"]').wait_for()
    state["second"] = second.get_attribute("data-capsule")
    assert state["second"] != capsule_id
    assert_clean(alice)


def test_network_policy_set_at_create_and_changed_live(
    platform: Platform, alice: User, state: dict[str, Any]
) -> None:
    """The policy given at create is the capsule's; changed on its Network tab, it is saved (the capsule
    runs on) and read back after a reload."""
    page = _open_capsule(alice, platform.base_url, state["second"], "network")
    form = page.get_by_test_id("network-form")
    assert form.get_by_label("Allow out", exact=True).input_value() == "pypi.org\n*.pythonhosted.org"
    internet = form.get_by_label("Internet access")
    assert not internet.is_checked()
    form.get_by_label("Deny out").fill("203.0.113.0/24")
    internet.check()
    form.get_by_label("Bandwidth (kbit/s, 0: unlimited)").fill("20000")
    form.get_by_role("button", name="Save policy").click()
    page.get_by_text("Egress policy saved.").wait_for()
    page.reload()
    form.get_by_label("Deny out").wait_for()
    assert form.get_by_label("Deny out").input_value() == "203.0.113.0/24"
    assert form.get_by_label("Internet access").is_checked()
    assert form.get_by_label("Bandwidth (kbit/s, 0: unlimited)").input_value() == "20000"
    page.locator('[data-status="running"]').first.wait_for()  # changed live: it ran on, no restart
    assert_clean(alice)


def test_header_rules_added_replaced_and_removed(
    platform: Platform, alice: User, state: dict[str, Any]
) -> None:
    """Header-injection rules on the Network tab: added (the value never shown back), refused with the
    API's reason, replaced keeping a value left empty, removed; on the running capsule."""
    secret = "Bearer sk-from-the-browser"
    page = _open_capsule(alice, platform.base_url, state["second"], "network")
    rules = page.get_by_test_id("header-rules")
    rules.get_by_role("button", name="Add headers").click()
    dialog = page.get_by_role("dialog", name="Add headers")
    dialog.get_by_label("Domain").fill("api.example.com")
    dialog.get_by_label("Header value 1").fill(secret)
    dialog.get_by_role("button", name="Save headers").click()
    row = page.locator('[data-testid=rule-list] [data-rule="api.example.com"]')
    row.get_by_text("Authorization").wait_for()
    # A framing header is refused by the API, which says why in the dialog (nothing saved).
    rules.get_by_role("button", name="Add headers").click()
    dialog.get_by_label("Domain").fill("files.example.com")
    dialog.get_by_label("Header name 1").fill("Host")
    dialog.get_by_label("Header value 1").fill("x")
    dialog.get_by_role("button", name="Save headers").click()
    assert "Host" in dialog.get_by_test_id("rule-error").inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    # Replaced: a header added, the stored value kept (left empty).
    row.get_by_role("button", name="Replace the headers of api.example.com").click()
    dialog = page.get_by_role("dialog", name="Headers of api.example.com")
    assert dialog.get_by_label("Header value 1").input_value() == ""
    dialog.get_by_role("button", name="Add a header").click()
    dialog.get_by_label("Header name 2").fill("X-Team")
    dialog.get_by_label("Header value 2").fill("t1")
    dialog.get_by_role("button", name="Save headers").click()
    row.get_by_text("Authorization, X-Team").wait_for()
    page.reload()
    row.get_by_text("Authorization, X-Team").wait_for()
    assert secret not in page.content()
    view = page.evaluate(
        "id => fetch(`/v1/capsules/${id}/network`, {headers: {'X-Wrenn-Dashboard': '1'}}).then(r => r.json())",
        state["second"],
    )
    assert view["rules"] == {"api.example.com": ["Authorization", "X-Team"]}
    assert view["secrets_loaded"] is True  # the running capsule's agent holds them
    row.get_by_role("button", name="Remove the headers of api.example.com").click()
    page.get_by_role("dialog", name="Remove the headers of api.example.com?").get_by_role(
        "button", name="Remove"
    ).click()
    page.get_by_text("No headers injected.").wait_for()
    assert_clean(alice, allow="400")


def test_console_logs_tab(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    page = _open_capsule(alice, platform.base_url, state["capsule"], "logs")
    page.wait_for_function(
        "() => (document.querySelector('[data-testid=console-log]')?.textContent ?? '').split('\\n').length > 3"
    )
    assert_clean(alice)


def test_template_build_with_live_log(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    """A recipe built from the Builds page: its log is followed while it builds, it ends ready, and the
    built template is listed."""
    page = alice.page
    page.goto(f"{platform.base_url}/dashboard/builds")
    page.get_by_text("No builds yet.").wait_for()
    page.get_by_role("button", name="New build").click()
    dialog = page.get_by_role("dialog", name="New build")
    dialog.get_by_label("Template name").fill("built-in-browser")
    dialog.get_by_label("Recipe").fill("RUN echo made-by-the-recipe > /tmp/made.txt\nRUN cat /tmp/made.txt")
    dialog.get_by_role("button", name="Build").click()
    log = page.get_by_test_id("build-log")
    log.wait_for()
    row = page.locator('[data-testid=build-list] [data-name="built-in-browser"]')
    row.locator('[data-status="ready"]').wait_for(timeout=BOOT_S * 2 * 1000)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=build-log]')?.textContent.includes('made-by-the-recipe')"
    )
    built = page.locator('[data-testid=built-templates] [data-built="built-in-browser"]')
    built.get_by_role("button", name="Launch a capsule from built-in-browser").click()
    dialog = page.get_by_role("dialog", name="New capsule")
    assert dialog.get_by_label("Template").input_value() == "built-in-browser"
    dialog.get_by_role("button", name="Cancel").click()  # not started here: one more VM boot
    assert_clean(alice)


def test_usage_page_shows_the_running_capsules(platform: Platform, alice: User) -> None:
    """The capsule started from the template runs (its source was snapshotted): counted, and charted."""
    page = alice.page
    page.goto(f"{platform.base_url}/dashboard/usage")
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=running-now]')?.textContent) >= 1", timeout=30_000
    )
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=chart-capsules]')?.dataset.points) > 0"
    )
    assert_clean(alice)


def test_api_key_created_shown_once_and_revoked(platform: Platform, alice: User) -> None:
    page = alice.page
    page.goto(f"{platform.base_url}/dashboard/keys")
    page.get_by_role("button", name="New API key").click()
    page.get_by_label("Name", exact=True).fill("from-the-browser")
    page.get_by_role("button", name="Create").click()
    key = page.locator("[data-testid=new-key]").inner_text().strip()
    assert key.startswith("wrn_")
    assert httpx.get(f"{platform.base_url}/v1/capsules", headers={"X-API-Key": key}).status_code == 200
    page.get_by_role("button", name="Done").click()
    row = page.locator('[data-key="from-the-browser"]')
    assert key not in row.inner_text()  # the list shows its prefix only
    row.get_by_role("button", name="Revoke from-the-browser").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    row.wait_for(state="detached")
    assert httpx.get(f"{platform.base_url}/v1/capsules", headers={"X-API-Key": key}).status_code == 401
    assert_clean(alice)


def test_byoc_host_registration_token_and_delete(platform: Platform, alice: User) -> None:
    """The team's owner adds a BYOC host (its one-time token shown once) and deletes it again."""
    page = alice.page
    page.goto(f"{platform.base_url}/dashboard/hosts")
    page.get_by_role("button", name="New BYOC host").click()
    token = page.locator("[data-testid=registration-token]").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    page.get_by_role("button", name="Done").click()
    row = page.locator("[data-testid=host-list] [data-host]").first
    row.locator('[data-status="pending"]').wait_for()
    host_id = row.get_attribute("data-host")
    row.get_by_role("button", name=f"Delete host {host_id}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete host").click()
    row.wait_for(state="detached")
    assert_clean(alice)


def test_another_team_sees_none_of_these_capsules(
    platform: Platform, new_user: Any, state: dict[str, Any]
) -> None:
    bob = new_user(f"bob-{os.getpid()}@example.com")
    page = bob.page
    page.get_by_text("No capsules yet.").wait_for()
    assert page.locator("[data-capsule]").count() == 0
    page.goto(f"{platform.base_url}/dashboard/capsules/{state['capsule']}")
    page.get_by_role("heading", name="Capsule not found").wait_for()
    assert_clean(bob, allow="status of 404")  # the API's answer for another team's capsule
    page.goto(f"{platform.base_url}/dashboard/templates")
    page.get_by_role("heading", name="Platform images").wait_for()
    assert page.locator('[data-template="from-the-browser"]').count() == 0
    assert_clean(bob)


def test_admin_pages_are_for_admins(platform: Platform, alice: User, new_user: Any) -> None:
    page = alice.page
    assert page.get_by_role("link", name="All hosts").count() == 0
    page.goto(f"{platform.base_url}/admin/hosts")
    page.wait_for_url("**/dashboard/capsules")
    assert page.get_by_role("heading", name="All hosts").count() == 0
    page.get_by_text("That page is for platform admins.").wait_for()
    admin = new_user(ADMIN[0], signup=False, password=ADMIN[1])
    admin.page.get_by_role("link", name="All hosts").click()
    admin.page.get_by_role("heading", name="All hosts").wait_for()
    admin.page.locator("[data-testid=host-list] [data-host]").first.wait_for()  # the local agent
    # Every team's templates and builds: alice's snapshot and her build, whose log the admin reads.
    admin.page.get_by_role("link", name="All templates").click()
    admin.page.locator('[data-testid=admin-template-list] [data-template="from-the-browser"]').wait_for()
    build = admin.page.locator('[data-testid=admin-build-list] [data-name="built-in-browser"]')
    build.get_by_role("button", name="Log of built-in-browser", exact=False).click()
    admin.page.wait_for_function(
        "() => document.querySelector('[data-testid=build-log]')?.textContent.includes('made-by-the-recipe')"
    )
    assert axe(admin.page) == []
    assert_clean(alice)
    assert_clean(admin)


def test_admin_starts_a_platform_build_with_an_archive(platform: Platform, new_user: Any) -> None:
    """A platform admin's build from the admin page, its COPY files uploaded as a tar with the form: the
    log, followed live, shows a file of the archive read in the build; then it is cancelled or done."""
    admin = new_user(ADMIN[0], signup=False, password=ADMIN[1])
    page = admin.page
    page.goto(f"{platform.base_url}/admin/templates")
    page.get_by_role("button", name="New platform build").click()
    dialog = page.get_by_role("dialog", name="New platform build")
    dialog.get_by_label("Template name").fill("platform-from-browser")
    dialog.get_by_label("Recipe").fill("COPY greeting.txt /tmp/greeting.txt\nRUN cat /tmp/greeting.txt")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"copied-from-the-archive\n"
        info = tarfile.TarInfo("greeting.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    files = {"name": "files.tar.gz", "mimeType": "application/gzip", "buffer": archive.getvalue()}
    dialog.get_by_label("Files for COPY (optional)").set_input_files(files)
    dialog.get_by_role("button", name="Build").click()
    row = page.locator('[data-testid=admin-build-list] [data-name="platform-from-browser"]')
    row.wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=build-log]')?.textContent.includes('copied-from-the-archive')",
        timeout=BOOT_S * 1000,
    )
    with contextlib.suppress(PlaywrightTimeout):  # cancelled while it runs (or done already: ready)
        row.get_by_role("button", name="Cancel build", exact=False).click(timeout=2000)
    row.locator('[data-status="cancelled"], [data-status="ready"]').wait_for(timeout=BOOT_S * 1000)
    assert axe(page) == []
    assert_clean(admin)


MAIN_PAGES = ["/dashboard/capsules", "/dashboard/templates", "/dashboard/builds", "/dashboard/usage",
              "/dashboard/keys", "/dashboard/team", "/dashboard/audit", "/dashboard/hosts"]  # fmt: skip


def _pages(state: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, path) of the main pages, with the running capsule's tabs."""
    capsule = state["second"]
    pages = [(p.rsplit("/", 1)[1], p) for p in MAIN_PAGES]
    tabs = [
        (f"capsule-{t}", f"/dashboard/capsules/{capsule}?tab={t}")
        for t in ("terminal", "files", "metrics", "logs", "network")
    ]
    return [*pages, *tabs]


def _visit(
    platform: Platform, page: Any, state: dict[str, Any], themes: tuple[str, ...] = ("",)
) -> Iterator[tuple[str, str]]:
    """Open each main page (in each theme; "": the system's), loaded, and yield (its name, the theme)."""
    try:
        for theme in themes:
            if theme:
                page.evaluate(f"localStorage.setItem('wrenn.theme', '{theme}')")
            for name, path in _pages(state):
                page.goto(platform.base_url + path)
                _settle(page)
                yield name, theme
    finally:
        page.evaluate("localStorage.removeItem('wrenn.theme')")


def _settle(page: Any) -> None:
    """Wait until the page has loaded its data (nothing says "Loading…" any more)."""
    page.wait_for_timeout(300)
    page.locator("[aria-busy=true]").first.wait_for(state="detached")


def test_accessibility_light_and_dark(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    """axe-core finds nothing serious on the main pages, in either theme (and on the sign-in page)."""
    found: dict[str, Any] = {}
    for name, theme in _visit(platform, alice.page, state, ("light", "dark")):
        if violations := axe(alice.page):
            found[f"{name} ({theme})"] = violations
    assert found == {}
    assert_clean(alice)


def test_sign_in_page_accessible(platform: Platform, browser: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{platform.base_url}/login")
        page.get_by_role("heading", name="Sign in").wait_for()
        assert axe(page) == []
    finally:
        context.close()


def test_usable_at_phone_width(platform: Platform, alice: User, state: dict[str, Any]) -> None:
    """At 390 px nothing overflows the page sideways (wide tables scroll inside their card)."""
    page = alice.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        wide = {}
        for name, _ in _visit(platform, page, state):
            width = page.evaluate("() => document.documentElement.scrollWidth")
            if width > 391:
                wide[name] = width
        assert wide == {}
        page.get_by_role("button", name="Menu").click()
        page.get_by_role("link", name="API keys").click()
        page.get_by_role("heading", name="API keys").wait_for()
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})
    assert_clean(alice)


def test_keyboard_only(platform: Platform, alice: User) -> None:
    """Shortcuts and Tab order reach the actions: g k opens the keys, Tab reaches "New API key", Enter
    opens its dialog, the form submits with Enter and Escape closes a dialog."""
    page = alice.page
    page.goto(f"{platform.base_url}/dashboard/capsules")
    page.get_by_role("heading", name="Capsules").wait_for()
    page.keyboard.press("n")
    page.get_by_role("dialog", name="New capsule").wait_for()
    page.keyboard.press("Escape")
    page.get_by_role("dialog", name="New capsule").wait_for(state="hidden")
    page.keyboard.press("g")
    page.keyboard.press("k")
    page.wait_for_url("**/dashboard/keys")
    page.get_by_role("heading", name="API keys").wait_for()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement?.textContent?.trim()") == "New API key":
            break
    else:
        pytest.fail("Tab never reached the New API key button")
    page.keyboard.press("Enter")
    page.keyboard.type("typed-only")  # the dialog focuses its first field
    page.keyboard.press("Enter")
    page.locator("[data-testid=new-key]").wait_for()
    page.keyboard.press("Escape")
    page.locator('[data-key="typed-only"]').wait_for()
    assert_clean(alice)


def test_screenshots(platform: Platform, alice: User, state: dict[str, Any], tmp_path: Path) -> None:
    """The main pages in light and dark at 1280x800, into $WRENN_SCREENSHOT_DIR (docs/dashboard/ by
    scripts/dashboard-screenshots) or a temporary directory."""
    out = Path(SHOTS) if SHOTS else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    page = alice.page
    for name, theme in _visit(platform, page, state, ("light", "dark")):
        if name == "capsule-terminal":
            page.locator("[data-terminal-state=open]").wait_for(timeout=60_000)
            _type_in_terminal(page, "clear; uname -sr; python3 -c 'print(6*7)'\n")
            page.wait_for_timeout(1500)
        if name == "capsule-metrics":
            _chart_has_points(page)
        page.screenshot(path=str(out / f"{name}-{theme}.png"))
    page.context.clear_cookies()
    page.goto(f"{platform.base_url}/login")
    page.get_by_role("heading", name="Sign in").wait_for()
    page.screenshot(path=str(out / "login-light.png"))
    assert len(list(out.glob("*.png"))) >= 2 * len(_pages(state)) + 1
    assert_clean(alice)


def test_cleanup_destroys_capsules(platform: Platform, new_user: Any, state: dict[str, Any]) -> None:
    """Destroy from the capsule's page (and what the screenshots signed out of: sign in again)."""
    user = new_user(f"alice-{os.getpid()}@example.com", signup=False)
    page = user.page
    for capsule_id in (state.get("second"), state.get("capsule")):
        if not capsule_id:
            continue
        page.goto(f"{platform.base_url}/dashboard/capsules/{capsule_id}?tab=connect")
        page.get_by_role("button", name=f"Destroy {capsule_id}").click()
        page.get_by_role("dialog").get_by_role("button", name="Destroy").click()
        page.wait_for_url("**/dashboard/capsules")
    deadline = time.monotonic() + 30
    while page.locator("[data-capsule]").count() and time.monotonic() < deadline:
        page.wait_for_timeout(500)
    assert page.locator("[data-capsule]").count() == 0
    assert_clean(user)
