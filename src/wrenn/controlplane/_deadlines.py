"""Lifetime deadlines (`end_at`, E2B's `timeout`): at its deadline a running capsule is killed, or paused
when its `on_timeout` says "pause" — within a second of it, not at the host monitor's next round.

One loop per control plane sleeps until the nearest deadline, but never longer than `POLL_S`, so a
deadline set or shortened by any control plane (or a request on this one) is seen within that. A due
capsule is ended in a task of its own (a pause takes seconds; other deadlines do not wait for it).

Several control planes on one PostgreSQL database: each ends a capsule only under a transaction-scoped
advisory lock on its id (`pg_try_advisory_xact_lock`), taken without waiting, and checks again under it
that the capsule still runs and is still due; so exactly one of them acts, and a capsule another one is
ending is skipped. SQLite has one control plane and takes no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from ._agents import AgentPool
from ._background import Background
from ._errors import ApiError
from ._metrics import Metrics
from ._settings import Settings
from .db import Capsule, utcnow
from .db import CapsuleStatus as S
from .service import CapsuleService

log = logging.getLogger("wrenn.controlplane.deadlines")

#: The longest the loop sleeps: how late a deadline set elsewhere can be seen.
POLL_S = 0.5
#: After a failed end (its host refused), the capsule is tried again this much later.
RETRY = timedelta(seconds=15)


def _lock_key(capsule_id: str) -> int:
    digest = hashlib.sha256(f"wrenn-deadline:{capsule_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Deadlines(Background):
    """A background job of its own rhythm: each round says how long to sleep (until the nearest deadline,
    at most `POLL_S`), and the capsules due are ended in tasks of their own."""

    task_name = "wrenn-deadlines"

    def __init__(
        self,
        sessions: Callable[[], Any],
        agents: AgentPool,
        settings: Settings,
        dialect: str,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(sessions, agents, settings, dialect, metrics)
        #: Capsules this control plane is ending now, and those to leave alone until a time.
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, datetime] = {}

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._ending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                wait = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again shortly
                log.exception("deadline round failed")
                wait = POLL_S
            await asyncio.sleep(wait)

    async def tick(self) -> float:
        """End every capsule past its deadline (in tasks); the seconds until the next one is due."""
        now = utcnow()
        running = (Capsule.status == S.RUNNING, Capsule.end_at.is_not(None))
        async with self._sessions() as session:
            due = (await session.execute(select(Capsule.id).where(*running, Capsule.end_at <= now))).scalars()
            due_ids = list(due)
            nearest = await session.scalar(
                select(func.min(Capsule.end_at)).where(*running, Capsule.end_at > now)
            )
        for capsule_id in due_ids:
            if capsule_id in self._ending or self._retry_at.get(capsule_id, now) > now:
                continue
            task = asyncio.create_task(self._end(capsule_id), name=f"wrenn-deadline-{capsule_id}")
            self._ending[capsule_id] = task
            task.add_done_callback(self._ended)
        if nearest is None:
            return POLL_S
        until: float = (nearest - utcnow()).total_seconds()
        return max(0.0, min(POLL_S, until))

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._ending = {cid: t for cid, t in self._ending.items() if t is not task}

    async def _end(self, capsule_id: str) -> None:
        async with self._sessions() as lock:
            if self._postgres and not await lock.scalar(
                select(func.pg_try_advisory_xact_lock(_lock_key(capsule_id)))
            ):
                return  # another control plane is ending it
            try:
                await self._end_locked(capsule_id)
            finally:
                await lock.rollback()  # releases the advisory lock

    async def _end_locked(self, capsule_id: str) -> None:
        async with self._sessions() as session:
            capsule = await session.get(Capsule, capsule_id)
            if (
                capsule is None
                or capsule.status != S.RUNNING
                or capsule.end_at is None
                or capsule.end_at > utcnow()
            ):
                return  # ended, paused, or given more time meanwhile
            pause = capsule.on_timeout == "pause"
            late = (utcnow() - capsule.end_at).total_seconds()
            service = CapsuleService(session, self._agents, self._settings, self._metrics)
            try:
                if pause:
                    await service.pause(capsule, None)
                else:
                    capsule.error = "its timeout ended it"
                    await service.destroy(capsule, None)
            except ApiError as exc:
                await session.rollback()
                self._retry_at[capsule_id] = utcnow() + RETRY
                log.warning(
                    "cannot end a capsule's life", extra={"capsule": capsule_id, "error": exc.message}
                )
                return
        self._retry_at.pop(capsule_id, None)
        log.info(
            "capsule timed out", extra={"capsule": capsule_id, "paused": pause, "late_s": round(late, 3)}
        )
