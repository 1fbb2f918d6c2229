"""Which capsules have an operation in flight (a create, a resume, a thaw) in some control plane, so the
host monitor settles only the `pending` and `starting` rows that nobody will settle any more: those of a
control plane that died mid-way.

Each control plane holds its own operations in memory. On PostgreSQL, where several control planes share
the database, it also holds a session-level advisory lock per capsule on one connection of its own,
taken *before* the row is committed `pending`/`starting` and released after its final status is
committed. A control plane that dies closes that connection, and PostgreSQL releases its locks at once.
The monitor asks `pg_try_advisory_xact_lock` for each candidate: a lock it gets means no operation is in
flight anywhere, and holding it until its transaction ends keeps a new one from starting meanwhile.
SQLite serves one control plane only: its memory is the whole truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from ._background import lock_key
from ._errors import ApiError

log = logging.getLogger("wrenn.controlplane.inflight")
#: How long an operation waits for another one on the same capsule (another control plane's) to end.
_WAIT_S = 30.0


def _key(capsule_id: str) -> int:
    return lock_key("capsule", capsule_id)


class InFlight:
    """The capsule operations in flight in this control plane, visible to every control plane."""

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self._engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self._held: Counter[str] = Counter()
        self._connection: AsyncConnection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the lock connection

    @contextlib.asynccontextmanager
    async def hold(self, capsule_ids: Iterable[str]) -> AsyncIterator[None]:
        """Mark `capsule_ids` in flight until the block ends (enter it before committing their row)."""
        ids = list(dict.fromkeys(capsule_ids))
        new = [i for i in ids if not self._held[i]]
        self._held.update(ids)
        try:
            await self._take(new)
            yield
        finally:
            self._held.subtract(ids)
            done = [i for i in ids if self._held[i] <= 0]
            for i in done:
                del self._held[i]
            await self._release(done)

    async def idle(self, session: AsyncSession, capsule_ids: Collection[str]) -> set[str]:
        """Of `capsule_ids`, those no control plane has an operation in flight on. On PostgreSQL each is
        locked for the rest of `session`'s transaction."""
        free = {i for i in capsule_ids if not self._held[i]}
        if session.get_bind().dialect.name != "postgresql":
            return free
        return {i for i in free if await session.scalar(select(func.pg_try_advisory_xact_lock(_key(i))))}

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError, OSError):
                await self._connection.close()
            self._connection = None

    async def _take(self, ids: list[str]) -> None:
        if self._engine is None or not ids:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _WAIT_S
        waiting = list(ids)
        while waiting:
            async with self._lock:
                connection = await self._connected(skip=set(waiting))
                try:
                    waiting = [i for i in waiting if not await self._try(connection, i)]
                except (DBAPIError, OSError):
                    await self._drop()  # broken: the next use opens another and takes the locks again
                    raise
            if waiting:
                if loop.time() > deadline:  # `hold` releases those taken
                    raise ApiError(
                        409, "conflict", f"another operation on capsule {waiting[0]} is under way; try again"
                    )
                await asyncio.sleep(0.2)

    async def _release(self, ids: list[str]) -> None:
        if self._engine is None or not ids:
            return
        async with self._lock:
            if self._connection is None:
                return  # lost with the connection already
            try:
                for i in ids:
                    await self._connection.scalar(select(func.pg_advisory_unlock(_key(i))))
            except (DBAPIError, OSError) as exc:
                log.warning("cannot release capsule locks", extra={"error": str(exc)})
                await self._drop()  # its locks go with it

    async def _connected(self, skip: set[str]) -> AsyncConnection:
        """The lock connection; a new one takes again the locks of every operation still in flight here
        (but `skip`, which the caller takes)."""
        if self._connection is not None and not self._connection.closed:
            return self._connection
        await self._drop()
        assert self._engine is not None
        connection = await (await self._engine.connect()).execution_options(isolation_level="AUTOCOMMIT")
        for i in set(self._held) - skip:
            if not await self._try(connection, i):
                log.warning("an in-flight capsule is locked elsewhere", extra={"capsule": i})
        self._connection = connection
        return connection

    @staticmethod
    async def _try(connection: AsyncConnection, capsule_id: str) -> bool:
        return bool(await connection.scalar(select(func.pg_try_advisory_lock(_key(capsule_id)))))
