"""Creating a sandbox: check the request, then boot it from its image or restore it from a snapshot.

Three ways to a running guest, fastest first: a snapshot template (a paused sandbox kept to start others
in its state), the ready snapshot of the sandbox's shape (a guest checkpointed right after its first boot,
before anything of a user's touched it), or a cold boot from the image's kernel and disk, which makes the
ready snapshot for the next sandbox of its shape. Snapshots are used only where the driver can restore one
snapshot into many VMs (`Capabilities.shared_snapshots`).

The agent takes the shape (vCPUs, memory, disk) it is sent. A snapshot fixes the shape of the machine
restored from it, so a request from a snapshot template must ask for the template's shape (the control
plane sends it): anything else is refused, never silently replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from wrenn import images

from . import _disk, _readiness
from ._admission import Admission
from ._cgroup import CPU_WEIGHT
from ._config import AgentConfig
from ._errors import SandboxError
from ._launch import Launcher, describe_failure
from ._machine import major_minor
from ._private import write_private
from ._sandbox import SANDBOX_ID, Sandbox, SandboxParams, Status
from ._table import SandboxTable
from ._templates import NAME as TEMPLATE_NAME
from ._templates import Template, TemplateStore
from .network import CLOSED, OPEN, EgressPolicy
from .vmm import DriverError

if TYPE_CHECKING:
    from ._pool import WarmPool

log = logging.getLogger("wrenn.agent")


class Booter:
    def __init__(
        self, table: SandboxTable, launcher: Launcher, templates: TemplateStore, admission: Admission
    ) -> None:
        self.table = table
        self.launcher = launcher
        self.templates = templates
        self.admission = admission
        self._creating: dict[str, asyncio.Task[Sandbox]] = {}
        #: Where a create takes a stopped VM from first (set by the manager when the pool is on).
        self.pool: WarmPool | None = None

    async def create(self, params: SandboxParams, policy: EgressPolicy | None = None) -> Sandbox:
        """A new sandbox, running; listed as `pending` while it boots. `aborted` when destroyed meanwhile."""
        image = self._validate(params)
        sandbox = Sandbox(
            params=params,
            policy=policy or (OPEN if params.allow_internet else CLOSED),
            workdir=self.table.config.sandboxes_dir / params.sandbox_id,
            image_name=image.template,
            image_version=image.version,
            kernel_version=image.kernel_version,
            envd_version=image.envd_version,
        )
        self.table.sandboxes[sandbox.id] = sandbox
        task = asyncio.create_task(self._boot(sandbox, image))
        self._creating[sandbox.id] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() or sandbox.id not in self.table.sandboxes:
                raise SandboxError("aborted", f"sandbox {sandbox.id} was destroyed while it booted") from None
            raise
        finally:
            self._creating.pop(sandbox.id, None)

    async def cancel(self, sandbox_id: str) -> None:
        """Stop the boot of `sandbox_id` if one is under way (its sandbox is being destroyed)."""
        booting = self._creating.get(sandbox_id)
        if booting is not None and not booting.done():
            booting.cancel()
            with contextlib.suppress(BaseException):
                await booting

    def _validate(self, params: SandboxParams) -> images.Image:
        if not SANDBOX_ID.match(params.sandbox_id):
            raise SandboxError("invalid_argument", "sandbox_id must be 1-64 characters of [a-z0-9-]")
        if params.sandbox_id in self.table.sandboxes:
            raise SandboxError("already_exists", f"sandbox {params.sandbox_id} already exists on this host")
        if not 1 <= params.vcpus <= (os.cpu_count() or 1) * 4:
            raise SandboxError("invalid_argument", f"vcpus must be between 1 and {(os.cpu_count() or 1) * 4}")
        if not 128 <= params.memory_mb <= 65536:
            raise SandboxError("invalid_argument", "memory_mb must be between 128 and 65536")
        if not TEMPLATE_NAME.match(params.template):
            name = params.template[:80]
            raise SandboxError("invalid_argument", f"a template is 1-64 characters of [a-z0-9._-]: {name!r}")
        template = self.templates.get(params.template)
        if template is not None:
            if not self.table.capabilities.shared_snapshots:
                raise SandboxError(
                    "failed_precondition",
                    f"template {params.template!r} is a snapshot, and {self.table.driver.name} on this host "
                    "cannot start sandboxes from shared snapshots",
                )
            _check_shape(params, template)
            self.launcher.check_restorable(
                template.directory,
                f"template {params.template!r}",
                how=(
                    "build the template again: a build's snapshot restores only where the VMM is of the "
                    "version its build ran on"
                    if template.meta.get("kind") == "built"
                    else "make the template again from a sandbox started on this host"
                ),
            )
        image = self.launcher.image(params.template)
        if image is None:
            raise SandboxError(
                "not_found",
                f"template {params.template!r} is not built on this host (run: wrenn image build)",
            )
        self.admission.check(params)
        return image

    async def _boot(self, sandbox: Sandbox, image: images.Image) -> Sandbox:
        params = sandbox.params
        started = time.monotonic()
        steps: dict[str, float] = {}  # a claim's steps, for the log (the start benchmark reads them)
        try:
            source = None if params.cold_boot else self.snapshot_source(params, image)
            member = self.pool.take(params, source[0]) if self.pool is not None and source else None
            if member is not None:
                await self._claim(sandbox, member, steps)
            else:
                sandbox.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
                await self.launcher.plug(sandbox)
                if source is not None:
                    await self.restore_into(sandbox, image, *source)
                else:
                    await self._start_cold(sandbox, image, self._ready_dir(params, image))
            before_init = time.monotonic()
            await self.launcher.init_envd(sandbox)
            steps["init_ms"] = round((time.monotonic() - before_init) * 1000, 1)
        except BaseException as exc:
            reason = describe_failure(exc, sandbox)
            log.warning(
                "sandbox failed to boot", extra={"sandbox": sandbox.id, "error": reason.splitlines()[0]}
            )
            await self.table.release(sandbox)
            if isinstance(exc, asyncio.CancelledError):
                self.table.sandboxes.pop(sandbox.id, None)
                raise
            sandbox.status, sandbox.error = Status.ERROR, reason
            if isinstance(exc, SandboxError):
                self.table.sandboxes.pop(sandbox.id, None)  # refused before anything ran: nothing to report
                raise
            raise SandboxError("internal", f"sandbox {sandbox.id} failed to boot: {reason}") from None
        sandbox.boot_seconds = time.monotonic() - started
        sandbox.status = Status.RUNNING
        sandbox.touch()
        sandbox.save()
        log.info(
            "sandbox running",
            extra={
                "sandbox": sandbox.id,
                "boot_s": round(sandbox.boot_seconds, 2),
                "pooled": bool(sandbox.vm_name),
                **steps,
                "host_ip": sandbox.host_ip,
            },
        )
        return sandbox

    async def _start_cold(self, sandbox: Sandbox, image: images.Image, ready: Path | None) -> None:
        """Boot from the image's kernel and disk. With `ready`, the fresh guest is checkpointed there once
        envd answers, before anything of the user's touches it: later sandboxes of its shape start from it."""
        disk_format = self.table.capabilities.disk_format
        sandbox.disk = await _disk.create_root(
            image.rootfs, sandbox.workdir, sandbox.params.disk_size_mb, disk_format
        )
        sandbox.disk_base = image.rootfs if disk_format == "qcow2" else None
        vm = sandbox.vm = await self.table.driver.start(self.launcher.start_spec(sandbox, image))
        await self.launcher.attach(sandbox, access_token=None)
        if not await _readiness.wait_ready(sandbox.host_ip, image, alive=lambda: vm.returncode is None):
            ready = None  # a guest whose template services did not come up is never a ready snapshot
        if ready is not None:
            await self._checkpoint_ready(sandbox, ready)

    def snapshot_source(self, params: SandboxParams, image: images.Image) -> tuple[Path, str | None] | None:
        """The snapshot a sandbox of `params` is restored from, with the access token its guest's envd
        still expects (a template's source sandbox's); None when it boots."""
        template = self.templates.get(params.template)
        if template is not None:
            return template.directory, str(template.meta.get("envd_access_token") or "") or None
        ready = self._ready_dir(params, image)
        if ready is not None and (ready / "vmstate").is_file() and self.launcher.restorable(ready) is None:
            return ready, None  # one this VMM cannot restore is passed by: the sandbox boots
        return None

    async def _claim(self, sandbox: Sandbox, member: Sandbox, steps: dict[str, float]) -> None:
        """Make a stopped warm-pool member this sandbox: its resources move over (the member's name stays
        their name: `vm_name`), its network gets the sandbox's policy, and its VM runs again. `init_envd`
        then gives the guest its identity, as after any restore."""
        sandbox.workdir, sandbox.vm_name, sandbox.from_snapshot = member.workdir, member.id, True
        for name in ("slot", "network", "disk", "disk_base", "vm", "envd", "memory_source"):
            setattr(sandbox, name, getattr(member, name))
            setattr(member, name, None)
        assert sandbox.network is not None and sandbox.vm is not None
        self.table.network.forget(member.id)
        self.table.cgroups.set_weight(self.table.cgroup_name(sandbox), CPU_WEIGHT)  # a sandbox's share now
        began = time.monotonic()
        await self.table.network.set_policy(sandbox.network, sandbox.id, sandbox.policy)
        policy_done = time.monotonic()
        self.table.watch(sandbox)
        await sandbox.vm.resume()
        steps["policy_ms"] = round((policy_done - began) * 1000, 1)
        steps["resume_ms"] = round((time.monotonic() - policy_done) * 1000, 1)

    async def restore_into(
        self, sandbox: Sandbox, image: images.Image, snapshot: Path, access_token: str | None = None
    ) -> None:
        """Restore a ready snapshot or a template: its disk under a new overlay, its memory copied into
        the sandbox's own RAM file, its device state loaded. The snapshot's files stay the agent's: the
        VMM reads its disk through a read-only descriptor and never sees its memory file."""
        sandbox.disk_base = snapshot / "rootfs.qcow2"
        sandbox.disk = await _disk.create_overlay(
            sandbox.disk_base, sandbox.workdir / "rootfs.qcow2", sandbox.params.disk_size_mb
        )
        sandbox.vm = await self.table.driver.restore(self.launcher.start_spec(sandbox, image), snapshot)
        sandbox.from_snapshot = True
        await self.launcher.attach(sandbox, access_token=access_token)

    # --- ready snapshots -----------------------------------------------------------------------------

    def _ready_dir(self, params: SandboxParams, image: images.Image) -> Path | None:
        """Where the ready snapshot of this shape lives; None when sandboxes of it always boot."""
        table = self.table
        if params.cold_boot or not table.config.ready_snapshots or not table.capabilities.shared_snapshots:
            return None
        # the VMM's major.minor in the path: an upgraded VMM makes its own (its restores need its own)
        series = ".".join(map(str, major_minor(table.machine.vmm_version) or ()))
        machine = "-".join(filter(None, (table.driver.name, series, table.accelerator.accelerator.value)))
        # The guest's resolvers come on its kernel command line and stay in a snapshot of it: an agent
        # started with other `--dns` must not restore guests that ask the old ones (nor share them).
        if table.config.dns != _DEFAULT_DNS:
            machine += "-dns" + hashlib.sha256(",".join(table.config.dns).encode()).hexdigest()[:8]
        shape = f"{params.vcpus}cpu-{params.memory_mb}m-{params.disk_size_mb}d"
        return table.config.data_dir / "ready" / machine / f"{image.template}-{image.version}" / shape

    async def _checkpoint_ready(self, sandbox: Sandbox, ready: Path) -> None:
        """Snapshot a just-booted guest (before /init) into `ready`, then let it run on. Best effort: a
        failure costs later sandboxes only their fast start."""
        vm, envd = sandbox.vm, sandbox.envd
        assert vm is not None and envd is not None and sandbox.disk is not None
        partial = ready.with_name(f"{ready.name}.partial-{sandbox.id}")
        started = time.monotonic()
        try:
            partial.mkdir(mode=0o700, parents=True)
            await envd.prepare_snapshot()
            await vm.snapshot(partial)
            await _disk.copy_sparse(sandbox.disk, partial / "rootfs.qcow2")
            meta = {**self.launcher.snapshot_meta(sandbox), "kind": "ready"}
            write_private(partial / "meta.json", json.dumps(meta, indent=1))
            if ready.exists():  # another sandbox of this shape made it meanwhile
                shutil.rmtree(partial)
            else:
                partial.rename(ready)
            log.info(
                "ready snapshot made",
                extra={"path": str(ready), "ms": round((time.monotonic() - started) * 1000, 1)},
            )
        except (DriverError, _disk.DiskError, OSError) as exc:
            log.warning("cannot make a ready snapshot", extra={"path": str(ready), "error": str(exc)})
            shutil.rmtree(partial, ignore_errors=True)
        finally:
            await vm.resume()


_DEFAULT_DNS = AgentConfig().dns


def _check_shape(params: SandboxParams, template: Template) -> None:
    """A snapshot restores the machine it was taken of: same vCPUs, same memory (the RAM file is mapped
    as it is), same disk (the guest's file system was sized to it)."""
    asked = (params.vcpus, params.memory_mb, params.disk_size_mb)
    shape = (template.vcpus, template.memory_mb, template.disk_size_mb)
    if asked != shape:
        raise SandboxError(
            "invalid_argument",
            f"template {template.name!r} is a snapshot of a machine with {_shape(*shape)}, and a sandbox "
            f"restored from it has that shape: ask for it (asked for {_shape(*asked)})",
        )


def _shape(vcpus: int, memory_mb: int, disk_size_mb: int) -> str:
    return f"{vcpus} vCPU, {memory_mb} MiB of memory and a {disk_size_mb} MiB disk"
