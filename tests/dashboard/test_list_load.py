"""The capsule list with 50 capsules in the database (most of them paused or stopped): every listed one
is shown, without errors. Its load time is measured in bench/dashboard_bench.py, not asserted here."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.dashboard.conftest import PASSWORD, Platform, assert_clean
from wrenn.controlplane.db import Capsule, utcnow

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

#: (status, how many): 50 rows, 40 of which the list shows (stopped capsules are not listed).
ROWS = (("paused", 30), ("hibernated", 5), ("stopped", 10), ("pending", 5))


def insert_capsules(platform: Platform, team_id: str) -> list[str]:
    """Capsule rows straight into the control plane's database (no VMs): ids of the listed ones."""
    engine = create_engine(f"sqlite:///{platform.database}")
    listed, now = [], utcnow()
    with Session(engine) as session:
        n = 0
        for status, count in ROWS:
            for _ in range(count):
                n += 1
                capsule_id = f"cl-{secrets.token_hex(10)}"
                session.add(Capsule(
                    id=capsule_id, team_id=team_id, host_id=None, template="minimal", status=status,
                    vcpus=1, memory_mb=512, created_at=now - timedelta(minutes=n), paused_at=now,
                ))  # fmt: skip
                if status != "stopped":
                    listed.append(capsule_id)
        session.commit()
    engine.dispose()
    return listed


def test_fifty_capsules(platform: Platform, new_user: Any) -> None:
    email = f"many-{os.getpid()}@example.com"
    account = httpx.post(f"{platform.base_url}/v1/auth/signup", json={"email": email, "password": PASSWORD})
    listed = insert_capsules(platform, account.json()["team_id"])
    user = new_user(email, signup=False)
    page = user.page
    page.locator("[data-capsule]").nth(len(listed) - 1).wait_for()
    shown = page.locator("[data-capsule]").evaluate_all("rows => rows.map(r => r.dataset.capsule)")
    assert sorted(shown) == sorted(listed)
    assert page.locator('[data-status="paused"]').count() == 30
    assert_clean(user)
