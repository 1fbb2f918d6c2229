"""The QEMU driver: `qemu-system-x86_64 -M microvm`, virtio-mmio disk and NIC, controlled over QMP.

Under TCG (software emulation) the guest kernel gets `tsc_early_khz=`: microvm has no HPET or PM timer,
and without a known TSC frequency a third of TCG boots hang in timer calibration (feasibility.md §3).
QEMU runs with its seccomp sandbox on and, where the host has the user, drops to an unprivileged one
after opening its devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from .. import _disk
from ._driver import MEMORY, VMSTATE, Accelerator, Capabilities, DriverError, Kernel, VMSpec, console_tail
from ._pidproc import PidProcess, ProcessVM, runs_vm

log = logging.getLogger("wrenn.agent.qemu")

#: The microvm machine as feasibility.md measured it: no option ROMs, a serial port, an RTC, one IOAPIC.
MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=on,ioapic2=off"
#: QEMU's seccomp sandbox. `-runas` itself calls setuid (QEMU 7.2 kills itself with SIGSYS under
#: elevateprivileges=deny or =children), so with it set*uid stays allowed: `-runas` sets the real,
#: effective and saved ids alike, so there is no way back to root anyway.
SECCOMP = "on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"
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
    def __init__(self, spec: VMSpec, proc: asyncio.subprocess.Process | PidProcess, qmp: QMPClient) -> None:
        super().__init__(spec, proc)
        self._qmp = qmp

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


class QemuDriver:
    name = "qemu"
    #: A qcow2 overlay, the bzImage, RAM in a shared file (a pause copies it instead of streaming it),
    #: and snapshots restored copy-on-write into many VMs (ready snapshots, templates). TCG or KVM.
    capabilities = Capabilities(
        disk_format="qcow2", kernel=Kernel.BZIMAGE, memory_file=True, shared_snapshots=True, kvm_only=False
    )

    def __init__(
        self,
        binary: str = "qemu-system-x86_64",
        *,
        tsc_khz: int | None = None,
        run_as: str | None = None,
        seccomp: bool = True,
    ) -> None:
        self.binary = binary
        self.tsc_khz = tsc_khz or host_tsc_khz()
        #: An unprivileged user QEMU switches to once its devices are open (None: stay as is).
        self.run_as = run_as
        self.seccomp = seccomp

    def version(self) -> str:
        return qemu_version(self.binary)

    def command(self, spec: VMSpec) -> list[str]:
        """The full command line for `spec` (run inside its netns when it has one)."""
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
            "-serial", f"file:{spec.console_log}",
            "-qmp", f"unix:{self.qmp_path(spec)},server=on,wait=off",
            "-kernel", str(spec.kernel),
            "-append", cmdline,
            # auto-read-only=off: the disk is opened read-write at start, while QEMU still runs as root.
            # Else a restore (`-incoming`) opens it read-only and reopens it for writing only at `cont`,
            # after `-runas` dropped the rights to do so.
            "-drive", f"id=root,file={spec.rootfs},if=none,format={spec.rootfs_format},discard=unmap,"
                      "auto-read-only=off",
            "-device", "virtio-blk-device,drive=root",
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
        if spec.tap:
            args += [
                "-netdev", f"tap,id=net0,ifname={spec.tap},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=net0,mac={spec.mac}",
            ]  # fmt: skip
        drop = bool(self.run_as and _user_exists(self.run_as) and os.geteuid() == 0)
        if self.seccomp:
            args += ["-sandbox", SECCOMP.format(elevate="allow" if drop else "deny")]
        if drop:
            args += ["-runas", str(self.run_as)]
        args += list(spec.extra_args)
        if spec.netns:
            args = ["ip", "netns", "exec", spec.netns, *args]
        return args

    def owns_process(self, pid: int, vm_id: str) -> bool:
        return runs_vm(pid, "qemu", "-name", vm_id)

    async def attach(self, spec: VMSpec, pid: int) -> QemuVM:
        """Take over a QEMU this agent started before a restart: its pid and its QMP socket."""
        proc = PidProcess(pid)
        client = QMPClient(spec.vm_id)
        try:
            await client.connect(str(self.qmp_path(spec)))
        except (QMPError, OSError) as exc:
            raise DriverError(f"cannot reconnect to QMP of pid {pid}: {exc}") from exc
        return QemuVM(spec, proc, client)

    @staticmethod
    def qmp_path(spec: VMSpec) -> Path:
        return spec.workdir / "qmp.sock"

    async def start(self, spec: VMSpec) -> QemuVM:
        return await self._launch(spec)

    async def restore(self, spec: VMSpec, directory: Path) -> QemuVM:
        """A new QEMU with `-incoming defer` loads the device state through a passed descriptor; with a
        memory file, RAM comes from a copy of the snapshot's `memory` (not through the stream)."""
        started = time.monotonic()
        state, memory = directory / VMSTATE, directory / MEMORY
        ram_in_file = memory.is_file()  # else RAM is inside the state stream
        if not state.is_file():
            raise DriverError(f"snapshot in {directory} is incomplete: {VMSTATE} is missing")
        if ram_in_file and spec.memory_file is None:
            raise DriverError("this snapshot keeps RAM in a file: the VM needs a memory_file")
        if ram_in_file and spec.memory_shared:
            assert spec.memory_file is not None
            await sparse_copy(memory, spec.memory_file)
        elif ram_in_file and spec.memory_file != memory:
            raise DriverError("a copy-on-write restore maps the snapshot's own memory file")
        copied = time.monotonic()
        vm = await self._launch(spec, "-incoming", "defer")
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
                "memory_ms": round((copied - started) * 1000, 1),
                "load_ms": round((time.monotonic() - copied) * 1000, 1),
            },
        )
        return vm

    async def _launch(self, spec: VMSpec, *extra: str) -> QemuVM:
        qmp_path = self.qmp_path(spec)
        qmp_path.unlink(missing_ok=True)
        stderr_path = spec.workdir / "qemu.log"
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *self.command(spec), *extra, stdin=asyncio.subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        log.info(
            "qemu started",
            extra={"vm": spec.vm_id, "pid": proc.pid, "accel": spec.accelerator.value, "netns": spec.netns},
        )
        try:
            qmp = await self._connect_qmp(proc, qmp_path, stderr_path, spec)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return QemuVM(spec, proc, qmp)

    async def _connect_qmp(
        self, proc: asyncio.subprocess.Process, path: Path, stderr_path: Path, spec: VMSpec
    ) -> QMPClient:
        deadline = time.monotonic() + QMP_DEADLINE_S
        while True:
            if proc.returncode is not None or (await _exited(proc)):
                said = stderr_path.read_text(errors="replace").strip()[-2000:]
                raise DriverError(
                    f"qemu exited with {proc.returncode}: {said}", console_tail(spec.console_log)
                )
            if path.exists():
                client = QMPClient(spec.vm_id)
                try:
                    await client.connect(str(path))
                    return client
                except (QMPError, OSError):
                    with contextlib.suppress(Exception):
                        await client.disconnect()
            if time.monotonic() > deadline:
                raise DriverError(f"qemu's QMP socket did not answer within {QMP_DEADLINE_S:.0f} s")
            await asyncio.sleep(0.02)


async def _exited(proc: asyncio.subprocess.Process) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), 0.001)
    return proc.returncode is not None


async def sparse_copy(source: Path, target: Path) -> None:
    """Copy a memory file keeping its holes (only the guest's touched pages take space)."""
    try:
        await _disk.copy_sparse(source, target)
    except _disk.DiskError as exc:
        raise DriverError(str(exc)) from None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
