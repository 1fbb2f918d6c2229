"""The Alembic migrations produce exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from wrenn.controlplane.db import Base, make_engine, migrate


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
