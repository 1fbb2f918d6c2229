"""The dashboard's capsule list with 50 capsules in the database (40 paused, hibernated or pending, 10
stopped): how long from navigating to /dashboard/capsules until all 40 listed rows are on screen.

    .venv/bin/python bench/dashboard_bench.py              # 10 cold and 10 warm loads
    .venv/bin/python bench/dashboard_bench.py --runs 30

It starts a control plane (`python -m wrenn.controlplane`, SQLite in a temporary directory, no host agent:
the rows are written straight into its database, as tests/dashboard/test_list_load.py does) on a free
loopback port, and Debian's Chromium headless through Playwright. *cold*: a new browser context each
time (empty cache, signed in without loading a page); *warm*: the same page navigating again (scripts
cached, as a user moving between pages). The goal is under 1 s on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _common import REPO, Series, free_port, now, series_table, write_results

sys.path.insert(0, str(REPO))
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.dashboard.test_list_load import ROWS, insert_capsules

EMAIL, PASSWORD = "bench@example.com", "a long passphrase"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    started = now()
    root = Path(tempfile.mkdtemp(prefix="wrenn-dash-bench-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "wrenn.controlplane", "--port", str(port), "--data-dir", str(root)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        account = httpx.post(f"{base}/v1/auth/signup", json={"email": EMAIL, "password": PASSWORD}).json()

        class Where:
            database = root / "wrenn.db"

        listed = len(insert_capsules(Where, account["team_id"]))  # type: ignore[arg-type]
        cold, warm = Series("cold (new context, empty cache)"), Series("warm (navigate again)")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

            def signed_in() -> tuple[object, object]:
                """A new context (empty cache) holding a session cookie, as after signing in."""
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.request.post(  # shares the context's cookies, loads no page
                    f"{base}/v1/dashboard/session", data={"email": EMAIL, "password": PASSWORD},
                    headers={"X-Wrenn-Dashboard": "1"},
                )  # fmt: skip
                return context, context.new_page()

            def load(page: object) -> float:
                began = time.perf_counter()
                page.goto(f"{base}/dashboard/capsules")  # type: ignore[attr-defined]
                page.locator("[data-capsule]").nth(listed - 1).wait_for()  # type: ignore[attr-defined]
                return time.perf_counter() - began

            for _ in range(args.runs):
                context, page = signed_in()
                cold.samples.append(load(page))
                for _ in range(2):
                    page.goto("about:blank")  # type: ignore[attr-defined]
                    warm.samples.append(load(page))
                context.close()  # type: ignore[attr-defined]
            browser.close()
        print(f"capsule list, {sum(n for _, n in ROWS)} rows in the database, {listed} listed:\n")
        print(series_table([cold, warm], title="load until every row shows"))
        write_results("dashboard", started, {"rows": dict(ROWS), "listed": listed,
                                             "series": [cold.summary(), warm.summary()]})  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
