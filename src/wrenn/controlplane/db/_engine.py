"""Engines, sessions and migrations. The schema is whatever Alembic's `head` says; `migrate()` brings a
database there at start (SQLite or PostgreSQL alike)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from wrenn._shared.private import create_private

from ._sealed import BOX_ATTRIBUTE

log = logging.getLogger("wrenn.controlplane.db")

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, box: Any = None) -> AsyncEngine:
    """An engine for `url`; `box` (a `SecretBox`) encrypts and decrypts the sealed columns. Without one,
    rows with sealed values can be neither written nor read (empty ones can)."""
    engine = _engine(url)
    setattr(engine.sync_engine.dialect, BOX_ATTRIBUTE, box)
    return engine


def private_sqlite_file(url: str) -> None:
    """An SQLite database file readable by its owner only: created empty with mode 0600 before SQLite
    opens it (its `-wal` and `-shm` files take the database file's mode), and an older one with wider
    permissions narrowed. Other databases: nothing to do."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if create_private(path, b""):
        return
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if each.stat().st_mode & 0o077:
                log.warning("narrowing the database file's permissions to 0600", extra={"path": str(each)})
                each.chmod(0o600)


def _engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True)


def sessions(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
        config.attributes["secret_box"] = getattr(connection.dialect, BOX_ATTRIBUTE, None)
    return config


#: The advisory lock several control planes starting at once on one PostgreSQL database take turns on.
MIGRATION_LOCK = 0x7772656E6E6D6967  # "wrennmig"


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the database to the newest schema. On PostgreSQL under an advisory lock held to the end of
    the migration's transaction: control planes starting together migrate one after another, and those
    after the first find the schema at `head` and do nothing."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), "head")

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await connection.run_sync(upgrade)
