"""Giving a sandbox a running VM: the base image behind it, the memory it may take, its `VMSpec`, a
network slot, and a started VMM attached (cgroup, death watch, envd answering, envd's /init).

Shared by a create (boot or restore), a resume and an adoption after a restart. What the VMM needs (kernel
kind, disk format, RAM file) comes from the driver's `Capabilities`, never from its name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from wrenn import images

from . import _disk
from ._admission import disk_file_limit
from ._cgroup import CPU_WEIGHT, CPU_WEIGHT_BACKGROUND, Limits
from ._envd import EnvdClient, EnvdUnavailable
from ._errors import SandboxError
from ._machine import how_to_migrate, incompatibility
from ._netpolicy import install_ca
from ._sandbox import Sandbox
from ._table import SandboxTable
from ._templates import TemplateStore
from .network import NetworkExhausted
from .vmm import Confinement, DriverError, Kernel, VMSpec, console_tail

log = logging.getLogger("wrenn.agent")


class Launcher:
    def __init__(self, table: SandboxTable, templates: TemplateStore) -> None:
        self.table = table
        self.templates = templates

    def image(self, template: str, version: str = "") -> images.Image | None:
        """The base image behind `template` (for a snapshot template: the one its guest booted from),
        in `version` when that is still on disk, else the current one."""
        data_dir = self.table.config.data_dir
        snapshot = self.templates.get(template)
        if snapshot is not None and (built := snapshot.boot_image()) is not None:
            return built
        if snapshot is not None:
            template, version = snapshot.image, snapshot.image_version
        if version:
            exact = images.find_version(template, version, data_dir)
            if exact is not None:
                return exact
        return images.find(template, data_dir)

    def confine(self, sandbox: Sandbox) -> Confinement:
        """Who the sandbox's next VMM runs as (a uid of its network slot's) and its cgroup, made now with
        its limits: memory (guest RAM plus the VMM's overhead), CPU, pids and disk I/O."""
        params, config = sandbox.params, self.table.config
        assert sandbox.slot is not None
        limits = Limits(
            memory_bytes=(params.memory_mb + config.vmm_overhead_mb) << 20,
            cpus=params.vcpus,
            io=self.table.io_limit,
            weight=CPU_WEIGHT_BACKGROUND if sandbox.pool_member else CPU_WEIGHT,
        )
        procs = self.table.cgroups.create(self.table.cgroup_name(sandbox), limits)
        uid = config.vmm_uid(sandbox.slot)
        return Confinement(
            uid=uid, gid=uid, cgroups=procs, max_file_bytes=disk_file_limit(params.disk_size_mb)
        )

    def spec(self, sandbox: Sandbox, image: images.Image, confinement: Confinement | None = None) -> VMSpec:
        """The VM of `sandbox`; with `confinement` (a VMM about to start; none for one being adopted)."""
        assert sandbox.network is not None and sandbox.disk is not None
        capabilities = self.table.capabilities
        cmdline = " ".join(
            [
                "root=/dev/vda rw quiet",
                sandbox.network.kernel_cmdline(),
                f"wrenn.hostname={sandbox.id}",
                f"wrenn.time={int(time.time())}",
            ]
        )
        return VMSpec(
            vm_id=sandbox.host_name,
            vcpus=sandbox.params.vcpus,
            memory_mib=sandbox.params.memory_mb,
            kernel=image.vmlinuz if capabilities.kernel is Kernel.BZIMAGE else image.vmlinux,
            initrd=image.initrd,
            cmdline=cmdline,
            rootfs=sandbox.disk,
            rootfs_format=capabilities.disk_format,
            backing=tuple(_disk.backing_chain(sandbox.disk_base)),
            workdir=sandbox.workdir,
            accelerator=self.table.accelerator.accelerator,
            tap=sandbox.network.tap,
            mac=sandbox.network.mac,
            netns=sandbox.network.netns,
            memory_file=sandbox.memory_source or self.table.memory_file(sandbox),
            memory_shared=sandbox.memory_source is None,
            confinement=confinement,
        )

    def start_spec(self, sandbox: Sandbox, image: images.Image) -> VMSpec:
        """The VM of `sandbox` for a VMM about to start: in its jail, under its cgroup."""
        return self.spec(sandbox, image, self.confine(sandbox))

    async def plug(self, sandbox: Sandbox) -> None:
        """A network slot for the sandbox, and its namespace, veth and TAP."""
        network = self.table.network
        try:
            sandbox.slot = network.allocator.acquire()
        except NetworkExhausted as exc:
            raise SandboxError("resource_exhausted", str(exc)) from None
        sandbox.network = await network.setup(sandbox.slot, policy=sandbox.policy, sandbox_id=sandbox.id)

    async def attach(self, sandbox: Sandbox, access_token: str | None) -> None:
        """Watch a started VMM (already in its cgroup: the jailer put it there) and wait until its envd
        answers."""
        vm, config = sandbox.vm, self.table.config
        assert vm is not None
        self.table.watch(sandbox)
        sandbox.envd = EnvdClient(sandbox.host_ip, access_token=access_token)
        await sandbox.envd.wait_healthy(config.boot_timeout_s, alive=lambda: vm.returncode is None)

    async def init_envd(self, sandbox: Sandbox) -> None:
        """envd's /init after a boot or a restore: token, user, env and clock, plus what makes this guest
        itself when it was restored from a shared snapshot (hostname, a reseeded random pool)."""
        params = sandbox.params
        assert sandbox.envd is not None
        await sandbox.envd.init(
            access_token=params.envd_access_token or None,
            default_user=params.default_user or self.table.config.default_user,
            env=params.default_env,
            workdir=params.default_workdir or None,
            hostname=sandbox.id,
            entropy=os.urandom(64),
        )
        await install_ca(sandbox, self.table.config.default_user)

    def snapshot_meta(self, sandbox: Sandbox) -> dict[str, Any]:
        """What a snapshot's `meta.json` says of the machine it was taken from."""
        return {
            # what restores it: the same VMM, version series and machine (`_machine.incompatibility`)
            **self.table.machine.meta(sandbox.envd_version),
            "vcpus": sandbox.params.vcpus,
            "memory_mb": sandbox.params.memory_mb,
            "disk_size_mb": sandbox.params.disk_size_mb,
            "template": sandbox.params.template,
            "image": sandbox.image_name,
            "image_version": sandbox.image_version,
            "accelerator": self.table.accelerator.accelerator.value,
            "created_at": time.time(),
            # what the disk copied beside it was made over: its backing, as recorded, never as its header says
            "disk_base": str(sandbox.disk_base) if sandbox.disk_base else None,
        }

    def restorable(self, snapshot: Path) -> str | None:
        """Why this host's VMM cannot restore the snapshot in `snapshot` (its `meta.json`); None when it
        can, or when there is no readable record to judge by (restored as before)."""
        try:
            meta = json.loads((snapshot / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return incompatibility(meta, self.table.machine) if isinstance(meta, dict) else None

    def check_restorable(self, snapshot: Path, what: str, how: str | None = None) -> None:
        """Refuse (`failed_precondition`, before anything starts) a snapshot this host cannot restore,
        saying what it was taken with, what is installed and how to migrate (`how`: a paused sandbox's
        ways). Where it lies is logged, never answered."""
        reason = self.restorable(snapshot)
        if reason is None:
            return
        meta = json.loads((snapshot / "meta.json").read_text())
        log.warning("snapshot not restorable here", extra={"snapshot": str(snapshot), "reason": reason})
        raise SandboxError(
            "failed_precondition", f"{what} cannot be restored here: {reason}; {how or how_to_migrate(meta)}"
        )


def describe_failure(exc: BaseException, sandbox: Sandbox) -> str:
    """Why a boot or a restore failed, for the sandbox's `error` and the caller: the console's tail where
    the guest may have said why."""
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
