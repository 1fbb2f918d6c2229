"""The sandbox table and everything that changes it: create, destroy, the idle reaper, VM deaths, and
recovery after an agent restart.

Every resource a sandbox holds (network slot, netns, disk overlay, cgroup, VMM process, envd client) is
released in one place, `_release`, whatever path the sandbox leaves by: destroy, a failed boot, a VM
that died, the idle timeout, or a restart that found it unrecoverable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import psutil

from wrenn import images

from . import _disk, _readiness
from ._cgroup import Cgroups, Limits, kill_all
from ._cold import ColdStorageError, ColdStore
from ._config import AgentConfig
from ._envd import EnvdClient, EnvdUnavailable
from ._errors import SandboxError
from ._metrics import MetricsStore
from ._sandbox import SANDBOX_ID, Sandbox, SandboxParams, Status, load_state
from ._templates import NAME as TEMPLATE_NAME
from ._templates import Template, TemplateStore
from .network import NetworkExhausted, NetworkManager
from .vmm import Driver, DriverError, VMSpec, console_tail
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
        self.config = config
        self.driver = driver
        self.accelerator = accelerator
        self.network = network
        self.cgroups = cgroups
        self.metrics = MetricsStore()
        self.templates = TemplateStore(config.data_dir / "templates")
        self.cold = ColdStore(config.cold_storage) if config.cold_storage else None
        self.sandboxes: dict[str, Sandbox] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._creating: dict[str, asyncio.Task[Sandbox]] = {}
        self._loops: list[asyncio.Task[None]] = []

    # --- lifecycle of the manager --------------------------------------------------------------------

    async def start(self) -> None:
        self.config.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self.templates.cleanup_partial()
        await self.network.start()
        await self.recover()
        self._loops = [asyncio.create_task(self._reaper()), asyncio.create_task(self._sampler())]

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
        for task in list(self._tasks):
            task.cancel()

    async def terminate(self) -> None:
        """Destroy every sandbox and remove the host-wide network rules: the host is being retired."""
        await asyncio.gather(*(self.destroy(sid) for sid in list(self.sandboxes)), return_exceptions=True)
        await self.network.uninstall()
        log.info("terminated: every sandbox destroyed, host rules removed")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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

    # --- pause and resume ------------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, idle_only: bool = False) -> Sandbox:
        """Snapshot the VM into `snapshot_dir`, then free its VMM, RAM, cgroup and network slot. The
        sandbox runs on, untouched, when the snapshot fails. `idle_only` (the reaper) gives up with
        `aborted` when the sandbox was used while the lock was awaited."""
        sandbox = self.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status is Status.PAUSED:
                return sandbox
            if idle_only and time.time() - sandbox.last_active_at <= sandbox.params.timeout_sec:
                raise SandboxError("aborted", f"sandbox {sandbox_id} was used meanwhile")
            if sandbox.status is not Status.RUNNING or sandbox.vm is None or sandbox.envd is None:
                raise SandboxError(
                    "failed_precondition", f"sandbox {sandbox_id} is {sandbox.status.value}: cannot pause"
                )
            started = time.monotonic()
            vm = sandbox.vm
            await sandbox.envd.prepare_snapshot()
            partial = sandbox.workdir / "snapshot.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            try:
                await vm.snapshot(partial)
            except BaseException as exc:
                shutil.rmtree(partial, ignore_errors=True)
                with contextlib.suppress(Exception):
                    await vm.resume()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise SandboxError(
                    "internal", f"pausing sandbox {sandbox_id} failed, it keeps running: {exc}"
                ) from None
            meta = {**self._snapshot_meta(sandbox), "kind": "pause"}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
            sandbox.memory_source = None  # a clone's RAM went into vmstate: it resumes as its own
            shutil.rmtree(sandbox.snapshot_dir, ignore_errors=True)
            partial.rename(sandbox.snapshot_dir)
            sandbox.status, sandbox.paused_at = Status.PAUSED, time.time()
            await self._release_runtime(sandbox)
            sandbox.save()
        log.info(
            "sandbox paused",
            extra={
                "sandbox": sandbox_id,
                "pause_ms": round((time.monotonic() - started) * 1000, 1),
                "snapshot_bytes": _tree_bytes(sandbox.snapshot_dir),
            },
        )
        return sandbox

    async def resume(self, sandbox_id: str) -> Sandbox:
        """Restore a paused sandbox into a new VMM in a fresh network slot and re-initialise envd
        (clock, token, env). A snapshot that cannot be restored turns the sandbox to `error`."""
        sandbox = self.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status is Status.RUNNING:
                sandbox.touch()
                return sandbox
            if sandbox.status is not Status.PAUSED:
                detail = f": {sandbox.error}" if sandbox.error else ""
                raise SandboxError(
                    "failed_precondition", f"sandbox {sandbox_id} is {sandbox.status.value}{detail}"
                )
            image = self._image(sandbox.image_name or sandbox.params.template, sandbox.image_version)
            if image is None:
                raise SandboxError(
                    "failed_precondition", f"the image of sandbox {sandbox_id} is gone from this host"
                )
            self._admit_memory(sandbox.params.memory_mb)
            started = time.monotonic()
            try:
                await self._restore(sandbox, image)
            except BaseException as exc:
                await self._release_runtime(sandbox)
                if isinstance(exc, asyncio.CancelledError) or (
                    isinstance(exc, SandboxError) and exc.code == "resource_exhausted"
                ):
                    raise  # the snapshot is fine: the sandbox stays paused
                reason = _describe_failure(exc, sandbox)
                sandbox.status, sandbox.error = Status.ERROR, f"resume failed: {reason}"
                sandbox.save()
                log.warning("sandbox resume failed", extra={"sandbox": sandbox_id, "error": reason[:300]})
                raise SandboxError(
                    "data_loss", f"sandbox {sandbox_id} cannot be resumed: {reason.splitlines()[0]}"
                ) from None
            sandbox.status, sandbox.error, sandbox.paused_at = Status.RUNNING, "", None
            sandbox.touch()
            sandbox.save()
        log.info(
            "sandbox resumed",
            extra={
                "sandbox": sandbox_id,
                "resume_ms": round((time.monotonic() - started) * 1000, 1),
                "host_ip": sandbox.host_ip,
            },
        )
        return sandbox

    async def _restore(self, sandbox: Sandbox, image: images.Image) -> None:
        params = sandbox.params
        try:
            sandbox.slot = self.network.allocator.acquire()
        except NetworkExhausted as exc:
            raise SandboxError("resource_exhausted", str(exc)) from None
        sandbox.network = await self.network.setup(sandbox.slot, allow_internet=params.allow_internet)
        sandbox.vm = await self.driver.restore(self._spec(sandbox, image), sandbox.snapshot_dir)
        await self._attach(sandbox, access_token=params.envd_access_token or None)
        await self._init_envd(sandbox)

    # --- hibernation -----------------------------------------------------------------------------------

    def _cold(self) -> ColdStore:
        if self.cold is None:
            raise SandboxError("failed_precondition", "this host has no cold storage (--cold-storage)")
        return self.cold

    async def hibernate(self, sandbox_id: str) -> int:
        """Move a paused sandbox to cold storage (its snapshot, state and flattened disk, compressed) and
        forget it here; the archive's size. `thaw` on any host reaching the storage brings it back."""
        cold = self._cold()
        sandbox = self.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status is not Status.PAUSED or sandbox.disk is None:
                raise SandboxError(
                    "failed_precondition",
                    f"sandbox {sandbox_id} is {sandbox.status.value}: only a paused one",
                )
            stage = sandbox.workdir / "hibernate"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                await _disk.flatten(sandbox.disk, stage / "rootfs.qcow2")
                for item in sandbox.snapshot_dir.iterdir():
                    os.link(item, stage / item.name)
                sandbox.save()
                shutil.copy(sandbox.state_file, stage / "state.json")
                size = await cold.put(sandbox_id, stage)
            except (OSError, _disk.DiskError, ColdStorageError) as exc:
                raise SandboxError("internal", f"cannot hibernate sandbox {sandbox_id}: {exc}") from None
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            self.sandboxes.pop(sandbox_id, None)
            await self._release(sandbox)
        shutil.rmtree(sandbox.workdir, ignore_errors=True)
        self.metrics.drop(sandbox_id)
        log.info("sandbox hibernated", extra={"sandbox": sandbox_id, "archive_bytes": size})
        return size

    async def thaw(self, sandbox_id: str) -> Sandbox:
        """Bring a hibernated sandbox back from cold storage onto this host and resume it."""
        if sandbox_id in self.sandboxes:
            return await self.resume(sandbox_id)
        cold = self._cold()
        if not SANDBOX_ID.match(sandbox_id) or not cold.exists(sandbox_id):
            raise SandboxError("not_found", f"no hibernated sandbox {sandbox_id!r} in cold storage")
        workdir = self.config.sandboxes_dir / sandbox_id
        shutil.rmtree(workdir, ignore_errors=True)
        (workdir / "snapshot").mkdir(parents=True)
        try:
            await cold.get(sandbox_id, workdir)
            for item in ("vmstate", "memory", "meta.json"):
                if (workdir / item).exists():
                    (workdir / item).rename(workdir / "snapshot" / item)
            state = load_state(workdir / "state.json")
            state["disk"] = str(workdir / "rootfs.qcow2")
            state["memory_source"] = None
            thawed = Sandbox.from_state(workdir, state)
            await _check_thawed(thawed, sandbox_id)
        except (OSError, ValueError, TypeError, KeyError, ColdStorageError, _disk.DiskError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(
                "data_loss", f"the archive of sandbox {sandbox_id} is unusable: {exc}"
            ) from None
        self._adopt_stopped(thawed).save()
        resumed = await self.resume(sandbox_id)
        cold.delete(sandbox_id)
        log.info("sandbox thawed", extra={"sandbox": sandbox_id})
        return resumed

    # --- templates -----------------------------------------------------------------------------------

    async def create_template(self, sandbox_id: str, name: str) -> Template:
        """A template from a paused sandbox's snapshot and disk; the sandbox stays paused."""
        sandbox = self.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status is not Status.PAUSED or sandbox.disk is None:
                raise SandboxError(
                    "failed_precondition",
                    f"sandbox {sandbox_id} is {sandbox.status.value}: a template is made from a paused one",
                )
            meta = {
                **self._snapshot_meta(sandbox),
                "source": sandbox_id,
                "envd_access_token": sandbox.params.envd_access_token,  # what its guest's envd expects
            }
            try:
                return await self.templates.create(name, sandbox.snapshot_dir, sandbox.disk, meta)
            except (OSError, _disk.DiskError) as exc:
                raise SandboxError("internal", f"cannot make template {name!r}: {exc}") from None

    async def delete_template(self, name: str) -> None:
        """Delete a template no sandbox depends on (their disks are overlays on its disk)."""
        users = sorted(s.id for s in self.sandboxes.values() if s.params.template == name)
        if users:
            raise SandboxError(
                "failed_precondition", f"template {name!r} is in use by sandboxes {', '.join(users)}"
            )
        await asyncio.to_thread(self.templates.delete, name)

    async def ensure_running(self, sandbox_id: str) -> Sandbox:
        """The sandbox, running: a paused one is resumed first (traffic and `connect` wake it)."""
        sandbox = self.get(sandbox_id)
        if sandbox.status is Status.PAUSED:
            return await self.resume(sandbox_id)
        return self.running(sandbox_id)

    def slots_used(self) -> int:
        return sum(1 for s in self.sandboxes.values() if s.slot is not None)

    # --- create --------------------------------------------------------------------------------------

    def _validate(self, params: SandboxParams) -> images.Image:
        if not SANDBOX_ID.match(params.sandbox_id):
            raise SandboxError("invalid_argument", "sandbox_id must be 1-64 characters of [a-z0-9-]")
        if params.sandbox_id in self.sandboxes:
            raise SandboxError("already_exists", f"sandbox {params.sandbox_id} already exists on this host")
        if not 1 <= params.vcpus <= (os.cpu_count() or 1) * 4:
            raise SandboxError("invalid_argument", f"vcpus must be between 1 and {(os.cpu_count() or 1) * 4}")
        if not 128 <= params.memory_mb <= 65536:
            raise SandboxError("invalid_argument", "memory_mb must be between 128 and 65536")
        if not TEMPLATE_NAME.match(params.template):
            name = params.template[:80]
            raise SandboxError("invalid_argument", f"a template is 1-64 characters of [a-z0-9._-]: {name!r}")
        image = self._image(params.template)
        if image is None:
            raise SandboxError(
                "not_found",
                f"template {params.template!r} is not built on this host (run: wrenn image build)",
            )
        self._admit_memory(params.memory_mb)
        return image

    def _image(self, template: str, version: str = "") -> images.Image | None:
        """The base image behind `template` (for a snapshot template: the one its guest booted from),
        in `version` when that is still on disk, else the current one."""
        snapshot = self.templates.get(template)
        if snapshot is not None:
            template, version = snapshot.image, snapshot.image_version
        if version:
            exact = images.find_version(template, version, self.config.data_dir)
            if exact is not None:
                return exact
        return images.find(template, self.config.data_dir)

    def _admit_memory(self, memory_mb: int) -> None:
        available_mb = psutil.virtual_memory().available >> 20
        if memory_mb + self.config.reserved_memory_mb > available_mb:
            raise SandboxError(
                "resource_exhausted",
                f"not enough memory: {memory_mb} MiB asked, {available_mb} MiB available "
                f"({self.config.reserved_memory_mb} MiB kept for the host)",
            )
        if self.driver.name == "qemu":
            free_mb = _disk.free_bytes(self.config.memory_dir) >> 20
            if memory_mb > free_mb:
                raise SandboxError(
                    "resource_exhausted",
                    f"not enough room for guest RAM in {self.config.memory_dir}: {memory_mb} MiB asked, "
                    f"{free_mb} MiB free",
                )

    def _memory_file(self, sandbox: Sandbox) -> Path | None:
        """The file backing a QEMU guest's RAM while it runs (Firecracker keeps RAM to itself)."""
        if self.driver.name != "qemu":
            return None
        return self.config.memory_dir / f"{self.config.name_prefix}-{sandbox.id}.mem"

    async def create(self, params: SandboxParams) -> Sandbox:
        template = self.templates.get(params.template)
        if template is not None:  # its shape is its snapshot's
            params = dataclasses.replace(
                params, vcpus=template.vcpus, memory_mb=template.memory_mb, disk_size_mb=template.disk_size_mb
            )
        image = self._validate(params)
        workdir = self.config.sandboxes_dir / params.sandbox_id
        sandbox = Sandbox(
            params=params,
            workdir=workdir,
            image_name=image.template,
            image_version=image.version,
            kernel_version=image.kernel_version,
        )
        self.sandboxes[sandbox.id] = sandbox
        task = asyncio.create_task(self._boot(sandbox, image))
        self._creating[sandbox.id] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() or sandbox.id not in self.sandboxes:
                raise SandboxError("aborted", f"sandbox {sandbox.id} was destroyed while it booted") from None
            raise
        finally:
            self._creating.pop(sandbox.id, None)

    async def _boot(self, sandbox: Sandbox, image: images.Image) -> Sandbox:
        params = sandbox.params
        started = time.monotonic()
        try:
            sandbox.workdir.mkdir(parents=True, exist_ok=True)
            try:
                sandbox.slot = self.network.allocator.acquire()
            except NetworkExhausted as exc:
                raise SandboxError("resource_exhausted", str(exc)) from None
            sandbox.network = await self.network.setup(sandbox.slot, allow_internet=params.allow_internet)
            template = self.templates.get(params.template)
            ready = self._ready_dir(params, image)
            if template is not None:  # its guest's envd still holds the source sandbox's token
                token = str(template.meta.get("envd_access_token") or "") or None
                await self._start_from_snapshot(sandbox, image, template.directory, token)
            elif ready is not None and (ready / "vmstate").is_file():
                await self._start_from_snapshot(sandbox, image, ready)
            else:
                await self._start_cold(sandbox, image, ready)
            await self._init_envd(sandbox)
        except BaseException as exc:
            reason = _describe_failure(exc, sandbox)
            log.warning(
                "sandbox failed to boot", extra={"sandbox": sandbox.id, "error": reason.splitlines()[0]}
            )
            await self._release(sandbox)
            if isinstance(exc, asyncio.CancelledError):
                self.sandboxes.pop(sandbox.id, None)
                raise
            sandbox.status, sandbox.error = Status.ERROR, reason
            if isinstance(exc, SandboxError):
                self.sandboxes.pop(sandbox.id, None)  # refused before anything ran: nothing to report
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
                "host_ip": sandbox.host_ip,
            },
        )
        return sandbox

    async def _start_cold(self, sandbox: Sandbox, image: images.Image, ready: Path | None) -> None:
        """Boot from the image's kernel and disk. With `ready`, the fresh guest is checkpointed there once
        envd answers, before anything of the user's touches it: later sandboxes of its shape start from it."""
        raw = self.driver.name == "firecracker"
        disk = sandbox.workdir / ("rootfs.raw" if raw else "rootfs.qcow2")
        create_disk = _disk.create_copy if raw else _disk.create_overlay
        sandbox.disk = await create_disk(image.rootfs, disk, sandbox.params.disk_size_mb)
        vm = sandbox.vm = await self.driver.start(self._spec(sandbox, image))
        await self._attach(sandbox, access_token=None)
        if not await _readiness.wait_ready(sandbox.host_ip, image, alive=lambda: vm.returncode is None):
            ready = None  # a guest whose template services did not come up is never a ready snapshot
        if ready is not None:
            await self._checkpoint_ready(sandbox, ready)

    async def _start_from_snapshot(
        self, sandbox: Sandbox, image: images.Image, snapshot: Path, access_token: str | None = None
    ) -> None:
        """Restore a ready snapshot or a template: its disk under a new overlay, its memory mapped
        copy-on-write (shared with every sibling until written), its device state loaded."""
        sandbox.disk = await _disk.create_overlay(
            snapshot / "rootfs.qcow2", sandbox.workdir / "rootfs.qcow2", sandbox.params.disk_size_mb, "qcow2"
        )
        memory = snapshot / "memory"  # absent when the RAM travels inside vmstate (a clone's pause)
        sandbox.memory_source = memory if memory.is_file() else None
        sandbox.vm = await self.driver.restore(self._spec(sandbox, image), snapshot)
        sandbox.from_snapshot = True
        await self._attach(sandbox, access_token=access_token)

    async def _attach(self, sandbox: Sandbox, access_token: str | None) -> None:
        """Put a started VMM in its cgroup, watch it, and wait until its envd answers."""
        vm, params = sandbox.vm, sandbox.params
        assert vm is not None
        self.cgroups.place(
            self._cgroup_name(sandbox),
            vm.pid,
            Limits(memory_bytes=(params.memory_mb + self.config.vmm_overhead_mb) << 20, cpus=params.vcpus),
        )
        self._spawn(self._watch(sandbox))
        sandbox.envd = EnvdClient(sandbox.host_ip, access_token=access_token)
        await sandbox.envd.wait_healthy(self.config.boot_timeout_s, alive=lambda: vm.returncode is None)

    async def _init_envd(self, sandbox: Sandbox) -> None:
        """envd's /init after a boot or a restore: token, user, env and clock, plus what makes this guest
        itself when it was restored from a shared snapshot (hostname, a reseeded random pool)."""
        params = sandbox.params
        assert sandbox.envd is not None
        await sandbox.envd.init(
            access_token=params.envd_access_token or None,
            default_user=params.default_user or self.config.default_user,
            env=params.default_env,
            hostname=sandbox.id,
            entropy=os.urandom(64),
        )

    def _ready_dir(self, params: SandboxParams, image: images.Image) -> Path | None:
        """Where the ready snapshot of this shape lives; None when sandboxes of it always boot."""
        if params.cold_boot or not self.config.ready_snapshots or self.driver.name != "qemu":
            return None
        machine = f"{self.driver.name}-{self.accelerator.accelerator.value}"
        shape = f"{params.vcpus}cpu-{params.memory_mb}m-{params.disk_size_mb}d"
        return self.config.data_dir / "ready" / machine / f"{image.template}-{image.version}" / shape

    async def _checkpoint_ready(self, sandbox: Sandbox, ready: Path) -> None:
        """Snapshot a just-booted guest (before /init) into `ready`, then let it run on. Best effort: a
        failure costs later sandboxes only their fast start."""
        vm, envd = sandbox.vm, sandbox.envd
        assert vm is not None and envd is not None and sandbox.disk is not None
        partial = ready.with_name(f"{ready.name}.partial-{sandbox.id}")
        started = time.monotonic()
        try:
            partial.mkdir(parents=True)
            await envd.prepare_snapshot()
            await vm.snapshot(partial)
            await _disk.copy_sparse(sandbox.disk, partial / "rootfs.qcow2")
            meta = {**self._snapshot_meta(sandbox), "kind": "ready"}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
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

    def _snapshot_meta(self, sandbox: Sandbox) -> dict[str, Any]:
        return {
            "vmm": self.driver.name,
            "vcpus": sandbox.params.vcpus,
            "memory_mb": sandbox.params.memory_mb,
            "disk_size_mb": sandbox.params.disk_size_mb,
            "template": sandbox.params.template,
            "image": sandbox.image_name,
            "image_version": sandbox.image_version,
            "accelerator": self.accelerator.accelerator.value,
            "created_at": time.time(),
        }

    def _cgroup_name(self, sandbox: Sandbox) -> str:
        return f"{self.config.name_prefix}-{sandbox.id}"

    def _spec(self, sandbox: Sandbox, image: images.Image) -> VMSpec:
        assert sandbox.network is not None and sandbox.disk is not None
        firecracker = self.driver.name == "firecracker"
        cmdline = " ".join(
            [
                "root=/dev/vda rw quiet",
                sandbox.network.kernel_cmdline(),
                f"wrenn.hostname={sandbox.id}",
                f"wrenn.time={int(time.time())}",
            ]
        )
        return VMSpec(
            vm_id=sandbox.id,
            vcpus=sandbox.params.vcpus,
            memory_mib=sandbox.params.memory_mb,
            kernel=image.vmlinux if firecracker else image.vmlinuz,
            initrd=image.initrd,
            cmdline=cmdline,
            rootfs=sandbox.disk,
            rootfs_format="raw" if firecracker else "qcow2",
            workdir=sandbox.workdir,
            accelerator=self.accelerator.accelerator,
            tap=sandbox.network.tap,
            mac=sandbox.network.mac,
            netns=sandbox.network.netns,
            memory_file=sandbox.memory_source or self._memory_file(sandbox),
            memory_shared=sandbox.memory_source is None,
        )

    async def _watch(self, sandbox: Sandbox) -> None:
        """Notice a VMM that exits on its own: the sandbox becomes `error`, its resources are freed."""
        vm = sandbox.vm
        if vm is None:
            return
        code = await vm.wait()
        if sandbox.vm is not vm or sandbox.status not in (Status.RUNNING, Status.PENDING):
            return
        if sandbox.status is Status.PENDING:
            return  # the boot path reports it, with the console tail
        sandbox.status = Status.ERROR
        tail = console_tail(sandbox.workdir / "console.log", 2000)
        sandbox.error = f"the VM exited unexpectedly (status {code})\n{tail}"
        log.warning("sandbox vm died", extra={"sandbox": sandbox.id, "status": code})
        await self._release(sandbox)

    # --- destroy -------------------------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        cold = self.cold
        if (
            sandbox_id not in self.sandboxes
            and cold
            and SANDBOX_ID.match(sandbox_id)
            and cold.exists(sandbox_id)
        ):
            cold.delete(sandbox_id)  # hibernated: its archive is all there is
            log.info("hibernated sandbox destroyed", extra={"sandbox": sandbox_id})
            return
        sandbox = self.get(sandbox_id)
        booting = self._creating.get(sandbox_id)
        self.sandboxes.pop(sandbox_id, None)
        if booting is not None and not booting.done():
            booting.cancel()
            with contextlib.suppress(BaseException):
                await booting
        async with sandbox.lock:  # a pause or resume under way finishes first
            await self._release(sandbox)
        shutil.rmtree(sandbox.workdir, ignore_errors=True)
        self.metrics.drop(sandbox_id)
        log.info("sandbox destroyed", extra={"sandbox": sandbox_id})

    async def _release(self, sandbox: Sandbox) -> None:
        """Free everything the sandbox holds. Safe to call at any stage and more than once."""
        await self._release_runtime(sandbox)
        disk, sandbox.disk = sandbox.disk, None
        if disk is not None:
            _disk.remove(disk)
        shutil.rmtree(sandbox.snapshot_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            sandbox.state_file.unlink()

    async def _release_runtime(self, sandbox: Sandbox) -> None:
        """Free what only a running sandbox holds (VMM, RAM, cgroup, envd client, network slot); a paused
        one keeps its disk and snapshot."""
        vm, sandbox.vm = sandbox.vm, None
        if vm is not None:
            with contextlib.suppress(Exception):
                await vm.kill()
        kill_all(self.cgroups, self._cgroup_name(sandbox))
        self.cgroups.remove(self._cgroup_name(sandbox))
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
        memory = self._memory_file(sandbox)
        if memory is not None:
            memory.unlink(missing_ok=True)

    # --- background loops ----------------------------------------------------------------------------

    async def _reaper(self) -> None:
        """Stop running sandboxes that have been idle longer than their timeout."""
        while True:
            await asyncio.sleep(self.config.reaper_interval_s)
            now = time.time()
            for sandbox in list(self.sandboxes.values()):
                timeout = sandbox.params.timeout_sec
                if (
                    sandbox.status is Status.RUNNING
                    and timeout > 0
                    and now - sandbox.last_active_at > timeout
                ):
                    log.info("sandbox idle timeout", extra={"sandbox": sandbox.id, "timeout_s": timeout})
                    self._spawn(self._expire(sandbox))

    async def _expire(self, sandbox: Sandbox) -> None:
        """The idle timeout: pause (when asked for) or stop. A pause that fails stops the sandbox."""
        if sandbox.params.auto_pause:
            try:
                await self.pause(sandbox.id, idle_only=True)
                return
            except SandboxError as exc:
                if exc.code == "aborted":  # used again meanwhile: not idle any more
                    return
                log.warning("auto-pause failed", extra={"sandbox": sandbox.id, "error": exc.message})
        async with sandbox.lock:
            if sandbox.status is Status.RUNNING:
                sandbox.status, sandbox.error = Status.STOPPED, "idle timeout"
                await self._release(sandbox)

    async def _sampler(self) -> None:
        while True:
            for sandbox in list(self.sandboxes.values()):
                vm = sandbox.vm
                if sandbox.status is Status.RUNNING and vm is not None:
                    disk = _disk.allocated_bytes(sandbox.disk) if sandbox.disk else 0
                    self.metrics.sample(sandbox.id, vm.pid, sandbox.params.vcpus, disk)
            await asyncio.sleep(self.config.metrics_interval_s)

    # --- recovery after a restart --------------------------------------------------------------------

    async def recover(self) -> None:
        """Adopt the sandboxes a previous run left running; clean up everything else it left."""
        keep: set[int] = set()
        for state_file in sorted(self.config.sandboxes_dir.glob("*/state.json")):
            sandbox = await self._adopt(state_file)
            if sandbox is not None and sandbox.slot is not None:
                keep.add(sandbox.slot)
        removed = await self.network.cleanup_stale(keep=keep)
        adopted = {self._cgroup_name(s) for s in self.sandboxes.values()}
        stale_groups = [
            g
            for g in self.cgroups.stale()
            if g.startswith(f"{self.config.name_prefix}-") and g not in adopted
        ]
        for group in stale_groups:
            kill_all(self.cgroups, group)
            self.cgroups.remove(group)
        for directory in self.config.sandboxes_dir.iterdir():
            if directory.is_dir() and directory.name not in self.sandboxes:
                shutil.rmtree(directory, ignore_errors=True)
        live = {self._memory_file(s) for s in self.sandboxes.values() if s.vm is not None}
        for memory in self.config.memory_dir.glob(f"{self.config.name_prefix}-*.mem"):
            if memory not in live:
                memory.unlink(missing_ok=True)
        if removed or stale_groups or self.sandboxes:
            log.info(
                "recovered after restart",
                extra={
                    "adopted": len(self.sandboxes),
                    "stale_network": len(removed),
                    "stale_cgroups": len(stale_groups),
                },
            )

    async def _adopt(self, state_file: Path) -> Sandbox | None:
        try:
            state = load_state(state_file)
            sandbox = Sandbox.from_state(state_file.parent, state)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("unreadable sandbox state", extra={"path": str(state_file), "error": str(exc)})
            return None
        params = sandbox.params
        if sandbox.status in (Status.PAUSED, Status.ERROR) and sandbox.disk is not None:
            return self._adopt_stopped(sandbox)
        pid = state.get("vmm_pid")
        slot = state.get("slot")
        if not isinstance(pid, int):
            pid = None
        alive = pid is not None and _is_vmm_of(pid, params.sandbox_id)
        image = self._image(sandbox.image_name, sandbox.image_version)
        if (
            pid is None
            or not alive
            or slot is None
            or image is None
            or slot not in self.network.list_existing()
        ):
            if pid is not None and alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            log.info("stale sandbox cleaned", extra={"sandbox": params.sandbox_id, "vmm_alive": alive})
            return None
        sandbox.status = Status.RUNNING
        sandbox.slot = slot
        self.network.allocator.claim(slot)
        sandbox.network = self.network.describe(slot)
        try:
            sandbox.vm = await self.driver.attach(self._spec(sandbox, image), pid)
            sandbox.envd = EnvdClient(sandbox.host_ip, access_token=params.envd_access_token or None)
        except DriverError as exc:
            log.warning("cannot adopt sandbox", extra={"sandbox": params.sandbox_id, "error": str(exc)})
            await self._release(sandbox)
            return None
        self.sandboxes[sandbox.id] = sandbox
        self._spawn(self._watch(sandbox))
        log.info("sandbox adopted", extra={"sandbox": sandbox.id, "pid": pid})
        return sandbox

    def _adopt_stopped(self, sandbox: Sandbox) -> Sandbox:
        """A sandbox a previous run paused (or failed to resume): its disk and snapshot are all it has.
        One whose snapshot has gone missing is kept as `error`, so the control plane learns why."""
        if sandbox.status is Status.PAUSED and not (sandbox.snapshot_dir / "vmstate").is_file():
            sandbox.status, sandbox.error = Status.ERROR, "the pause snapshot is missing from this host"
            sandbox.save()
        self.sandboxes[sandbox.id] = sandbox
        log.info("sandbox adopted", extra={"sandbox": sandbox.id, "status": sandbox.status.value})
        return sandbox


async def _check_thawed(sandbox: Sandbox, sandbox_id: str) -> None:
    """An archive comes from storage that other hosts write: everything in it that becomes a path or a
    file the VMM opens is checked before it is used. Its state names this sandbox and only names; its
    files are plain files (no links or device nodes); its disk is a self-contained qcow2 (no backing or
    external data file that would open a host path)."""
    if sandbox.id != sandbox_id:
        raise ValueError(f"the archive is of sandbox {sandbox.id!r}, not {sandbox_id!r}")
    if not TEMPLATE_NAME.match(sandbox.params.template) or not TEMPLATE_NAME.match(sandbox.image_name):
        raise ValueError("the archive names a template that is not a name")
    if sandbox.image_version and not images.VERSION.match(sandbox.image_version):
        raise ValueError("the archive names an image version that is not one")
    for path in sandbox.workdir.rglob("*"):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ValueError(f"the archive holds {path.name!r}, which is not a plain file")
    assert sandbox.disk is not None
    await _disk.check_standalone(sandbox.disk)


def _is_vmm_of(pid: int, sandbox_id: str) -> bool:
    """True when `pid` is a live VMM process started for `sandbox_id` (not a recycled pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return sandbox_id.encode() in args and any(b"qemu" in a or b"firecracker" in a for a in args[:1])


def _tree_bytes(path: Path) -> int:
    """Bytes a directory's files really take on disk."""
    return sum(_disk.allocated_bytes(f) for f in path.rglob("*") if f.is_file())


def _describe_failure(exc: BaseException, sandbox: Sandbox) -> str:
    if isinstance(exc, DriverError):
        tail = exc.console_tail or console_tail(sandbox.workdir / "console.log", 2000)
        return f"{exc}\n--- console ---\n{tail}" if tail else str(exc)
    if isinstance(exc, EnvdUnavailable):
        tail = console_tail(sandbox.workdir / "console.log", 2000)
        return f"{exc}\n--- console ---\n{tail}"
    if isinstance(exc, SandboxError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}"
