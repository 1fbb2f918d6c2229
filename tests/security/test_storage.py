"""What a local unprivileged user, or a stolen copy of the database, gets from the control plane's files:
nothing readable (0600 files in a 0700 directory, from their first byte), and no capsule token in clear
(sealed with a key that is not in the database)."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.controlplane._db import insert_capsule, run
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane._secretbox import SecretBox
from wrenn.controlplane.db import make_engine, migrate
from wrenn.controlplane.db._engine import alembic_config

from .conftest import account, admin_account

SECRETS = ("jwt-secret", "encryption-key", "ca-key.pem", "bootstrap-token", "wrenn.db")


def test_secrets_and_the_database_are_private_from_the_start(
    tmp_path: Path, test_user: pwd.struct_passwd
) -> None:
    data_dir = tmp_path / "cp"
    os.umask(0o022)  # the usual umask: whatever is private is so on purpose
    settings = Settings(data_dir=data_dir, monitor_interval_s=3600)
    with TestClient(create_app(settings)) as api:
        account(api, "someone@example.com")
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for name in SECRETS:
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
        for wal in data_dir.glob("wrenn.db-*"):
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600, wal
        data_dir.chmod(0o755)  # even with the directory opened up, the files stay closed
        probe = "import sys\nfor p in sys.argv[1:]:\n    try: open(p).read(1); print('read', p)\n    except OSError: pass"
        out = subprocess.run(
            ["runuser", "-u", test_user.pw_name, "--", "/usr/bin/python3", "-c", probe,
             *(str(data_dir / n) for n in SECRETS)],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        assert out.stdout == "", out.stdout


def test_capsule_tokens_are_sealed_in_the_database(cp: TestClient) -> None:
    owner = account(cp, "owner@example.com")
    admin = admin_account(cp)
    host_id = cp.get("/v1/hosts", headers=admin.jwt).json()[0]["id"]
    r = cp.post("/sandboxes", json={"templateID": "base", "network": {"allowPublicTraffic": False}},
                headers=owner.jwt)  # fmt: skip
    assert r.status_code == 201, r.text
    envd, traffic = r.json()["envdAccessToken"], r.json()["trafficAccessToken"]
    assert envd and traffic

    async def raw(session: Any) -> list[tuple[str, str]]:
        found = await session.execute(text("SELECT envd_token, traffic_access_token FROM sandboxes"))
        return [tuple(row) for row in found]

    stored = run(cp, raw)
    assert len(stored) == 1 and all(v.startswith("enc1:") for v in stored[0])
    assert envd not in str(stored) and traffic not in str(stored)
    again = cp.get(f"/sandboxes/{r.json()['sandboxID']}", headers=owner.jwt).json()
    assert again["envdAccessToken"] == envd  # its team still reads it back
    assert insert_capsule(cp, owner.team_id, host=host_id)  # empty tokens stay empty


def test_the_migration_seals_tokens_stored_in_clear(database_url: str, tmp_path: Path) -> None:
    box = SecretBox(os.urandom(32))

    async def go() -> list[tuple[str, str | None]]:
        from alembic import command

        engine = make_engine(database_url, box)
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0008"))
            await conn.execute(text(
                "INSERT INTO teams (id, name, slug, created_at) VALUES ('team-1', 't', 's', CURRENT_TIMESTAMP)"
            ))  # fmt: skip
            await conn.execute(text(
                "INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, disk_size_mb, "
                "timeout_sec, host_ip, envd_token, traffic_access_token, error, metadata, created_at, "
                "last_updated, labels, on_timeout, request_hash) VALUES ('cl-1', 'team-1', 'minimal', 'running', "
                "1, 512, 5120, 0, '', 'plain-envd', 'plain-traffic', '', '{}', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, '{}', 'kill', '')"
            ))  # fmt: skip
        await migrate(engine)
        async with engine.connect() as conn:
            rows = [
                tuple(r)
                for r in await conn.execute(text("SELECT envd_token, traffic_access_token FROM sandboxes"))
            ]
        await engine.dispose()
        return rows  # type: ignore[return-value]

    ((envd, traffic),) = asyncio.run(go())
    assert envd.startswith("enc1:") and box.open(envd, "capsule.envd_token") == "plain-envd"
    assert traffic and box.open(traffic, "capsule.traffic_access_token") == "plain-traffic"
    with pytest.raises(ValueError):
        box.open(envd, "capsule.traffic_access_token")  # sealed for one column, it opens in no other
    with pytest.raises(ValueError):
        SecretBox(os.urandom(32)).open(envd, "capsule.envd_token")  # nor with another key
