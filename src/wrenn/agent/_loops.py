"""The manager's background loops: the reaper (idle sandboxes are paused, or stopped) and the sampler
(per-sandbox CPU, memory and disk samples)."""

from __future__ import annotations

import asyncio
import logging
import time

from . import _disk
from ._errors import SandboxError
from ._sandbox import Sandbox, Status
from ._snapshots import Snapshots
from ._table import SandboxTable

log = logging.getLogger("wrenn.agent")


async def reaper(table: SandboxTable, snapshots: Snapshots) -> None:
    """Stop running sandboxes that have been idle longer than their timeout."""
    while True:
        await asyncio.sleep(table.config.reaper_interval_s)
        now = time.time()
        for sandbox in list(table.sandboxes.values()):
            timeout = sandbox.params.timeout_sec
            if sandbox.status is Status.RUNNING and timeout > 0 and now - sandbox.last_active_at > timeout:
                log.info("sandbox idle timeout", extra={"sandbox": sandbox.id, "timeout_s": timeout})
                table.spawn(_expire(table, snapshots, sandbox))


async def _expire(table: SandboxTable, snapshots: Snapshots, sandbox: Sandbox) -> None:
    """The idle timeout: pause (when asked for) or stop. A pause that fails stops the sandbox."""
    if sandbox.params.auto_pause:
        try:
            await snapshots.pause(sandbox.id, idle_only=True)
            return
        except SandboxError as exc:
            if exc.code == "aborted":  # used again meanwhile: not idle any more
                return
            log.warning("auto-pause failed", extra={"sandbox": sandbox.id, "error": exc.message})
    async with sandbox.lock:
        if sandbox.status is Status.RUNNING:
            sandbox.status, sandbox.error = Status.STOPPED, "idle timeout"
            await table.release(sandbox)


async def sampler(table: SandboxTable) -> None:
    """Sample every running sandbox each `metrics_interval_s` (psutil reads /proc: no process per sample);
    an interval of 0 turns sampling off."""
    if table.config.metrics_interval_s <= 0:
        return
    while True:
        for sandbox in list(table.sandboxes.values()):
            vm = sandbox.vm
            if sandbox.status is Status.RUNNING and vm is not None:
                disk = _disk.allocated_bytes(sandbox.disk) if sandbox.disk else 0
                table.metrics.sample(sandbox.id, vm.pid, sandbox.params.vcpus, disk)
        await asyncio.sleep(table.config.metrics_interval_s)
