"""The host agent's sandboxes behind one object: `SandboxManager` puts the parts together and is what the
Connect service, the traffic proxy and the agent's start-up use.

The parts, each holding the one shared `SandboxTable` (composition: see `_table`):

- `_table.SandboxTable`: the sandboxes, lookups, and `release` (every resource a sandbox holds, freed
  in one function);
- `_launch.Launcher`: image, `VMSpec` and the VMM's jail and cgroup, network slot, attaching a started VMM;
- `_admission.Admission`: whether the host's memory and disks can take one more sandbox;
- `_boot.Booter`: create (checks, snapshot templates, ready snapshots, cold boots);
- `_snapshots.Snapshots`: pause, resume, hibernate, thaw, templates;
- `_recovery.recover`: adoption after a restart;
- `_pool.WarmPool`: stopped VMs restored ahead of demand, which a create claims;
- `_loops.reaper`, `_loops.sampler`: idle timeouts, metrics.

Destroy lives here: it reaches into all of them (a boot under way, a hibernated archive, the table).
"""

from __future__ import annotations

import asyncio
import logging

from ._admission import Admission
from ._blobs import BlobStore
from ._boot import Booter
from ._builder import Builder
from ._cgroup import Cgroups
from ._cold import ColdStore
from ._config import AgentConfig
from ._errors import SandboxError
from ._launch import Launcher
from ._loops import reaper, sampler
from ._metrics import MetricsStore
from ._netpolicy import install_ca
from ._pool import WarmPool
from ._recovery import recover
from ._sandbox import Sandbox, SandboxParams, Status
from ._snapshots import Snapshots
from ._table import SandboxTable
from ._templates import Template, TemplateStore
from .network import EgressPolicy, NetworkManager
from .vmm import Driver
from .vmm._probe import AcceleratorChoice

log = logging.getLogger("wrenn.agent")


