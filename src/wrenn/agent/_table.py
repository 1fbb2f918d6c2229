"""The sandbox table: every sandbox this host holds, the host's resources they draw on, and their release.

Every resource a sandbox holds (network slot, netns, disk, snapshot, cgroup, VMM process, RAM file, envd
client) is released in one function, `SandboxTable.release`, whatever way the sandbox leaves: destroy, a
failed boot, a VM that died, the idle timeout, hibernation, or a restart that cannot adopt it. A pause
releases only what a running sandbox holds (`release_runtime`) and keeps the disk and the snapshot.

The agent's sandbox logic is split by what it does to this table: giving a sandbox a VM (`_launch`),
creating one (`_boot`), pause, resume, hibernation and templates (`_snapshots`), adoption after a restart
(`_recovery`) and the background loops (`_loops`); `SandboxManager` (`_manager`) puts them together. Each
part holds this table rather than inheriting it (composition, not mixins): the table is the one state they
share, and each part's constructor says what else it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from . import _disk
from ._cgroup import Cgroups, IOLimit, block_device, kill_all
from ._config import AgentConfig
from ._errors import SandboxError
from ._machine import MachineRecord
from ._metrics import MetricsStore
from ._sandbox import Sandbox, Status
from .network import NetworkManager
from .vmm import Capabilities, Driver, console_tail
from .vmm._probe import AcceleratorChoice

log = logging.getLogger("wrenn.agent")


class SandboxTable:
    def __init__(
        self,
        config: AgentConfig,
        driver: Driver,
        accelerator: AcceleratorChoice,
        network: NetworkManager,
        cgroups: Cgroups,
    ) -> None:
        self.config = config
        self.driver = driver
        self.accelerator = accelerator
        self.network = network
        self.cgroups = cgroups
        self.metrics = MetricsStore()
        self.sandboxes: dict[str, Sandbox] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: How fast each VMM may read and write the data directory's disk (None: not throttled here).
        device = block_device(config.data_dir) if config.data_dir.exists() else None
        self.io_limit = IOLimit(device, config.vmm_io_bytes_per_s, config.vmm_io_iops) if device else None
        #: The VMM installed here, probed once (`probe_machine`, at the agent's start).
        self._machine: MachineRecord | None = None

    @property
    def machine(self) -> MachineRecord:
        """The VMM, its version and machine type: what snapshots record and what restores them."""
        if self._machine is None:
            self._machine = MachineRecord.probe(self.driver)
        return self._machine

    @property
    def capabilities(self) -> Capabilities:
        return self.driver.capabilities

    # --- queries -------------------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise SandboxError("not_found", f"sandbox {sandbox_id!r} not found on this host")
        return sandbox

    def running(self, sandbox_id: str) -> Sandbox:
        sandbox = self.get(sandbox_id)
        if sandbox.status is not Status.RUNNING or sandbox.envd is None:
            detail = f": {sandbox.error}" if sandbox.error else ""
            raise SandboxError(
                "failed_precondition", f"sandbox {sandbox_id} is {sandbox.status.value}{detail}"
            )
        sandbox.touch()
        return sandbox

    def slots_used(self) -> int:
        return sum(1 for s in self.sandboxes.values() if s.slot is not None)

    def cgroup_name(self, sandbox: Sandbox) -> str:
        return f"{self.config.name_prefix}-{sandbox.host_name}"

    def memory_file(self, sandbox: Sandbox) -> Path | None:
        """The file backing the guest's RAM while it runs, when the VMM keeps RAM in a file we name."""
        if not self.capabilities.memory_file:
            return None
        return self.config.memory_dir / f"{self.config.name_prefix}-{sandbox.host_name}.mem"

    # --- entering and leaving ------------------------------------------------------------------------

    def add_stopped(self, sandbox: Sandbox) -> Sandbox:
        """A sandbox a previous run paused (or failed to resume), or one thawed from cold storage: its disk
        and snapshot are all it has. One whose snapshot has gone missing is kept as `error`, so the control
        plane learns why."""
        if sandbox.status is Status.PAUSED and not (sandbox.snapshot_dir / "vmstate").is_file():
            sandbox.status, sandbox.error = Status.ERROR, "the pause snapshot is missing from this host"
            sandbox.save()
        self.sandboxes[sandbox.id] = sandbox
        log.info("sandbox adopted", extra={"sandbox": sandbox.id, "status": sandbox.status.value})
        return sandbox

    def forget(self, sandbox: Sandbox) -> None:
        """The last of a sandbox that has left this host (released first): its directory and samples."""
        shutil.rmtree(sandbox.workdir, ignore_errors=True)
        self.metrics.drop(sandbox.id)

    async def release(self, sandbox: Sandbox) -> None:
        """Free everything the sandbox holds. Safe to call at any stage and more than once. Proxied
        traffic to it is cut first: its guest will never answer again (a pause keeps it, as before)."""
        sandbox.cut_traffic()
        await self.release_runtime(sandbox)
        disk, sandbox.disk = sandbox.disk, None
        if disk is not None:
            _disk.remove(disk)
        shutil.rmtree(sandbox.snapshot_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            sandbox.state_file.unlink()

    async def release_runtime(self, sandbox: Sandbox) -> None:
        """Free what only a running sandbox holds (VMM, RAM, cgroup, envd client, network slot); a paused
        one keeps its disk and snapshot."""
        vm, sandbox.vm = sandbox.vm, None
        if vm is not None:
            with contextlib.suppress(Exception):
                await vm.kill()
        kill_all(self.cgroups, self.cgroup_name(sandbox))
        self.cgroups.remove(self.cgroup_name(sandbox))
        envd, sandbox.envd = sandbox.envd, None
        if envd is not None:
            with contextlib.suppress(Exception):
                await envd.close()
        network, sandbox.network = sandbox.network, None
        if network is not None:
            with contextlib.suppress(Exception):
                await self.network.teardown(network)
        if sandbox.slot is not None:
            self.network.allocator.release(sandbox.slot)
            sandbox.slot = None
        memory = self.memory_file(sandbox)
        if memory is not None:
            memory.unlink(missing_ok=True)

    # --- watching ------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` in the background, held until it ends (cancelled by `cancel_tasks`)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def watch(self, sandbox: Sandbox) -> None:
        """Notice, from now on, the sandbox's VMM exiting on its own."""
        self.spawn(self._watch(sandbox))

    async def _watch(self, sandbox: Sandbox) -> None:
        """A VMM that exits on its own: the sandbox becomes `error`, its resources are freed."""
        vm = sandbox.vm
        if vm is None:
            return
        code = await vm.wait()
        if sandbox.vm is not vm or sandbox.status is not Status.RUNNING:
            return  # replaced, paused or stopped meanwhile; a boot reports its own failure, with the console
        sandbox.status = Status.ERROR
        tail = console_tail(sandbox.workdir / "console.log", 2000)
        sandbox.error = f"the VM exited unexpectedly (status {code})\n{tail}"
        log.warning("sandbox vm died", extra={"sandbox": sandbox.id, "status": code})
        await self.release(sandbox)
