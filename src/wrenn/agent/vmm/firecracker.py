"""Firecracker driver: one `firecracker` process per VM, configured over its HTTP API socket.

For hosts with hardware KVM (`kvm_intel`/`kvm_amd`). Firecracker has no software emulation, and on a
PVM host (`kvm_pvm`) stock guest kernels crash early, though the API and snapshots still work there.

Boot: spawn `firecracker --api-sock <workdir>/fc/api.sock --id <vm_id>` through the jailer (`_jail`: in
the sandbox's netns and cgroup, as the VM's own uid, in a root of its own with its binary, kernel, disk,
the `fc/` directory and the /dev/kvm and /dev/net/tun nodes made for it),
wait for the socket, then PUT /machine-config, /boot-source, /drives/rootfs, /network-interfaces/eth0 and
/actions InstanceStart. The process's stdout and stderr, which carry both Firecracker's log and the
guest's serial console, are copied by the agent into the size-capped `spec.console_log`.

Snapshots: `FirecrackerVM.snapshot_create` on a paused VM writes the device state and the guest memory
(into its `fc/` directory, the only one it may write; the driver then moves them where asked and
gives them to root); `FirecrackerDriver.restore` loads them into a fresh process, which sees them
read-only. The snapshot records the drive and TAP names, so the rootfs path and the TAP (in the same
netns) must exist again under the same names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._capped import CappedLog, LogPumps
from ._driver import (
    MEMORY,
    VM,
    VMSTATE,
    Accelerator,
    Capabilities,
    Confinement,
    Driver,
    DriverError,
    Kernel,
    VMSpec,
    console_tail,
)
from ._fc_api import FirecrackerAPI, FirecrackerAPIError, RequestHook
from ._jail import NET_TUN, Bind, Jail
from ._pidproc import PidProcess, ProcessVM, runs_vm

log = logging.getLogger(__name__)

#: The one directory of the sandbox's a Firecracker process may write (its uid's): its API socket and
#: the snapshots it writes. Short names: a Unix socket's path has 107 bytes at most.
RUN_DIR = "fc"
API_SOCKET_NAME = "api.sock"
#: Appended to the guest's own command line: serial console, exit on reboot, reboot on panic, no PCI
#: probing (Firecracker's devices are virtio-mmio).
FIRECRACKER_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off"
SOCKET_DEADLINE_S = 5.0
_POLL_S = 0.005
ROOT_DRIVE_ID = "rootfs"
IFACE_ID = "eth0"

__all__ = ["FIRECRACKER_BOOT_ARGS", "FirecrackerAPIError", "FirecrackerDriver", "FirecrackerVM"]


def _check_spec(spec: VMSpec) -> None:
    if spec.accelerator != Accelerator.KVM:
        raise DriverError(f"firecracker needs KVM; accelerator {spec.accelerator} is not supported")


def run_dir(spec: VMSpec) -> Path:
    return spec.workdir / RUN_DIR


def api_socket(spec: VMSpec) -> Path:
    return run_dir(spec) / API_SOCKET_NAME


def _owner(spec: VMSpec) -> tuple[int, int]:
    """Who the VMM runs as: its confinement's uid and gid, or root."""
    confinement = spec.confinement
    return (confinement.uid, confinement.gid) if confinement else (0, 0)


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


