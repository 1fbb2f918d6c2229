"""The warm pool: per sandbox shape, VMs restored from the shape's ready snapshot (or a snapshot template)
ahead of demand and then stopped, so that a create only gives one its identity and resumes it.

A member is made as a restore makes a sandbox (network slot, netns, TAP, overlay, cgroup, VMM with its
RAM file, envd answering), then runs one `bash -l -c true` through envd (so that QEMU's TCG has
translated the code every first command runs; nothing of a tenant is in the guest yet), then is stopped
(`VM.pause`, QMP `stop`: no guest CPU runs). Members are not in the sandbox table: no list, metrics
sample, proxy route or control-plane row ever sees one, and their name (`VM_NAME`, "_pool-...") is not a
sandbox id a tenant can send. A create takes one (`take`: no lock, no await) and the booter gives it the
tenant's identity (`Booter._claim`); a member is never given back: it leaves the pool as a sandbox and is
destroyed as one.

Sizes adapt to demand within a memory budget: each shape keeps at least its configured size, grows by one
per miss up to `pool_max`, and shrinks back to its configured size after `pool_idle_s` without a create.
The budget is measured as the members' PSS (`/proc/<pid>/smaps_rollup`); a member being made reserves its
cgroup's memory limit (guest RAM plus the VMM's overhead), which its PSS cannot exceed, until measured.

Members are never adopted after an agent restart: they have no `state.json`, so recovery removes them as
it removes anything it does not adopt (VMM, cgroup, netns and TAP, directory, RAM file), and the pool
refills.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from connectrpc.errors import ConnectError

from wrenn.proto.envd.process import process_pb as proc

from ._config import PoolShape
from ._errors import SandboxError
from ._sandbox import Sandbox, SandboxParams
from ._table import SandboxTable
from .network import CLOSED
from .vmm import DriverError

if TYPE_CHECKING:
    from ._boot import Booter

log = logging.getLogger("wrenn.agent")

#: How long a shape whose member could not be made waits before the next try.
_BACKOFF_S = 10.0
#: Seconds after the last claim before the pool starts making members again: making one costs a restore's
#: CPU, which creates under way (a burst) need more.
_QUIET_S = 1.0
#: The command a member runs once before it is stopped: what the E2B SDK sends first.
_WARM_COMMAND = ("/bin/bash", ["-l", "-c", "true"])


def shape_of(params: SandboxParams) -> PoolShape:
    return PoolShape(params.template, params.vcpus, params.memory_mb, params.disk_size_mb)


@dataclass
class _Shelf:
    """One shape's members."""

    shape: PoolShape
    least: int
    target: int
    ready: collections.deque[Sandbox] = field(default_factory=collections.deque)
    filling: int = 0
    last_demand: float = field(default_factory=time.monotonic)
    not_before: float = 0.0


@dataclass
class PoolStats:
    """What `/metrics` reports of the pool (no label names a sandbox)."""

    hits: int = 0
    misses: int = 0
    members: int = 0
    filling: int = 0
    pss_bytes: int = 0
    budget_bytes: int = 0
    #: Seconds the last member took to make (restore, warm, stop).
    last_fill_s: float = 0.0


