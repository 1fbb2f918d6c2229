"""The Alembic migrations produce exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from wrenn.controlplane.db import Base, make_engine, migrate
from wrenn.controlplane.db._engine import alembic_config


def test_migrations_match_the_models(database_url: str) -> None:
    async def check() -> list[object]:
        engine = make_engine(database_url)
        await migrate(engine)
        await migrate(engine)  # idempotent
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
        await engine.dispose()
        return list(diff)

    assert asyncio.run(check()) == []


def test_control_planes_starting_together_migrate_one_after_another(database_url: str) -> None:
    """Two replicas starting at once on one empty PostgreSQL database (a Deployment's rollout), as
    processes: the advisory lock makes them take turns, the later ones finding the schema at head."""
    if not database_url.startswith("postgresql"):
        pytest.skip("one SQLite file has one control plane")
    script = (
        "import asyncio, sys\n"
        "from wrenn.controlplane.db import make_engine, migrate\n"
        "asyncio.run(migrate(make_engine(sys.argv[1])))\n"
    )
    starts = [subprocess.Popen([sys.executable, "-c", script, database_url], stderr=subprocess.PIPE)
              for _ in range(2)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1].decode()[-500:] for p in starts]
    assert [p.returncode for p in starts] == [0, 0], errors

    async def versions() -> list[str]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            found = list((await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars())
        await engine.dispose()
        return found

    assert asyncio.run(versions()) == [ScriptDirectory.from_config(alembic_config()).get_current_head()]


def test_the_window_kept_at_a_pause_moves_to_capsule_samples(database_url: str) -> None:
    """0015: `sandboxes.last_metrics` (0010) becomes rows of `capsule_samples`, each second once."""
    window = [{"t": 100 + i, "cpu_pct": 1.5 * i, "mem_bytes": 10 * i, "disk_bytes": 7} for i in range(3)]

    async def check() -> list[tuple[object, ...]]:
        engine = make_engine(database_url)
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0014"))
            await conn.execute(
                sa.text("INSERT INTO teams (id, name, slug, created_at) VALUES ('t1', 't', 't', :now)"),
                {"now": datetime.now(UTC)},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO sandboxes (id, team_id, template, status, vcpus, memory_mb, disk_size_mb,"
                    " timeout_sec, host_ip, envd_token, error, metadata, created_at, last_updated, labels,"
                    " on_timeout, request_hash, auto_resume, last_metrics, network, network_secrets,"
                    " egress_ca_cert, egress_ca_key) VALUES ('cl1', 't1', 'minimal', 'paused', 1, 512, 5120,"
                    " 0, '', '', '', '{}', :now, :now, '{}', 'kill', '', true, :window, '{}', '', '', '')"
                ),
                {"now": datetime.now(UTC), "window": json.dumps(window + window[:1])},
            )
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
            rows = await conn.execute(
                sa.text(
                    "SELECT capsule_id, t, cpu_pct, mem_bytes, disk_bytes FROM capsule_samples ORDER BY t"
                )
            )
            found = [tuple(r) for r in rows.all()]
        await engine.dispose()
        return found

    assert asyncio.run(check()) == [
        ("cl1", p["t"], p["cpu_pct"], p["mem_bytes"], p["disk_bytes"]) for p in window
    ]
