"""The contract every VM driver fulfils: start a VM from a spec, then stop, kill, pause and resume it.

A driver knows one VMM (QEMU, Firecracker). It does not create disks, networks or cgroups: the host
agent prepares those and names them in the `VMSpec`. The VMM process runs inside the sandbox's network
namespace (`spec.netns`) so it can open the sandbox's TAP device.

What differs between VMMs and matters to the agent (the disk format, the kernel, where guest RAM lives,
which snapshots it can restore, whether it needs KVM) is the driver's `Capabilities`, declared once in
its module. The agent reads those and never asks which VMM it has: a new VMM is a new driver module and
its line in the driver factory (`wrenn.agent._agent.make_driver`), nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

#: A snapshot directory holds these two files: CPU and device state, and guest RAM.
VMSTATE, MEMORY = "vmstate", "memory"


class Accelerator(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"  # QEMU's software emulation: slow, but boots anywhere


class Kernel(enum.StrEnum):
    """The guest kernel a VMM boots; each image carries both."""

    BZIMAGE = "bzImage"  # the compressed kernel as the distribution ships it (`Image.vmlinuz`)
    ELF = "vmlinux"  # the uncompressed ELF inside it (`Image.vmlinux`)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the agent must know of a VMM to prepare its VMs and to use its snapshots."""

    #: The root disk format the VMM opens (`VMSpec.rootfs_format`): "qcow2" (the agent makes a
    #: copy-on-write overlay over the image's raw root file system) or "raw" (a reflink or sparse copy).
    disk_format: Literal["qcow2", "raw"]
    #: The guest kernel the VMM boots.
    kernel: Kernel
    #: Guest RAM lives in a host file the agent names (`VMSpec.memory_file`, in `--memory-dir`): the agent
    #: admits sandboxes against that directory's free space and removes the file when the VM goes.
    memory_file: bool
    #: The VMM restores one snapshot into many VMs: each its own copy of the snapshot's `memory`, and the
    #: root disk a qcow2 overlay over the snapshot's disk (which no VMM can write). The agent then keeps a
    #: ready snapshot per sandbox shape and makes templates; without it, every sandbox boots and templates
    #: are refused. Needs `disk_format` "qcow2".
    shared_snapshots: bool
    #: The VMM runs only under KVM (no software emulation): the agent skips the accelerator probe.
    kvm_only: bool
    #: The agent may keep a warm pool of this VMM's VMs (docs/pool.md): restored from the shape's ready
    #: snapshot ahead of demand, then stopped (`VM.pause`: no guest CPU runs) for minutes, and resumed
    #: (`VM.resume`) by the create that claims one. Needs `shared_snapshots`.
    warm_pool: bool = False

    def __post_init__(self) -> None:
        if self.shared_snapshots and self.disk_format != "qcow2":
            raise ValueError("shared snapshots restore onto qcow2 overlays: disk_format must be qcow2")
        if self.warm_pool and not self.shared_snapshots:
            raise ValueError("warm-pool members are restored from a shared ready snapshot: shared_snapshots")


