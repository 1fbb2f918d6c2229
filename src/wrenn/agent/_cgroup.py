"""Resource limits: a cgroup per sandbox (memory, CPU, pids and disk I/O of its VMM), and one for the agent
itself (its own memory, never its VMs').

Works on cgroup v2 (one hierarchy with the memory and cpu controllers) and on v1 (a hierarchy per
controller), whichever the host has; `detect()` says which. All groups live under one parent
(`wrenn` by default), so stale ones from a previous run are easy to find and remove. A sandbox's group is
made, with its limits, before its VMM starts: the jailer puts itself in it, so the VMM's memory (its RAM
file included) is charged there from the first page.

Disk I/O is throttled on the block device holding the data directory (`io.max` on v2,
`blkio.throttle.*` on v1). On v1 the throttle sees only I/O the VMM issues directly, not the page cache's
writeback of its buffered writes; v2 charges writeback to the group too.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wrenn.agent.cgroup")

ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
#: cgroup v2's `cpu.weight` of a sandbox's VMM (the kernel's default), and of a warm pool member being made:
#: the lowest, so that filling the pool takes only CPU that running sandboxes leave idle. (v1: `cpu.shares`,
#: scaled: 100 -> 1024.)
CPU_WEIGHT = 100
CPU_WEIGHT_BACKGROUND = 1
V1_CONTROLLERS = ("memory", "cpu", "pids", "blkio")
#: On v1, the hierarchies without controllers that an init system tracks its services' processes in:
#: systemd's named hierarchy, and on a hybrid layout its v2 one. A VMM joins `wrenn/<name>` there too, so
#: that it leaves the group of the service that started the agent: systemd kills what is left in a
#: service's group when it stops or restarts it (KillMode=mixed), and the VMs must outlive the agent.
V1_TRACKING = ("systemd", "unified")
#: What every group of ours must be able to limit (io is optional: not every host or file system has it).
REQUIRED = ("memory", "cpu", "pids")


class CgroupVersion(enum.StrEnum):
    V2 = "v2"
    V1 = "v1"
    NONE = "none"


def detect(root: Path = ROOT) -> CgroupVersion:
    controllers = root / "cgroup.controllers"
    if controllers.exists() and {"memory", "cpu"} <= set(controllers.read_text().split()):
        return CgroupVersion.V2
    if all((root / c / "cgroup.procs").exists() for c in ("memory", "cpu")):
        return CgroupVersion.V1
    return CgroupVersion.NONE


@dataclass(frozen=True, slots=True)
class IOLimit:
    """Throttling of one block device ("major:minor"), per direction."""

    device: str
    bytes_per_s: int
    iops: int


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int
    #: CPUs' worth of time per period (1.0 = one full core).
    cpus: float
    pids: int = 256
    io: IOLimit | None = None
    #: Its share of contended CPU (cgroup v2's `cpu.weight` scale, 1-10000).
    weight: int = CPU_WEIGHT


def _v1_shares(weight: int) -> int:
    """cgroup v1's `cpu.shares` (2-262144, default 1024) for a v2 `cpu.weight` (1-10000, default 100)."""
    return max(2, weight * 1024 // CPU_WEIGHT)


def block_device(path: Path) -> str | None:
    """The whole disk ("major:minor") holding `path`, or None when it is on no block device (tmpfs,
    overlay, a network file system)."""
    dev = path.stat().st_dev
    major, minor = os.major(dev), os.minor(dev)
    sysfs = Path(f"/sys/dev/block/{major}:{minor}")
    if major == 0 or not sysfs.exists():
        return None
    if (sysfs / "partition").exists():  # throttling is per disk
        with contextlib.suppress(OSError):
            return (sysfs.resolve().parent / "dev").read_text().strip()
    return f"{major}:{minor}"


class Cgroups:
    def __init__(self, parent: str = "wrenn", root: Path = ROOT) -> None:
        self.parent = parent
        self.root = root
        self.version = detect(root)

    def _dirs(self, name: str) -> list[Path]:
        if self.version is CgroupVersion.V2:
            return [self.root / self.parent / name]
        if self.version is CgroupVersion.V1:
            hierarchies = (*V1_CONTROLLERS, *V1_TRACKING)
            return [self.root / c / self.parent / name for c in hierarchies if (self.root / c).exists()]
        return []

    def _enable_v2_controllers(self) -> None:
        parent = self.root / self.parent
        parent.mkdir(exist_ok=True)
        for directory in (self.root, parent):
            with contextlib.suppress(OSError):
                (directory / "cgroup.subtree_control").write_text("+memory +cpu +pids +io")

    def missing(self) -> list[str]:
        """The controllers a sandbox's group needs that this host does not offer."""
        if self.version is CgroupVersion.NONE:
            return list(REQUIRED)
        if self.version is CgroupVersion.V2:
            self._enable_v2_controllers()
            offered = set((self.root / self.parent / "cgroup.subtree_control").read_text().split())
            return [c for c in REQUIRED if c not in offered]
        return [c for c in REQUIRED if not (self.root / c / "cgroup.procs").exists()]

    def create(self, name: str, limits: Limits) -> tuple[Path, ...]:
        """Make the group `name` with `limits` (before anything runs in it); the `cgroup.procs` files a
        process writes its pid to to join it. Empty on a host without usable cgroups."""
        if self.version is CgroupVersion.NONE:
            log.warning("no usable cgroups: the VMM runs without limits", extra={"vm": name})
            return ()
        if self.version is CgroupVersion.V2:
            self._enable_v2_controllers()
        quota = max(int(limits.cpus * CPU_PERIOD_US), 1000)
        procs = []
        for directory in self._dirs(name):
            directory.mkdir(parents=True, exist_ok=True)
            for filename, value in self._settings(directory, limits, quota):
                try:
                    (directory / filename).write_text(value)
                except OSError as exc:
                    log.warning(
                        "cgroup setting refused", extra={"file": str(directory / filename), "error": str(exc)}
                    )
            procs.append(directory / "cgroup.procs")
        log.info(
            "cgroup made",
            extra={
                "vm": name,
                "version": self.version.value,
                "memory": limits.memory_bytes,
                "cpus": limits.cpus,
                "io": limits.io.device if limits.io else None,
            },
        )
        return tuple(procs)

    def place(self, name: str, pid: int, limits: Limits) -> None:
        """Create the group `name` with `limits` and move `pid` into it."""
        for procs in self.create(name, limits):
            procs.write_text(str(pid))

    def limit_self(self, name: str, memory_bytes: int) -> Path | None:
        """Move this process into the group `name` (under our parent) with a memory limit of its own: the
        agent's memory and its helpers' (never its VMs', which have groups of their own). The group's
        directory, for `release_self`; None on a host without a memory controller."""
        if self.version is CgroupVersion.V2:
            self._enable_v2_controllers()
            directory, limit = self.root / self.parent / name, "memory.max"
        elif self.version is CgroupVersion.V1:
            directory, limit = self.root / "memory" / self.parent / name, "memory.limit_in_bytes"
        else:
            return None
        for stale in directory.parent.glob("*.agent"):  # agents killed before they could leave theirs
            with contextlib.suppress(OSError):  # a live agent's is not empty: it stays
                stale.rmdir()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / limit).write_text(str(memory_bytes))
        if self.version is CgroupVersion.V2:
            (directory / "memory.swap.max").write_text("0")
        (directory / "cgroup.procs").write_text(str(os.getpid()))
        return directory

    def release_self(self, directory: Path) -> None:
        """Leave the group `limit_self` made (back to the hierarchy's root) and remove it."""
        root = self.root if self.version is CgroupVersion.V2 else self.root / "memory"
        with contextlib.suppress(OSError):
            (root / "cgroup.procs").write_text(str(os.getpid()))
            directory.rmdir()

    def _settings(self, directory: Path, limits: Limits, quota: int) -> list[tuple[str, str]]:
        io = limits.io
        if self.version is CgroupVersion.V2:
            settings = [
                ("memory.max", str(limits.memory_bytes)),
                ("memory.swap.max", "0"),
                ("cpu.max", f"{quota} {CPU_PERIOD_US}"),
                ("cpu.weight", str(limits.weight)),
                ("pids.max", str(limits.pids)),
            ]
            if io is not None:
                rate = f"rbps={io.bytes_per_s} wbps={io.bytes_per_s} riops={io.iops} wiops={io.iops}"
                settings.append(("io.max", f"{io.device} {rate}"))
            return settings
        controller = directory.parent.parent.name
        blkio = []
        if io is not None:
            blkio = [
                (f"blkio.throttle.{direction}_{unit}_device", f"{io.device} {value}")
                for direction in ("read", "write")
                for unit, value in (("bps", io.bytes_per_s), ("iops", io.iops))
            ]
        return {
            "memory": [("memory.limit_in_bytes", str(limits.memory_bytes))],
            "cpu": [
                ("cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu.cfs_quota_us", str(quota)),
                ("cpu.shares", str(_v1_shares(limits.weight))),
            ],
            "pids": [("pids.max", str(limits.pids))],
            "blkio": blkio,
        }.get(controller, [])

    def set_weight(self, name: str, weight: int) -> None:
        """Change the group's share of contended CPU (a warm pool member claimed by a sandbox)."""
        if self.version is CgroupVersion.V2:
            setting = [(self.root / self.parent / name / "cpu.weight", str(weight))]
        elif self.version is CgroupVersion.V1:
            setting = [(self.root / "cpu" / self.parent / name / "cpu.shares", str(_v1_shares(weight)))]
        else:
            return
        for path, value in setting:
            try:
                path.write_text(value)
            except OSError as exc:
                log.warning("cgroup setting refused", extra={"file": str(path), "error": str(exc)})

    def remove(self, name: str, wait_s: float = 3.0) -> bool:
        """Remove the group. Harmless when it does not exist. Processes just killed take a moment to
        leave it, so a busy group is retried for up to `wait_s`; False (and a warning) if it stays busy."""
        deadline = time.monotonic() + wait_s
        for directory in self._dirs(name):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        log.warning("cgroup not removed", extra={"path": str(directory), "error": str(exc)})
                        return False
                    time.sleep(0.05)
        return True

    def stale(self) -> list[str]:
        """Groups under our parent, for cleanup at start."""
        names: set[str] = set()
        parents = (
            [self.root / self.parent]
            if self.version is CgroupVersion.V2
            else [self.root / c / self.parent for c in (*V1_CONTROLLERS, *V1_TRACKING)]
        )
        for parent in parents:
            if parent.is_dir():
                names.update(p.name for p in parent.iterdir() if p.is_dir())
        return sorted(names)

    def pids(self, name: str) -> list[int]:
        for directory in self._dirs(name):
            with contextlib.suppress(OSError):
                return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        return []

    def memory_usage(self, name: str) -> int | None:
        for directory in self._dirs(name):
            for filename in ("memory.current", "memory.usage_in_bytes"):
                path = directory / filename
                if path.exists():
                    with contextlib.suppress(OSError, ValueError):
                        return int(path.read_text())
        return None


def kill_all(cgroups: Cgroups, name: str) -> None:
    """SIGKILL whatever is left in a group (used when cleaning up after a crash)."""
    for pid in cgroups.pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
