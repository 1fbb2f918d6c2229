"""What a sandbox's snapshot is used for: pause and resume, hibernation to cold storage and back (thaw),
and templates made from a paused sandbox.

A pause writes the snapshot into the sandbox's `snapshot/` and releases what only a running sandbox holds
(`SandboxTable.release_runtime`); a resume restores it into a new VMM in a fresh network slot. See
docs/snapshots.md for the formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from wrenn import images

from . import _disk
from ._admission import Admission
from ._cold import ColdStorageError, ColdStore
from ._errors import SandboxError
from ._launch import Launcher, describe_failure
from ._sandbox import SANDBOX_ID, Sandbox, Status, load_state
from ._table import SandboxTable
from ._templates import NAME as TEMPLATE_NAME
from ._templates import Template, TemplateStore
from .network import EgressPolicy

log = logging.getLogger("wrenn.agent")


class Snapshots:
    def __init__(
        self,
        table: SandboxTable,
        launcher: Launcher,
        templates: TemplateStore,
        admission: Admission,
        cold: ColdStore | None,
    ) -> None:
        self.table = table
        self.launcher = launcher
        self.templates = templates
        self.admission = admission
        self.cold = cold

    # --- pause and resume ----------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, *, idle_only: bool = False) -> Sandbox:
        """Snapshot the VM into `snapshot_dir`, then free its VMM, RAM, cgroup and network slot. The
        sandbox runs on, untouched, when the snapshot fails. `idle_only` (the reaper) gives up with
        `aborted` when the sandbox was used while the lock was awaited."""
        sandbox = self.table.get(sandbox_id)
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
            partial.mkdir(mode=0o700)
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
            meta = {**self.launcher.snapshot_meta(sandbox), "kind": "pause"}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1))
            sandbox.memory_source = None  # a clone's RAM went into vmstate: it resumes as its own
            shutil.rmtree(sandbox.snapshot_dir, ignore_errors=True)
            partial.rename(sandbox.snapshot_dir)
            sandbox.status, sandbox.paused_at = Status.PAUSED, time.time()
            await self.table.release_runtime(sandbox)
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

    async def resume(self, sandbox_id: str, policy: EgressPolicy | None = None) -> Sandbox:
        """Restore a paused sandbox into a new VMM in a fresh network slot and re-initialise envd
        (clock, token, env). A snapshot that cannot be restored turns the sandbox to `error`."""
        sandbox = self.table.get(sandbox_id)
        async with sandbox.lock:
            if policy is not None:
                sandbox.policy, sandbox.secrets_loaded = policy, True
            if sandbox.status is Status.RUNNING:
                sandbox.touch()
                return sandbox
            if sandbox.status is not Status.PAUSED:
                detail = f": {sandbox.error}" if sandbox.error else ""
                raise SandboxError(
                    "failed_precondition", f"sandbox {sandbox_id} is {sandbox.status.value}{detail}"
                )
            self.launcher.check_restorable(
                sandbox.snapshot_dir, f"the snapshot of paused sandbox {sandbox_id}"
            )  # it stays paused: the snapshot is fine, this host's VMM is not the one it needs
            image = self.launcher.image(sandbox.image_name or sandbox.params.template, sandbox.image_version)
            if image is None:
                raise SandboxError(
                    "failed_precondition", f"the image of sandbox {sandbox_id} is gone from this host"
                )
            self.admission.check(sandbox.params, held=sandbox)
            started = time.monotonic()
            try:
                await self._restore(sandbox, image)
            except BaseException as exc:
                await self.table.release_runtime(sandbox)
                if isinstance(exc, asyncio.CancelledError) or (
                    isinstance(exc, SandboxError) and exc.code == "resource_exhausted"
                ):
                    raise  # the snapshot is fine: the sandbox stays paused
                reason = describe_failure(exc, sandbox)
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
        await self.launcher.plug(sandbox)
        sandbox.vm = await self.table.driver.restore(
            self.launcher.start_spec(sandbox, image), sandbox.snapshot_dir
        )
        await self.launcher.attach(sandbox, access_token=sandbox.params.envd_access_token or None)
        await self.launcher.init_envd(sandbox)

    # --- hibernation -----------------------------------------------------------------------------------

    def _cold(self) -> ColdStore:
        if self.cold is None:
            raise SandboxError("failed_precondition", "this host has no cold storage (--cold-storage)")
        return self.cold

    def drop_archive(self, sandbox_id: str) -> bool:
        """Delete a hibernated sandbox (its archive is all there is of it); False when there is none."""
        cold = self.cold
        if sandbox_id in self.table.sandboxes or not cold or not SANDBOX_ID.match(sandbox_id):
            return False
        if not cold.exists(sandbox_id):
            return False
        cold.delete(sandbox_id)
        log.info("hibernated sandbox destroyed", extra={"sandbox": sandbox_id})
        return True

    async def hibernate(self, sandbox_id: str) -> int:
        """Move a paused sandbox to cold storage (its snapshot, state and flattened disk, compressed) and
        forget it here; the archive's size. `thaw` on any host reaching the storage brings it back."""
        cold = self._cold()
        sandbox = self.table.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status is not Status.PAUSED or sandbox.disk is None:
                raise SandboxError(
                    "failed_precondition",
                    f"sandbox {sandbox_id} is {sandbox.status.value}: only a paused one",
                )
            stage = sandbox.workdir / "hibernate"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(mode=0o700)
            try:
                await _disk.flatten(
                    sandbox.disk, _disk.backing_chain(sandbox.disk_base), stage / "rootfs.qcow2"
                )
                for item in sandbox.snapshot_dir.iterdir():
                    os.link(item, stage / item.name)
                sandbox.save()
                shutil.copy(sandbox.state_file, stage / "state.json")
                size = await cold.put(sandbox_id, stage)
            except (OSError, _disk.DiskError, ColdStorageError) as exc:
                raise SandboxError("internal", f"cannot hibernate sandbox {sandbox_id}: {exc}") from None
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            self.table.sandboxes.pop(sandbox_id, None)
            await self.table.release(sandbox)
        self.table.forget(sandbox)
        log.info("sandbox hibernated", extra={"sandbox": sandbox_id, "archive_bytes": size})
        return size

    async def thaw(self, sandbox_id: str, policy: EgressPolicy | None = None) -> Sandbox:
        """Bring a hibernated sandbox back from cold storage onto this host and resume it."""
        if sandbox_id in self.table.sandboxes:
            return await self.resume(sandbox_id, policy)
        cold = self._cold()
        if not SANDBOX_ID.match(sandbox_id) or not cold.exists(sandbox_id):
            raise SandboxError("not_found", f"no hibernated sandbox {sandbox_id!r} in cold storage")
        workdir = self.table.config.sandboxes_dir / sandbox_id
        archive = cold.path(sandbox_id)
        # What it unpacks to is known only once unpacked (checked then by `resume`); the archive's own
        # size is the least of it.
        self.admission.check_disk(incoming_bytes=archive.stat().st_size)
        shutil.rmtree(workdir, ignore_errors=True)
        (workdir / "snapshot").mkdir(mode=0o700, parents=True)
        try:
            await cold.get(sandbox_id, workdir)
            for item in ("vmstate", "memory", "meta.json"):
                if (workdir / item).exists():
                    (workdir / item).rename(workdir / "snapshot" / item)
            state = load_state(workdir / "state.json")
            state["disk"] = str(workdir / "rootfs.qcow2")
            state["disk_base"] = None  # flattened: it stands alone
            state["memory_source"] = None
            state["vm_name"] = ""  # its directory here is named by its id
            thawed = Sandbox.from_state(workdir, state)
            await _check_thawed(thawed, sandbox_id)
        except (OSError, ValueError, TypeError, KeyError, ColdStorageError, _disk.DiskError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise SandboxError(
                "data_loss", f"the archive of sandbox {sandbox_id} is unusable: {exc}"
            ) from None
        self.table.add_stopped(thawed).save()
        try:
            resumed = await self.resume(sandbox_id, policy)
        except SandboxError as exc:
            if exc.code == "resource_exhausted":  # it stays hibernated: the archive is all there is of it
                self.table.sandboxes.pop(sandbox_id, None)
                await self.table.release(thawed)
                self.table.forget(thawed)
            raise
        cold.delete(sandbox_id)
        log.info("sandbox thawed", extra={"sandbox": sandbox_id})
        return resumed

    # --- templates -----------------------------------------------------------------------------------

    async def create_template(self, sandbox_id: str, name: str) -> Template:
        """A template from a paused sandbox's snapshot and disk; the sandbox stays paused."""
        sandbox = self.table.get(sandbox_id)
        async with sandbox.lock:
            if sandbox.status is not Status.PAUSED or sandbox.disk is None:
                raise SandboxError(
                    "failed_precondition",
                    f"sandbox {sandbox_id} is {sandbox.status.value}: a template is made from a paused one",
                )
            if not self.table.capabilities.shared_snapshots:
                raise SandboxError(
                    "failed_precondition",
                    f"{self.table.driver.name} on this host cannot start sandboxes from a shared snapshot: "
                    "no templates here",
                )
            # its meta records this host's VMM: a snapshot an older one took is no template for it
            self.launcher.check_restorable(sandbox.snapshot_dir, f"paused sandbox {sandbox_id}'s snapshot")
            meta = {
                **self.launcher.snapshot_meta(sandbox),
                "source": sandbox_id,
                "envd_access_token": sandbox.params.envd_access_token,  # what its guest's envd expects
            }
            try:
                return await self.templates.create(name, sandbox.snapshot_dir, sandbox.disk, meta)
            except (OSError, _disk.DiskError) as exc:
                raise SandboxError("internal", f"cannot make template {name!r}: {exc}") from None

    async def delete_template(self, name: str) -> None:
        """Delete a template no sandbox depends on (their disks are overlays on its disk)."""
        users = sorted(s.id for s in self.table.sandboxes.values() if s.params.template == name)
        if users:
            raise SandboxError(
                "failed_precondition", f"template {name!r} is in use by sandboxes {', '.join(users)}"
            )
        await asyncio.to_thread(self.templates.delete, name)


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


def _tree_bytes(path: Path) -> int:
    """Bytes a directory's files really take on disk."""
    return sum(_disk.allocated_bytes(f) for f in path.rglob("*") if f.is_file())
