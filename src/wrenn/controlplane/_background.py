"""Jobs every control plane runs in the background, round after round, over the shared database (the host
monitor, the account janitor): the loop, its start and stop, and the advisory-lock keys by which several
control planes on one PostgreSQL database take turns on a row."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the agent pool's in-flight registry takes its lock keys from here
    from ._agents import AgentPool
    from ._metrics import Metrics
    from ._settings import Settings

log = logging.getLogger("wrenn.controlplane.background")


def lock_key(kind: str, key: str) -> int:
    """A `pg_try_advisory_xact_lock` key for one thing (`wrenn-host:<id>`, `wrenn-user:<id>`)."""
    return int.from_bytes(hashlib.sha256(f"wrenn-{kind}:{key}".encode()).digest()[:8], "big", signed=True)


class Background:
    """A job: `tick` once at start, then every `interval_s()`; a failed round is logged and the next one
    comes all the same (a database hiccup must not end the job)."""

    #: The asyncio task's name; what a failed round is called in the log.
    task_name = "wrenn-background"
    round_name = "background round"

    def __init__(
        self,
        sessions: Callable[[], Any],
        agents: AgentPool,
        settings: Settings,
        dialect: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._sessions = sessions
        self._agents = agents
        self._settings = settings
        self._postgres = dialect == "postgresql"
        self._task: asyncio.Task[None] | None = None
        #: Rounds ended so far, failed ones included (tests wait for the host monitor's first: the round
        #: at start, which settles what the control plane found, must not meet what a test then does).
        self.rounds = 0

    def interval_s(self) -> float:
        raise NotImplementedError

    async def tick(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the job must outlive a bad round (a database hiccup)
                log.exception("background round failed", extra={"job": self.round_name})
            self.rounds += 1
            await asyncio.sleep(self.interval_s())
