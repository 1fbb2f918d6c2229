"""The usage sampler: a background job of every control plane, every `stats_interval_s` (and once at start).

1. **Team samples.** Each team's running capsules, vCPUs and memory, at an instant aligned to the interval
   (`/v1/capsules/stats`, and the usage the janitor rolls up). Several control planes sampling the same
   instant write one row (an upsert that keeps the first).
2. **Capsule samples.** Every `metrics_flush_interval_s`, what the host agents hold of each running
   capsule (their rings: 10 min of every sample, 2 h of 30 s and 24 h of 5 min averages) is copied to the
   database, so its history survives its host (pause and destroy copy it too, just before). A host that
   does not answer is skipped until the next flush; the copies are upserts, safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select

from . import _errors
from ._background import Background
from .db import Capsule, Host
from .db import CapsuleStatus as S
from .db import HostStatus as H
from .service import guest, usage

log = logging.getLogger("wrenn.controlplane.sampler")
_CONCURRENCY = 8


class Sampler(Background):
    task_name = "wrenn-sampler"
    round_name = "sampler round"
    _flushed_at = float("-inf")

    def interval_s(self) -> float:
        return self._settings.stats_interval_s

    async def tick(self) -> int:
        """One round; how many teams had something running."""
        async with self._sessions() as session:
            teams = await usage.sample_teams(session, self._settings.stats_interval_s)
            await session.commit()
        if time.monotonic() - self._flushed_at >= self._settings.metrics_flush_interval_s:
            self._flushed_at = time.monotonic()
            await self.flush()
        return teams

    async def flush(self) -> int:
        """Copy the samples of every running capsule on an online host to the database; how many capsules."""
        async with self._sessions() as session:
            found = await session.execute(
                select(Capsule, Host)
                .join(Host, Host.id == Capsule.host_id)
                .where(Capsule.status == S.RUNNING, Host.status == H.ONLINE)
            )
            pairs = [(c, h) for c, h in found.all()]
        limit = asyncio.Semaphore(_CONCURRENCY)

        async def one(capsule: Capsule, host: Host) -> int:
            async with limit:
                try:
                    points = await guest.metrics_window(guest.Guest(self._agents, capsule, host))
                except _errors.ApiError as exc:  # gone meanwhile, or its host away: next time
                    log.info(
                        "capsule samples not copied", extra={"capsule": capsule.id, "error": exc.message}
                    )
                    return 0
                async with self._sessions() as session:
                    await usage.keep(session, capsule.id, points)
                    await session.commit()
                return 1

        return sum(await asyncio.gather(*(one(c, h) for c, h in pairs)))
