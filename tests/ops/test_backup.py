"""`wrenn backup` while the control plane runs, then `wrenn restore` onto a fresh data dir (and, on
PostgreSQL, a new empty database): the accounts, API keys, templates and sealed columns come back (the
sealing key is in the backup, mode 0600), and the paused capsule's files, not the running one's. On SQLite
and on a real PostgreSQL cluster (pg_dump/pg_restore)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from tests.controlplane._db import insert_template, run
from tests.controlplane.conftest import database_url, postgres_url  # noqa: F401 - fixtures
from wrenn.cli import _backup
from wrenn.cli._app import app as cli
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane.db import Capsule, Template

PASSWORD = "correct horse battery"


def _node(tmp_path: Path, url: str) -> tuple[dict[str, str], str, str]:
    """A running control plane's data: Ada, her API key, a template, a paused capsule (with a sealed
    token) and a running one, and their files in the agent's data dir. -> (key header, paused, running)."""
    data_dir = tmp_path / "node"
    with TestClient(
        create_app(Settings(database_url=url, data_dir=data_dir, monitor_interval_s=3600))
    ) as api:
        ada = api.post("/v1/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).json()
        jwt = {"Authorization": f"Bearer {ada['token']}"}
        key = {"X-API-Key": api.post("/v1/api-keys", json={"name": "k"}, headers=jwt).json()["key"]}
        insert_template(api, ada["team_id"], "my-template")
        ids = {"paused": f"cl-paused{uuid.uuid4().hex[:8]}", "running": f"cl-running{uuid.uuid4().hex[:8]}"}

        async def add(session: object) -> None:
            for status, capsule_id in ids.items():
                session.add(Capsule(id=capsule_id, team_id=ada["team_id"], template="minimal", status=status,  # type: ignore[attr-defined]
                                    vcpus=1, memory_mb=512, envd_token=f"token-of-{status}"))  # fmt: skip

        run(api, add)
        for status, capsule_id in ids.items():
            workdir = data_dir / "sandboxes" / capsule_id
            (workdir / "snapshot").mkdir(parents=True)
            (workdir / "state.json").write_text(json.dumps({"status": status}))
            with open(workdir / "snapshot" / "memory", "wb") as f:
                f.truncate(64 << 20)  # sparse: the copy must stay sparse
        (data_dir / "templates" / "tpl-1").mkdir(parents=True)
        (data_dir / "templates" / "tpl-1" / "rootfs.qcow2").write_bytes(b"template disk")
        (data_dir / "blobs").mkdir()
        (data_dir / "blobs" / "abc").write_bytes(b"built template files")

        # The backup is taken while the control plane runs.
        done = CliRunner().invoke(cli, ["backup", str(tmp_path / "backup"), "--data-dir", str(data_dir),
                                        "--database-url", url])  # fmt: skip
        assert done.exit_code == 0, done.output
    return key, ids["paused"], ids["running"]


def _empty_database(url: str) -> str:
    """A new, empty database in the same PostgreSQL cluster."""
    name = f"restore_{uuid.uuid4().hex[:8]}"
    libpq, env = _backup._libpq(url)
    subprocess.run(["psql", libpq, "-c", f"CREATE DATABASE {name}"], env=env, check=True, capture_output=True)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def test_backup_and_restore(tmp_path: Path, database_url: str) -> None:  # noqa: F811 - the fixture
    key, paused, running = _node(tmp_path, database_url)
    backup = tmp_path / "backup"
    manifest = json.loads((backup / "MANIFEST.json").read_text())
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert {"encryption-key", "jwt-secret", "ca.pem", "ca-key.pem"} <= set(manifest["secrets"]["files"])
    for name in manifest["secrets"]["files"]:
        assert stat.S_IMODE((backup / "secrets" / name).stat().st_mode) == 0o600
    assert manifest["agent"]["paused_sandboxes"] == [paused] and set(manifest["agent"]["dirs"]) == {
        "templates",
        "blobs",
    }
    memory = backup / "agent" / "sandboxes" / paused / "snapshot" / "memory"
    assert memory.stat().st_size == 64 << 20 and memory.stat().st_blocks == 0  # still sparse

    fresh = tmp_path / "fresh"
    url = database_url if database_url.startswith("sqlite") else _empty_database(database_url)
    restore_args = ["restore", str(backup), "--data-dir", str(fresh)]
    if url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{fresh / 'wrenn.db'}"  # the data dir's own, the default
    else:
        restore_args += ["--database-url", url]
    done = CliRunner().invoke(cli, restore_args)
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE((fresh / "encryption-key").stat().st_mode) == 0o600
    assert (fresh / "sandboxes" / paused / "snapshot" / "memory").exists()
    assert not (fresh / "sandboxes" / running).exists()
    assert (fresh / "templates" / "tpl-1" / "rootfs.qcow2").read_bytes() == b"template disk"

    with TestClient(create_app(Settings(database_url=url, data_dir=fresh, monitor_interval_s=3600))) as api:
        login = api.post("/v1/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
        assert login.status_code == 200, login.text
        listed = api.get("/v1/capsules", headers=key)
        assert listed.status_code == 200 and {c["id"] for c in listed.json()} >= {paused}

        async def read(session: object) -> tuple[str, list[str]]:
            capsule = await session.get(Capsule, paused)  # type: ignore[attr-defined]
            names = (await session.execute(Template.__table__.select())).all()  # type: ignore[attr-defined]
            return capsule.envd_token, [row.name for row in names]

        token, templates = run(api, read)
        assert token == "token-of-paused" and templates == ["my-template"]  # the sealing key came back

    # Only onto a fresh data dir.
    with pytest.raises(_backup.BackupError, match="not fresh"):
        _backup.restore(backup, fresh, url=url)


def test_a_backup_is_refused_into_a_full_directory_and_restore_checks_its_source(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(_backup.BackupError, match="not empty"):
        _backup.backup(tmp_path, tmp_path / "full")
    with pytest.raises(_backup.BackupError, match="not a Wrenn backup"):
        _backup.restore(tmp_path / "full", tmp_path / "new")
    assert not os.path.exists(tmp_path / "new")