class SandboxManager:
    def __init__(
        self,
        config: AgentConfig,
        driver: Driver,
        accelerator: AcceleratorChoice,
        network: NetworkManager,
        cgroups: Cgroups,
    ) -> None:
        self.table = SandboxTable(config, driver, accelerator, network, cgroups)
        self.templates = TemplateStore(config.data_dir / "templates")
        self.launcher = Launcher(self.table, self.templates)
        self.admission = Admission(self.table)
        self.booter = Booter(self.table, self.launcher, self.templates, self.admission)
        self.pool = WarmPool(self.table, self.booter)
        if self.pool.enabled:
            self.booter.pool = self.pool
        cold = ColdStore(config.cold_storage) if config.cold_storage else None
        self.snapshots = Snapshots(self.table, self.launcher, self.templates, self.admission, cold)
        self.blobs = BlobStore(config.data_dir / "blobs", config.template_store)
        self.builder = Builder(self.table, self.launcher, self.blobs, config.data_dir / "build-files")
        self._loops: list[asyncio.Task[None]] = []

    @property
    def config(self) -> AgentConfig:
        return self.table.config

    @property
    def driver(self) -> Driver:
        return self.table.driver

    @property
    def accelerator(self) -> AcceleratorChoice:
        return self.table.accelerator

    @property
    def metrics(self) -> MetricsStore:
        return self.table.metrics

    @property
    def sandboxes(self) -> dict[str, Sandbox]:
        return self.table.sandboxes

    # --- lifecycle of the manager --------------------------------------------------------------------

    async def start(self) -> None:
        self.config.sandboxes_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.templates.cleanup_partial()
        self.blobs.prepare()
        machine = await asyncio.to_thread(lambda: self.table.machine)  # runs `<vmm> --version` once
        log.info("vmm probed", extra={"vmm": machine.vmm, "version": machine.vmm_version})
        await self.table.network.start()
        await recover(self.table, self.launcher)
        self._loops = [
            asyncio.create_task(reaper(self.table, self.snapshots)),
            asyncio.create_task(sampler(self.table)),
            asyncio.create_task(self.pool.run()),  # its members are destroyed when it is cancelled
        ]

    async def close(self, *, destroy: bool = False) -> None:
        """Stop the background loops. VMs keep running (a restarted agent adopts them) unless `destroy`."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if destroy:
            await asyncio.gather(*(self.destroy(sid) for sid in list(self.sandboxes)), return_exceptions=True)
        for sandbox in self.sandboxes.values():
            if sandbox.envd is not None:
                await sandbox.envd.close()
        self.table.cancel_tasks()

    async def terminate(self) -> None:
        """Destroy every sandbox and remove the host-wide network rules: the host is being retired."""
        await self.pool.drain()
        await asyncio.gather(*(self.destroy(sid) for sid in list(self.sandboxes)), return_exceptions=True)
        await self.table.network.uninstall()
        log.info("terminated: every sandbox destroyed, host rules removed")

    # --- sandboxes -----------------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> Sandbox:
        return self.table.get(sandbox_id)

    def running(self, sandbox_id: str) -> Sandbox:
        """The sandbox, `failed_precondition` unless running; marks it used."""
        return self.table.running(sandbox_id)

    def slots_used(self) -> int:
        return self.table.slots_used()

    async def ensure_running(self, sandbox_id: str) -> Sandbox:
        """The sandbox, running: a paused one is resumed first (traffic and `connect` wake it)."""
        sandbox = self.get(sandbox_id)
        if sandbox.status is Status.PAUSED:
            return await self.resume(sandbox_id)
        return self.running(sandbox_id)

    async def create(self, params: SandboxParams, policy: EgressPolicy | None = None) -> Sandbox:
        sandbox = await self.booter.create(params, policy)
        log.info("sandbox created", extra={"sandbox": params.sandbox_id, "template": params.template,
                                           "status": sandbox.status.value})  # fmt: skip
        return sandbox

    async def destroy(self, sandbox_id: str) -> None:
        """Destroy a sandbox in any status: a boot under way is cancelled, a pause or resume finishes
        first, a hibernated one's archive is deleted."""
        if self.snapshots.drop_archive(sandbox_id):
            return
        sandbox = self.get(sandbox_id)
        self.sandboxes.pop(sandbox_id, None)
        await self.booter.cancel(sandbox_id)
        async with sandbox.lock:  # a pause or resume under way finishes first
            await self.table.release(sandbox)
        self.table.forget(sandbox)
        self.table.network.forget(sandbox_id)
        log.info("sandbox destroyed", extra={"sandbox": sandbox_id})

    # --- snapshots -----------------------------------------------------------------------------------

    async def pause(self, sandbox_id: str) -> Sandbox:
        return await self.snapshots.pause(sandbox_id)

    async def resume(self, sandbox_id: str, policy: EgressPolicy | None = None) -> Sandbox:
        return await self.snapshots.resume(sandbox_id, policy)

    async def hibernate(self, sandbox_id: str) -> int:
        return await self.snapshots.hibernate(sandbox_id)

    async def thaw(self, sandbox_id: str, policy: EgressPolicy | None = None) -> Sandbox:
        return await self.snapshots.thaw(sandbox_id, policy)

    # --- network policy ------------------------------------------------------------------------------

    async def set_policy(self, sandbox_id: str, policy: EgressPolicy) -> Sandbox:
        """Replace a sandbox's egress policy: a running one's at once (and its guest learns a new CA), a
        paused one's for its resume."""
        sandbox = self.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status not in (Status.RUNNING, Status.PAUSED):
                raise SandboxError("failed_precondition", f"sandbox {sandbox_id} is {sandbox.status.value}")
            sandbox.policy, sandbox.secrets_loaded = policy, True
            if sandbox.status is Status.RUNNING and sandbox.network is not None:
                await self.table.network.set_policy(sandbox.network, sandbox.id, policy)
                await install_ca(sandbox, self.config.default_user)
            sandbox.save()
        return sandbox

    async def create_template(self, sandbox_id: str, name: str) -> Template:
        return await self.snapshots.create_template(sandbox_id, name)

    async def delete_template(self, name: str) -> None:
        await self.snapshots.delete_template(name)