class DriverError(RuntimeError):
    """The VMM refused or failed an operation. `console_tail` holds the end of the guest's console."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail


@dataclass(frozen=True, slots=True)
class Confinement:
    """What holds one VMM process, chosen by the agent per VM (see `_jail`)."""

    #: Its own uid and gid: no other process of the host runs as them.
    uid: int
    gid: int
    #: The `cgroup.procs` files of the VM's cgroups (limits already set): the VMM is in them before it runs.
    cgroups: tuple[Path, ...]
    #: The largest file it may write (RLIMIT_FSIZE): its disk limit, so that a qcow2 overlay stops there.
    max_file_bytes: int


@dataclass(frozen=True, slots=True)
class VMSpec:
    vm_id: str
    vcpus: int
    memory_mib: int
    #: Guest kernel, of the driver's `Capabilities.kernel` kind.
    kernel: Path
    initrd: Path | None
    #: The guest's own kernel command line (root device, network, init). The driver adds what its VMM
    #: needs (console device, timer calibration under TCG).
    cmdline: str
    #: The sandbox's writable root disk, in the driver's `Capabilities.disk_format`.
    rootfs: Path
    rootfs_format: str
    #: Per-VM runtime directory: API/QMP sockets, console log, pid file. Created by the caller.
    workdir: Path
    accelerator: Accelerator
    #: TAP device (inside `netns`) for the guest's only NIC, and the NIC's MAC address.
    tap: str | None = None
    mac: str = "02:fc:00:00:00:05"
    netns: str | None = None
    #: A file to back guest RAM with (QEMU: `memory-backend-file`), mapped shared: guest writes go to the
    #: file, and a snapshot copies it instead of streaming RAM through the VMM. Created (0600, the VMM's
    #: uid) when the VMM starts, from a snapshot's memory on a restore; removed by the caller.
    memory_file: Path | None = None
    #: False only for a VM adopted from an agent that mapped a snapshot's memory file copy-on-write into
    #: it (`memory_file` is then that snapshot's file, which the guest's writes never reach).
    memory_shared: bool = True
    #: Its jail (None: a VMM started as the caller, for tests of the driver alone).
    confinement: Confinement | None = None
    #: The files under a qcow2 `rootfs`, top first, with their formats (the agent's record, given to the
    #: VMM read-only: never what the overlay's own header names).
    backing: tuple[tuple[Path, str], ...] = ()
    #: Extra arguments for the VMM, for tests and experiments.
    extra_args: tuple[str, ...] = field(default=())

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"


class VM(Protocol):
    """A running VMM process."""

    spec: VMSpec

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int:
        """Wait for the VMM process to exit; its return code."""
        ...

    async def stop(self, grace_s: float = 3.0) -> None:
        """Ask the VMM to quit, then kill it after `grace_s`. Harmless when already gone."""
        ...

    async def kill(self) -> None:
        """SIGKILL the VMM process and reap it. Harmless when already gone."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def snapshot(self, directory: Path) -> None:
        """Pause the guest and write a complete snapshot into `directory`: `vmstate` (CPU and device
        state) and `memory` (guest RAM, sparse), or only `vmstate` with RAM inside it when the RAM is
        a private copy-on-write mapping. The VM stays paused; `resume()` continues it."""
        ...


class Driver(Protocol):
    #: The VMM's name: in logs, snapshot metadata and the ready snapshots' paths.
    name: str
    #: The machine type and options a snapshot restores only into (QEMU's `-M`; Firecracker has one).
    machine: str
    capabilities: Capabilities

    async def start(self, spec: VMSpec) -> VM:
        """Start the VMM and boot the guest. Raises DriverError (with the console tail) on failure;
        nothing is left running when it raises."""
        ...

    def version(self) -> str:
        """The VMM's version string (for the host's info and snapshots' `meta.json`); runs the binary."""
        ...

    def owns_process(self, pid: int, vm_id: str) -> bool:
        """True when `pid` is a live VMM process of this driver started for `vm_id` (before adopting it
        after a restart: a pid may have been recycled)."""
        ...

    async def check_jail(self, confinement: Confinement, accelerator: Accelerator) -> list[str]:
        """Start this VMM idle in a jail under `confinement` and check it from outside as a VM's would be:
        what falls short, in words (empty: the jail holds on this host)."""
        ...

    async def attach(self, spec: VMSpec, pid: int) -> VM:
        """Take over a VMM process started by an earlier run of the agent (adoption after a restart)."""
        ...

    async def restore(self, spec: VMSpec, directory: Path) -> VM:
        """Start a new VMM from the snapshot `VM.snapshot` wrote into `directory`; the guest runs when it
        returns. `spec` must describe the same machine (vcpus, memory, devices); disk and TAP may be new
        paths. The snapshot's memory is copied into `spec.memory_file`: the snapshot's files are never
        opened by the VMM, so one snapshot serves many VMs (ready snapshots, templates) and none of them
        can change it. Raises DriverError, leaving nothing running, when the snapshot is unusable."""
        ...


def console_tail(path: Path, limit: int = 4000) -> str:
    """The last `limit` characters of a console log, for error reports."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")