class WarmPool:
    def __init__(self, table: SandboxTable, booter: Booter) -> None:
        self.table = table
        self.booter = booter
        config = table.config
        self.budget = config.pool_memory_mb << 20
        self.enabled = self.budget > 0 and table.capabilities.warm_pool
        self._shelves: dict[PoolShape, _Shelf] = {
            shape: _Shelf(shape, least=n, target=n) for shape, n in config.pool_sizes
        }
        self._pss: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._quiet_until = 0.0
        self._fills: set[asyncio.Task[None]] = set()
        self.stats = PoolStats(budget_bytes=self.budget)

    # --- claims --------------------------------------------------------------------------------------

    def take(self, params: SandboxParams, source: Path) -> Sandbox | None:
        """A stopped member of `params`' shape restored from `source` (the snapshot a plain restore would
        use), out of the pool for good; None (a miss: the shape grows) when there is none."""
        if not self.enabled:
            return None
        shape = shape_of(params)
        shelf = self._shelves.get(shape)
        if shelf is None:
            shelf = self._shelves[shape] = _Shelf(shape, least=0, target=0)
        shelf.last_demand = time.monotonic()
        self._quiet_until = shelf.last_demand + _QUIET_S
        while shelf.ready:
            member = shelf.ready.popleft()
            self._pss.pop(member.id, None)
            vm = member.vm
            if vm is None or vm.returncode is not None or member.disk_base != source / "rootfs.qcow2":
                self.table.spawn(self._discard(member, "stale"))  # its VM died, or its snapshot was replaced
                continue
            self.stats.hits += 1
            return member
        self.stats.misses += 1
        shelf.target = min(max(shelf.target + 1, shelf.least), max(self.table.config.pool_max, shelf.least))
        return None

    # --- keeping the pool filled ----------------------------------------------------------------------

    async def run(self) -> None:
        """Fill, shrink and measure, until cancelled (then every member is destroyed)."""
        if not self.enabled:
            return
        try:
            while True:
                self._wake.clear()
                self._shrink_idle()
                self._measure()
                self._start_fills()
                quiet = self._quiet_until - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(quiet, 2.0) if quiet > 0 else 2.0)
        finally:
            for task in list(self._fills):
                task.cancel()
            await asyncio.gather(*self._fills, return_exceptions=True)
            await self.drain()

    async def drain(self) -> None:
        """Destroy every member (the agent is stopping or the host is being retired)."""
        members = [m for shelf in self._shelves.values() for m in shelf.ready]
        for shelf in self._shelves.values():
            shelf.ready.clear()
        await asyncio.gather(*(self._discard(m, "drained") for m in members), return_exceptions=True)

    def _reserved(self) -> int:
        """The pool's memory: members' measured PSS, and each member being made at its cgroup's limit."""
        making = sum(s.filling * self._limit(s.shape) for s in self._shelves.values())
        return sum(self._pss.values()) + making

    def _limit(self, shape: PoolShape) -> int:
        return (shape.memory_mb + self.table.config.vmm_overhead_mb) << 20

    def _start_fills(self) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            return
        for shelf in sorted(self._shelves.values(), key=lambda s: len(s.ready) - s.target):
            while (
                len(shelf.ready) + shelf.filling < shelf.target
                and len(self._fills) < self.table.config.pool_fills
                and now >= shelf.not_before
                and self._reserved() + self._limit(shelf.shape) <= self.budget
            ):
                shelf.filling += 1
                task = asyncio.create_task(self._fill(shelf))
                self._fills.add(task)
                task.add_done_callback(self._fills.discard)

    def _shrink_idle(self) -> None:
        now = time.monotonic()
        for shelf in self._shelves.values():
            if shelf.target > shelf.least and now - shelf.last_demand > self.table.config.pool_idle_s:
                log.info("warm pool shrinks", extra={"shape": str(shelf.shape), "to": shelf.least})
                shelf.target = shelf.least
            while len(shelf.ready) > shelf.target:
                self.table.spawn(self._discard(shelf.ready.pop(), "idle"))

    def _measure(self) -> None:
        """Each member's PSS now; over budget (a member outgrew its estimate), the newest go."""
        members = {m.id: m for shelf in self._shelves.values() for m in shelf.ready}
        self._pss = {mid: pss_bytes(m.vm.pid) if m.vm else 0 for mid, m in members.items()}
        while self._pss and sum(self._pss.values()) > self.budget:
            shelf = max(self._shelves.values(), key=lambda s: len(s.ready))
            member = shelf.ready.pop()
            self._pss.pop(member.id, None)
            self.table.spawn(self._discard(member, "over budget"))
        self.stats.members = sum(len(s.ready) for s in self._shelves.values())
        self.stats.filling = sum(s.filling for s in self._shelves.values())
        self.stats.pss_bytes = sum(self._pss.values())

    async def _fill(self, shelf: _Shelf) -> None:
        shape, config = shelf.shape, self.table.config
        name = f"_pool-{secrets.token_hex(8)}"
        params = SandboxParams(
            sandbox_id=name, template=shape.template, vcpus=shape.vcpus, memory_mb=shape.memory_mb,
            disk_size_mb=shape.disk_size_mb, timeout_sec=0, default_user=config.default_user,
        )  # fmt: skip
        member: Sandbox | None = None
        started = time.monotonic()
        try:
            image = self.booter.launcher.image(shape.template)
            source = self.booter.snapshot_source(params, image) if image is not None else None
            if image is None or source is None:
                shelf.not_before = time.monotonic() + _BACKOFF_S  # no snapshot yet: its first create makes it
                return
            self.booter.admission.check(params)
            member = Sandbox(
                params=params, workdir=config.sandboxes_dir / name, policy=CLOSED, image_name=image.template,
                image_version=image.version, kernel_version=image.kernel_version,
                envd_version=image.envd_version, pool_member=True,
            )  # fmt: skip
            member.workdir.mkdir(mode=0o700, parents=True)
            await self.booter.launcher.plug(member)
            await self.booter.restore_into(member, image, *source)
            await _warm(member)
            assert member.vm is not None
            await member.vm.pause()
        except asyncio.CancelledError:
            if member is not None:
                await self._discard(member, "cancelled")
            raise
        except (SandboxError, DriverError, OSError, httpx.HTTPError, ConnectError, RuntimeError) as exc:
            shelf.not_before = time.monotonic() + _BACKOFF_S
            log.warning("warm pool member failed", extra={"shape": str(shape), "error": str(exc)[:300]})
            if member is not None:
                await self._discard(member, "failed")
            return
        finally:
            shelf.filling -= 1
            self._wake.set()
        self.stats.last_fill_s = time.monotonic() - started
        shelf.ready.append(member)
        log.info(
            "warm pool member ready",
            extra={
                "shape": str(shape),
                "ms": round(self.stats.last_fill_s * 1000, 1),
                "members": len(shelf.ready),
            },
        )

    async def _discard(self, member: Sandbox, why: str) -> None:
        await self.table.release(member)
        self.table.forget(member)
        self.table.network.forget(member.id)
        log.info("warm pool member destroyed", extra={"member": member.id, "why": why})


async def _warm(member: Sandbox) -> None:
    """Run the first command every sandbox runs once, so that its code is translated before a tenant
    waits for it. Best effort: a guest that cannot is still a good member."""
    envd = member.envd
    assert envd is not None
    cmd, args = _WARM_COMMAND
    request = proc.StartRequest(process=proc.ProcessConfig(cmd=cmd, args=args, envs={}))
    headers = envd.headers(member.params.default_user)
    with contextlib.suppress(ConnectError, httpx.HTTPError, OSError):
        async for _ in envd.process.start(request, headers=headers, timeout_ms=30_000):
            pass


def pss_bytes(pid: int) -> int:
    """The proportional set size of process `pid` (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return 0