class FirecrackerVM(ProcessVM):
    """A running Firecracker process and the client for its API socket."""

    def __init__(
        self,
        spec: VMSpec,
        proc: asyncio.subprocess.Process | PidProcess,
        api: FirecrackerAPI,
        logs: LogPumps | None = None,
    ) -> None:
        super().__init__(spec, proc)
        self._api = api
        self._logs = logs or LogPumps()
        self._cleaned = False

    @property
    def api_socket(self) -> Path:
        return self._api.socket_path

    # --- process lifecycle ---

    @classmethod
    async def _spawn(
        cls,
        binary: Path,
        spec: VMSpec,
        jail: Jail,
        request_hook: RequestHook | None = None,
        reads: Sequence[Path] = (),
    ) -> FirecrackerVM:
        """Start the process (jailed, seeing `reads` read-only besides its own files) and wait for its
        API socket to answer. Nothing is left running on error."""
        uid, gid = _owner(spec)
        run = run_dir(spec)
        run.mkdir(mode=0o700, exist_ok=True)
        os.chown(run, uid, gid)
        sock = run / API_SOCKET_NAME
        if sock.exists() or sock.is_symlink():
            if _socket_in_use(sock):
                raise DriverError(f"{sock} is in use by another process")
            log.warning("removing stale api socket", extra={"vm_id": spec.vm_id, "socket": str(sock)})
            sock.unlink()
        os.chown(spec.rootfs, uid, gid)  # the sandbox's own disk, which it opens by name
        binds = [
            Bind(spec.kernel, spec.kernel),
            Bind(spec.rootfs, spec.rootfs, write=True),
            Bind(run, run, write=True),
        ]
        binds += [Bind(spec.initrd, spec.initrd)] if spec.initrd else []
        binds += [Bind(path, path) for path in reads]
        if spec.confinement is not None:  # it writes its snapshot's memory itself: RAM-sized files
            room = max(spec.confinement.max_file_bytes, (spec.memory_mib + 64) << 20)
            spec = dataclasses.replace(
                spec, confinement=dataclasses.replace(spec.confinement, max_file_bytes=room)
            )
        argv = [str(binary), "--api-sock", str(sock), "--id", spec.vm_id, *spec.extra_args]
        jailer = jail.spec(
            argv, spec, binds=binds, devices=[NET_TUN] if spec.tap else [], tap_owner=spec.tap is not None
        )
        try:
            proc = await jail.spawn(
                jailer, pass_fds=(), stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise DriverError(f"cannot run {argv[0]}: {exc}") from exc
        logs = LogPumps()
        logs.pipe(proc.stdout, CappedLog(spec.console_log))
        api = FirecrackerAPI(sock, spec.console_log, request_hook=request_hook)
        vm = cls(spec, proc, api, logs)
        log.info(
            "firecracker spawned",
            extra={"vm_id": spec.vm_id, "pid": proc.pid, "netns": spec.netns, "socket": str(sock)},
        )
        try:
            await vm._wait_for_socket()
        except BaseException:
            await vm.kill()
            raise
        return vm

    async def _wait_for_socket(self) -> None:
        started = time.monotonic()
        deadline = started + SOCKET_DEADLINE_S
        last_error: FirecrackerAPIError | None = None
        while True:
            if self._proc.returncode is not None:
                await self._logs.drained()
                raise DriverError(
                    f"firecracker exited with {self._proc.returncode} before its API socket answered",
                    console_tail(self.spec.console_log),
                )
            if self.api_socket.exists():
                try:
                    await self._api.describe_instance()
                except FirecrackerAPIError as exc:  # bound but not yet accepting, most likely
                    last_error = exc
                else:
                    log.debug(
                        "firecracker api socket up",
                        extra={
                            "vm_id": self.spec.vm_id,
                            "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                        },
                    )
                    return
            if time.monotonic() > deadline:
                detail = f": {last_error}" if last_error else ""
                raise DriverError(
                    f"firecracker API socket {self.api_socket} did not answer within "
                    f"{SOCKET_DEADLINE_S:g} s{detail}",
                    console_tail(self.spec.console_log),
                )
            await asyncio.sleep(_POLL_S)

    async def _cleanup(self) -> None:
        """After the process is gone: close the client and remove the socket it cannot remove itself."""
        if self._cleaned:
            return
        self._cleaned = True
        await self._api.aclose()
        await self._logs.drained()
        await self._logs.close()
        with contextlib.suppress(FileNotFoundError):
            self.api_socket.unlink()

    async def wait(self) -> int:
        code = await self._proc.wait()
        await self._cleanup()
        return code

    async def stop(self, grace_s: float = 3.0) -> None:
        """Ctrl+Alt+Del (x86 i8042 only: the guest reboots, and `reboot=k` makes Firecracker exit),
        then SIGKILL after `grace_s`."""
        if self._proc.returncode is None:
            try:
                await self._api.action("SendCtrlAltDel")
            except DriverError as exc:
                log.info("ctrl-alt-del refused", extra={"vm_id": self.spec.vm_id, "error": str(exc)})
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), grace_s)
        await self.kill()

    async def kill(self) -> None:
        code = await self._kill_process()
        if not self._cleaned:
            log.info("firecracker exited", extra={"vm_id": self.spec.vm_id, "pid": self.pid, "code": code})
        await self._cleanup()

    # --- API operations ---

    async def info(self) -> dict[str, Any]:
        """GET /: `{"app_name", "id", "state": "Not started"|"Running"|"Paused", "vmm_version"}`."""
        return await self._api.describe_instance()

    async def pause(self) -> None:
        await self._api.patch_vm("Paused")

    async def resume(self) -> None:
        await self._api.patch_vm("Resumed")

    async def snapshot_create(self, snapshot_path: Path, mem_path: Path, diff: bool = False) -> None:
        """Write the paused VM's device state to `snapshot_path` and its memory to `mem_path`.
        `diff` writes only pages dirtied since the last snapshot (needs `track_dirty_pages`). Firecracker
        writes them into its own directory; they are then moved where asked and given to root."""
        started = time.monotonic()
        run = run_dir(self.spec)
        written = (run / "vmstate.partial", run / "memory.partial")
        try:
            await self._api.create_snapshot(
                snapshot_path=written[0], mem_file_path=written[1], snapshot_type="Diff" if diff else "Full"
            )
            for source, target in zip(written, (snapshot_path, mem_path), strict=True):
                os.chown(source, 0, 0)
                shutil.move(source, target)
        finally:
            for source in written:
                source.unlink(missing_ok=True)
        log.info(
            "snapshot created",
            extra={
                "vm_id": self.spec.vm_id,
                "snapshot_path": str(snapshot_path),
                "mem_path": str(mem_path),
                "diff": diff,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    async def snapshot(self, directory: Path) -> None:
        await self.pause()
        await self.snapshot_create(directory / VMSTATE, directory / MEMORY)

    async def _configure_and_boot(self, track_dirty_pages: bool) -> None:
        spec = self.spec
        await self._api.put_machine_config(
            vcpu_count=spec.vcpus,
            mem_size_mib=spec.memory_mib,
            smt=False,
            track_dirty_pages=track_dirty_pages,
        )
        boot_args = f"{spec.cmdline} {FIRECRACKER_BOOT_ARGS}".strip()
        await self._api.put_boot_source(
            kernel_image_path=spec.kernel, boot_args=boot_args, initrd_path=spec.initrd
        )
        await self._api.put_drive(
            ROOT_DRIVE_ID, path_on_host=spec.rootfs, is_root_device=True, is_read_only=False
        )
        if spec.tap:
            await self._api.put_network_interface(IFACE_ID, host_dev_name=spec.tap, guest_mac=spec.mac)
        await self._api.action("InstanceStart")


class FirecrackerDriver:
    name = "firecracker"
    machine = "firecracker"
    #: A raw disk, the ELF vmlinux, RAM inside the process (a snapshot writes it out), a snapshot restored
    #: into one VM only (its drive and TAP names are recorded in it). KVM only. No warm pool: its members
    #: are restored from one shared ready snapshot, which Firecracker cannot restore into many VMs here
    #: (a pool of cold-booted, paused Firecracker VMs is possible but not built).
    capabilities = Capabilities(
        disk_format="raw", kernel=Kernel.ELF, memory_file=False, shared_snapshots=False, kvm_only=True,
        warm_pool=False,
    )  # fmt: skip

    def __init__(
        self,
        binary: Path,
        *,
        jail: Jail | None = None,
        track_dirty_pages: bool = False,
        request_hook: RequestHook | None = None,
    ) -> None:
        """`jail`: how VMMs start (none: as the caller); `track_dirty_pages` enables diff snapshots (at some
        cost to guest writes); `request_hook` sees every API request before it is sent (tests use it to
        check requests against the API spec)."""
        self.binary = binary.resolve()
        self.jail = jail or Jail(None)
        self.track_dirty_pages = track_dirty_pages
        self._request_hook = request_hook

    def version(self) -> str:
        try:
            done = subprocess.run(
                [str(self.binary), "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"cannot run {self.binary} --version: {exc}") from exc
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise DriverError(f"{self.binary} --version exited {done.returncode}: {done.stderr.strip()}")
        return lines[0].strip()  # "Firecracker v1.12.1"; a log line about exiting follows

    async def start(self, spec: VMSpec) -> FirecrackerVM:
        _check_spec(spec)
        if spec.rootfs_format != "raw":
            raise DriverError(f"firecracker supports only raw disks, not {spec.rootfs_format!r}")
        started = time.monotonic()
        vm = await FirecrackerVM._spawn(self.binary, spec, self.jail, self._request_hook)
        try:
            await vm._configure_and_boot(self.track_dirty_pages)
        except BaseException:
            await vm.kill()
            raise
        log.info(
            "firecracker vm started",
            extra={
                "vm_id": spec.vm_id,
                "pid": vm.pid,
                "vcpus": spec.vcpus,
                "memory_mib": spec.memory_mib,
                "tap": spec.tap,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return vm

    def owns_process(self, pid: int, vm_id: str) -> bool:
        return runs_vm(pid, "firecracker", "--id", vm_id)

    async def check_jail(self, confinement: Confinement, accelerator: Accelerator) -> list[str]:
        """A Firecracker waiting on its API socket in a jail. (It installs its seccomp filters when it
        builds the VM, so that is not checked here: the VM's own process shows them.)"""
        with tempfile.TemporaryDirectory(prefix="wrenn-jail-check-") as tmp:
            workdir = Path(tmp)
            os.chown(workdir, confinement.uid, confinement.gid)
            vm = VMSpec(
                vm_id="jail-check", vcpus=1, memory_mib=16, kernel=self.binary, initrd=None, cmdline="",
                rootfs=self.binary, rootfs_format="raw", workdir=workdir, accelerator=Accelerator.KVM,
                confinement=confinement,
            )  # fmt: skip
            sock = workdir / API_SOCKET_NAME
            argv = [str(self.binary), "--api-sock", str(sock), "--id", "jail-check"]
            return await self.jail.check(argv, vm, seccomp=False, binds=[Bind(workdir, workdir, write=True)])

    async def attach(self, spec: VMSpec, pid: int) -> FirecrackerVM:
        """Take over a Firecracker this agent started before a restart: its pid and its API socket."""
        _check_spec(spec)
        try:
            proc = PidProcess(pid)
        except OSError as exc:
            raise DriverError(f"cannot adopt firecracker pid {pid}: {exc}") from exc
        api = FirecrackerAPI(api_socket(spec), spec.console_log, request_hook=self._request_hook)
        vm = FirecrackerVM(spec, proc, api)
        try:
            info = await vm.info()
        except DriverError as exc:
            await api.aclose()
            raise DriverError(f"cannot reach the API socket of firecracker pid {pid}: {exc}") from exc
        log.info("firecracker adopted", extra={"vm_id": spec.vm_id, "pid": pid, "state": info.get("state")})
        return vm

    async def restore(self, spec: VMSpec, directory: Path) -> FirecrackerVM:
        """A running VM from the snapshot `FirecrackerVM.snapshot` wrote into `directory`."""
        state, memory = directory / VMSTATE, directory / MEMORY
        if not state.is_file() or not memory.is_file():
            raise DriverError(f"snapshot in {directory} is incomplete: {VMSTATE} or {MEMORY} is missing")
        return await self.restore_files(spec, state, memory)

    async def restore_files(
        self, spec: VMSpec, snapshot_path: Path, mem_path: Path, resume: bool = True
    ) -> FirecrackerVM:
        """A fresh Firecracker process loaded from a snapshot; paused unless `resume`. The VM's shape
        (vcpus, memory, drives, TAP) comes from the snapshot, not from `spec`."""
        _check_spec(spec)
        started = time.monotonic()
        uid, gid = _owner(spec)
        for path in (snapshot_path, mem_path):  # read by the VMM, as its own until it has them open
            os.chown(path, uid, gid)
        try:
            vm = await FirecrackerVM._spawn(
                self.binary, spec, self.jail, self._request_hook, (snapshot_path, mem_path)
            )
            try:
                await vm._api.load_snapshot(
                    snapshot_path=snapshot_path, mem_file_path=mem_path, resume_vm=resume
                )
            except BaseException:
                await vm.kill()
                raise
        finally:
            for path in (snapshot_path, mem_path):
                with contextlib.suppress(OSError):
                    os.chown(path, 0, 0)
        log.info(
            "firecracker vm restored",
            extra={
                "vm_id": spec.vm_id,
                "pid": vm.pid,
                "snapshot_path": str(snapshot_path),
                "resumed": resume,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return vm


if TYPE_CHECKING:  # mypy checks that the classes fulfil the driver contract

    def _conforms(driver: FirecrackerDriver, vm: FirecrackerVM) -> tuple[Driver, VM]:
        return driver, vm
