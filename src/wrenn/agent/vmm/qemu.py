"""The QEMU driver: `qemu-system-x86_64 -M microvm`, virtio-mmio disk and NIC, controlled over QMP.

Under TCG (software emulation) the guest kernel gets `tsc_early_khz=`: microvm has no HPET or PM timer,
and without a known TSC frequency a third of TCG boots hang in timer calibration (feasibility.md §3).

QEMU starts through the jailer (`_jail`): as a uid of its own, without capabilities, in a root holding
only its program, the kernel and its RAM file; its seccomp sandbox is on. It opens no host path for its
disks, QMP, console or TAP: the agent hands it descriptors. Disks are a `-blockdev` chain of `/dev/fdset`
descriptors, the overlay read-write and every backing file (a template's or a ready snapshot's disk, the
image) read-only; QMP and the console are listening sockets the agent made (`qmp.sock`, `console.sock` in
the sandbox's directory), so a restarted agent reconnects to both; the console and QEMU's own stderr are
copied by the agent into size-capped logs (`console.log`, `qemu.log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from .. import _disk
from ._capped import CappedLog, LogPumps
from ._driver import (
    MEMORY,
    VMSTATE,
    Accelerator,
    Capabilities,
    Confinement,
    DriverError,
    Kernel,
    VMSpec,
    console_tail,
)
from ._jail import Bind, Jail, MemoryFile
from ._pidproc import PidProcess, ProcessVM, runs_vm

log = logging.getLogger("wrenn.agent.qemu")

#: The microvm machine as feasibility.md measured it: no option ROMs, a serial port, an RTC, one IOAPIC.
MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=on,ioapic2=off"
#: QEMU's seccomp sandbox: no obsolete calls, no set*id, no spawning, no resource control.
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
QMP_DEADLINE_S = 10.0
#: How long saving or loading a snapshot's device state may take.
MIGRATION_DEADLINE_S = 120.0


def host_tsc_khz() -> int:
    """The host's TSC frequency in kHz, as the guest should assume it (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 2_300_000
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    return int(float(match.group(1)) * 1000) if match else 2_300_000


def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"version ([\w.+~:-]+)", out)
    return match.group(1) if match else out.strip().splitlines()[0]


class QemuVM(ProcessVM):
    def __init__(
        self, spec: VMSpec, proc: asyncio.subprocess.Process | PidProcess, qmp: QMPClient, logs: LogPumps
    ) -> None:
        super().__init__(spec, proc)
        self._qmp = qmp
        self._logs = logs

    async def qmp(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command; DriverError when QEMU refuses or is gone."""
        try:
            return await self._qmp.execute(command, arguments or None)
        except (QMPError, OSError, EOFError) as exc:
            raise DriverError(f"QMP {command} failed: {exc}", console_tail(self.spec.console_log)) from exc

    async def pause(self) -> None:
        await self.qmp("stop")

    async def resume(self) -> None:
        await self.qmp("cont")

    async def status(self) -> str:
        return str((await self.qmp("query-status"))["status"])

    async def send_file(self, path: Path, flags: int, name: str) -> None:
        """Open `path` here and hand the descriptor to QEMU as `name` (QMP `getfd`): QEMU needs no
        access to the snapshot directory, and its seccomp filter forbids `exec:` migration anyway."""
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            self._qmp.send_fd_scm(fd)
            await self.qmp("getfd", fdname=name)
        except (QMPError, OSError) as exc:
            raise DriverError(f"cannot pass {path.name} to QEMU: {exc}") from exc
        finally:
            os.close(fd)

    @property
    def ram_in_file(self) -> bool:
        """Guest RAM is a shared file: a snapshot copies it and leaves it out of the state stream."""
        return self.spec.memory_file is not None and self.spec.memory_shared

    async def set_migration(self, ignore_shared: bool) -> None:
        """Shared RAM stays out of the stream when `ignore_shared` (both sides must agree); the rest goes
        at full speed."""
        await self.qmp(
            "migrate-set-capabilities",
            capabilities=[{"capability": "x-ignore-shared", "state": ignore_shared}],
        )
        await self.qmp("migrate-set-parameters", **{"max-bandwidth": 1 << 40})

    async def wait_migration(self) -> None:
        deadline = time.monotonic() + MIGRATION_DEADLINE_S
        while True:
            info = await self.qmp("query-migrate")
            status = info.get("status", "none")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise DriverError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
            if time.monotonic() > deadline:
                raise DriverError(f"migration still {status} after {MIGRATION_DEADLINE_S:.0f} s")
            await asyncio.sleep(0.005)

    async def snapshot(self, directory: Path) -> None:
        started = time.monotonic()
        await self.qmp("stop")
        await self.set_migration(self.ram_in_file)
        await self.send_file(directory / VMSTATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "snapshot")
        await self.qmp("migrate", uri="fd:snapshot")
        await self.wait_migration()
        saved = time.monotonic()
        if self.ram_in_file:  # the VM is stopped: its RAM no longer changes
            assert self.spec.memory_file is not None
            await sparse_copy(self.spec.memory_file, directory / MEMORY)
        log.info(
            "snapshot written",
            extra={
                "vm": self.spec.vm_id,
                "state_ms": round((saved - started) * 1000, 1),
                "memory_ms": round((time.monotonic() - saved) * 1000, 1),
            },
        )

    async def stop(self, grace_s: float = 3.0) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(DriverError):
                await self.qmp("quit")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), grace_s)
        await self.kill()

    async def kill(self) -> None:
        await self._kill_process()
        with contextlib.suppress(Exception):
            await self._qmp.disconnect()
        await self._logs.drained()
        await self._logs.close()


@dataclass(frozen=True, slots=True)
class Layer:
    """One file of a disk's backing chain."""

    path: Path
    format: str


def blockdev_args(chain: list[Layer], fds: list[int]) -> list[str]:
    """A `-blockdev` chain named `root` over descriptors `fds` (one per layer, top first): the top
    read-write, every backing layer read-only."""
    args: list[str] = []
    below = ""
    for depth in range(len(chain) - 1, -1, -1):
        layer, top = chain[depth], depth == 0
        mode = "discard=unmap" if top else "read-only=on"
        node = "root" if top else f"layer{depth}"
        args += ["-add-fd", f"fd={fds[depth]},set={depth + 1}"]
        args += ["-blockdev", f"driver=file,node-name={node}-file,filename=/dev/fdset/{depth + 1},{mode}"]
        # `backing=` (empty) is keyval's null: a qcow2 at the bottom opens nothing its header names
        backing = f",backing={below}" if below else (",backing=" if layer.format == "qcow2" else "")
        args += ["-blockdev", f"driver={layer.format},node-name={node},file={node}-file,{mode}{backing}"]
        below = node
    return args


@contextlib.contextmanager
def _listening(path: Path) -> Iterator[socket.socket]:
    """A Unix socket listening at `path` (for QEMU to accept on, from a descriptor)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(4)
        yield sock
    finally:
        sock.close()


class QemuDriver:
    name = "qemu"
    machine = MACHINE
    #: A qcow2 overlay, the bzImage, RAM in a shared file (a pause copies it instead of streaming it),
    #: and snapshots restored into many VMs (ready snapshots, templates), which a warm pool holds stopped
    #: (QMP `stop`, `cont`). TCG or KVM.
    capabilities = Capabilities(
        disk_format="qcow2", kernel=Kernel.BZIMAGE, memory_file=True, shared_snapshots=True, kvm_only=False,
        warm_pool=True,
    )  # fmt: skip

    def __init__(
        self,
        binary: str = "qemu-system-x86_64",
        *,
        tsc_khz: int | None = None,
        jail: Jail | None = None,
        seccomp: bool = True,
    ) -> None:
        self.binary = shutil.which(binary) or binary
        self.tsc_khz = tsc_khz or host_tsc_khz()
        #: How VMMs start: jailed, or (no jail given) as the agent's own user.
        self.jail = jail or Jail(None)
        self.seccomp = seccomp

    def version(self) -> str:
        return qemu_version(self.binary)

    def command(
        self, spec: VMSpec, qmp_fd: int, console_fd: int, disk: list[str], tap_fd: int | None
    ) -> list[str]:
        """The full command line for `spec`, given the descriptors it will find open: QMP's and the
        console's listening sockets, the disk's `-blockdev` arguments and the TAP device."""
        cmdline = f"{spec.cmdline} console=ttyS0 reboot=t panic=-1"
        if spec.accelerator is Accelerator.TCG:
            cmdline += f" tsc_early_khz={self.tsc_khz}"
        args = [
            self.binary,
            "-name", spec.vm_id,
            "-M", MACHINE + (",memory-backend=mem" if spec.memory_file else ""),
            # TCG's translation cache defaults to 1 GiB, more than the cgroup allows above guest RAM
            # (vmm_overhead_mb): a busy guest got its QEMU OOM-killed. 128 MiB is plenty for one guest.
            "-accel", spec.accelerator.value + (",tb-size=128" if spec.accelerator is Accelerator.TCG else ""),  # noqa: E501
            "-cpu", "max" if spec.accelerator is Accelerator.TCG else "host",
            "-smp", str(spec.vcpus),
            "-m", f"{spec.memory_mib}M",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-chardev", f"socket,id=qmp,fd={qmp_fd},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            # wait=on: QEMU runs nothing until the agent is reading the console, so no line is lost.
            "-chardev", f"socket,id=console,fd={console_fd},server=on,wait=on",
            "-serial", "chardev:console",
            "-kernel", str(spec.kernel),
            "-append", cmdline,
            *disk,
            # An error on the disk (past its size limit) is the guest's to see; the VM is never stopped.
            "-device", "virtio-blk-device,drive=root,werror=report,rerror=report",
            "-device", "virtio-rng-device",
        ]  # fmt: skip
        if spec.initrd is not None:
            args += ["-initrd", str(spec.initrd)]
        if spec.memory_file is not None:
            share = "on" if spec.memory_shared else "off"
            args += [
                "-object",
                f"memory-backend-file,id=mem,size={spec.memory_mib}M,mem-path={spec.memory_file},share={share}",
            ]
        if spec.tap and tap_fd is not None:
            args += [
                "-netdev", f"tap,id=net0,fd={tap_fd}",
                "-device", f"virtio-net-device,netdev=net0,mac={spec.mac}",
            ]  # fmt: skip
        if self.seccomp:
            args += ["-sandbox", SECCOMP]
        return args + list(spec.extra_args)

    def owns_process(self, pid: int, vm_id: str) -> bool:
        return runs_vm(pid, "qemu", "-name", vm_id)

    async def check_jail(self, confinement: Confinement, accelerator: Accelerator) -> list[str]:
        """A machine-less QEMU (`-M none -S`) idling in a jail, with the seccomp sandbox VMs get."""
        nothing = Path("/nonexistent")
        vm = VMSpec(
            vm_id="jail-check", vcpus=1, memory_mib=16, kernel=nothing, initrd=None, cmdline="",
            rootfs=nothing, rootfs_format="raw", workdir=nothing, accelerator=accelerator,
            confinement=confinement,
        )  # fmt: skip
        argv = [
            self.binary,
            "-name",
            "jail-check",
            "-M",
            "none",
            "-accel",
            accelerator.value,
            "-display",
            "none",
        ]
        argv += ["-nodefaults", "-no-user-config", "-S"] + (["-sandbox", SECCOMP] if self.seccomp else [])
        return await self.jail.check(argv, vm, seccomp=self.seccomp)

    async def attach(self, spec: VMSpec, pid: int) -> QemuVM:
        """Take over a QEMU this agent started before a restart: its pid, its QMP socket and its console.
        (Its stderr went to the previous agent: QEMU's own messages from now on are lost.)"""
        proc = PidProcess(pid)
        client = QMPClient(spec.vm_id)
        try:
            await client.connect(str(self.qmp_path(spec)))
        except (QMPError, OSError) as exc:
            raise DriverError(f"cannot reconnect to QMP of pid {pid}: {exc}") from exc
        logs = LogPumps()
        await logs.socket(self.console_path(spec), CappedLog(spec.console_log))
        return QemuVM(spec, proc, client, logs)

    @staticmethod
    def qmp_path(spec: VMSpec) -> Path:
        return spec.workdir / "qmp.sock"

    @staticmethod
    def console_path(spec: VMSpec) -> Path:
        return spec.workdir / "console.sock"

    async def start(self, spec: VMSpec) -> QemuVM:
        return await self._launch(spec)

    async def restore(self, spec: VMSpec, directory: Path) -> QemuVM:
        """A new QEMU with `-incoming defer` loads the device state through a passed descriptor; with a
        memory file, RAM comes from a copy of the snapshot's `memory` (not through the stream), which
        the jailer makes in the VM's cgroup before QEMU starts. The snapshot's files are never QEMU's."""
        started = time.monotonic()
        state, memory = directory / VMSTATE, directory / MEMORY
        ram_in_file = memory.is_file()  # else RAM is inside the state stream
        if not state.is_file():
            raise DriverError(f"snapshot in {directory} is incomplete: {VMSTATE} is missing")
        if ram_in_file and spec.memory_file is None:
            raise DriverError("this snapshot keeps RAM in a file: the VM needs a memory_file")
        if not spec.memory_shared:
            raise DriverError("a restore copies the snapshot's memory into the VM's own file: memory_shared")
        vm = await self._launch(spec, "-incoming", "defer", memory_from=memory if ram_in_file else None)
        launched = time.monotonic()
        try:
            await vm.set_migration(ram_in_file)
            await vm.send_file(state, os.O_RDONLY, "snapshot")
            await vm.qmp("migrate-incoming", uri="fd:snapshot")
            await vm.wait_migration()
            if await vm.status() != "running":
                await vm.qmp("cont")
        except BaseException as exc:
            await vm.kill()
            if isinstance(exc, DriverError):
                raise DriverError(f"restore from {directory} failed: {exc}", exc.console_tail) from None
            raise
        log.info(
            "qemu restored",
            extra={
                "vm": spec.vm_id,
                "pid": vm.pid,
                "launch_ms": round((launched - started) * 1000, 1),
                "load_ms": round((time.monotonic() - launched) * 1000, 1),
            },
        )
        return vm

    async def _launch(self, spec: VMSpec, *extra: str, memory_from: Path | None = None) -> QemuVM:
        chain = [Layer(spec.rootfs, spec.rootfs_format)] + [Layer(p, f) for p, f in spec.backing]
        memory = None
        if spec.memory_file is not None and spec.memory_shared:
            spec.memory_file.unlink(missing_ok=True)
            memory = MemoryFile(spec.memory_file, spec.memory_mib << 20, memory_from)
        binds = [Bind(spec.kernel, spec.kernel)]
        if spec.initrd is not None:
            binds.append(Bind(spec.initrd, spec.initrd))
        if spec.memory_file is not None:
            binds.append(Bind(spec.memory_file, spec.memory_file, write=True))
        (spec.workdir / "qemu.log").unlink(missing_ok=True)
        with contextlib.ExitStack() as held:
            qmp = held.enter_context(_listening(self.qmp_path(spec)))
            console = held.enter_context(_listening(self.console_path(spec)))
            disk_fds = []
            for depth, layer in enumerate(chain):
                fd = os.open(layer.path, (os.O_RDWR if depth == 0 else os.O_RDONLY) | os.O_CLOEXEC)
                held.callback(os.close, fd)
                disk_fds.append(fd)
            passed = [qmp.fileno(), console.fileno(), *disk_fds]
            tap_fd = max(passed) + 1 if spec.tap else None
            argv = [
                *self.command(spec, qmp.fileno(), console.fileno(), blockdev_args(chain, disk_fds), tap_fd),
                *extra,
            ]
            jailer = self.jail.spec(argv, spec, binds=binds, memory=memory, tap_fd=tap_fd)
            proc = await self.jail.spawn(jailer, pass_fds=passed, stdout=asyncio.subprocess.DEVNULL,
                                         stderr=asyncio.subprocess.PIPE)  # fmt: skip
        logs = LogPumps()
        logs.pipe(proc.stderr, CappedLog(spec.workdir / "qemu.log"))
        log.info(
            "qemu started",
            extra={"vm": spec.vm_id, "pid": proc.pid, "accel": spec.accelerator.value, "netns": spec.netns},
        )
        try:
            await logs.socket(self.console_path(spec), CappedLog(spec.console_log))
            qmp_client = await self._connect_qmp(proc, spec, logs)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await logs.close()
            raise
        return QemuVM(spec, proc, qmp_client, logs)

    async def _connect_qmp(self, proc: asyncio.subprocess.Process, spec: VMSpec, logs: LogPumps) -> QMPClient:
        """QEMU's QMP, once it greets; DriverError with what QEMU said when it exits first."""
        client = QMPClient(spec.vm_id)
        connect = asyncio.ensure_future(client.connect(str(self.qmp_path(spec))))
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({connect, exited}, timeout=QMP_DEADLINE_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if connect.done() and connect.exception() is None and proc.returncode is None:
            return client
        connect.cancel()
        with contextlib.suppress(BaseException):
            await connect
        with contextlib.suppress(Exception):
            await client.disconnect()
        if proc.returncode is None and not (connect.done() and not connect.cancelled()):
            raise DriverError(f"qemu's QMP socket did not answer within {QMP_DEADLINE_S:.0f} s")
        await proc.wait()
        await logs.drained()
        said = "\n".join(
            line
            for line in console_tail(spec.workdir / "qemu.log", 2000).strip().splitlines()
            if "QEMU waiting for connection" not in line  # the console's wait=on, not an error
        )
        raise DriverError(f"qemu exited with {proc.returncode}: {said}", console_tail(spec.console_log))


async def sparse_copy(source: Path, target: Path) -> None:
    """Copy a memory file keeping its holes (only the guest's touched pages take space)."""
    try:
        await _disk.copy_sparse(source, target)
    except _disk.DiskError as exc:
        raise DriverError(str(exc)) from None
