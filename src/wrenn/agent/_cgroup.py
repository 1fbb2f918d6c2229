"""Resource limits for a VMM process: a cgroup per sandbox with memory, CPU and pid limits.

Works on cgroup v2 (one hierarchy with the memory and cpu controllers) and on v1 (a hierarchy per
controller), whichever the host has; `detect()` says which. All groups live under one parent
(`wrenn` by default), so stale ones from a previous run are easy to find and remove.
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
V1_CONTROLLERS = ("memory", "cpu", "pids")


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
class Limits:
    memory_bytes: int
    #: CPUs' worth of time per period (1.0 = one full core).
    cpus: float
    pids: int = 256


class Cgroups:
    def __init__(self, parent: str = "wrenn", root: Path = ROOT) -> None:
        self.parent = parent
        self.root = root
        self.version = detect(root)

    def _dirs(self, name: str) -> list[Path]:
        if self.version is CgroupVersion.V2:
            return [self.root / self.parent / name]
        if self.version is CgroupVersion.V1:
            return [self.root / c / self.parent / name for c in V1_CONTROLLERS if (self.root / c).exists()]
        return []

    def _enable_v2_controllers(self) -> None:
        parent = self.root / self.parent
        parent.mkdir(exist_ok=True)
        for directory in (self.root, parent):
            with contextlib.suppress(OSError):
                (directory / "cgroup.subtree_control").write_text("+memory +cpu +pids")

    def place(self, name: str, pid: int, limits: Limits) -> None:
        """Create the group `name`, apply `limits` and move `pid` into it. A host without usable cgroups
        gets a warning, not an error: limits are a safety net, the VM still runs."""
        if self.version is CgroupVersion.NONE:
            log.warning("no usable cgroups: the VMM runs without limits", extra={"vm": name})
            return
        if self.version is CgroupVersion.V2:
            self._enable_v2_controllers()
        quota = max(int(limits.cpus * CPU_PERIOD_US), 1000)
        for directory in self._dirs(name):
            directory.mkdir(parents=True, exist_ok=True)
            for filename, value in self._settings(directory, limits, quota):
                try:
                    (directory / filename).write_text(value)
                except OSError as exc:
                    log.warning(
                        "cgroup setting refused", extra={"file": str(directory / filename), "error": str(exc)}
                    )
            (directory / "cgroup.procs").write_text(str(pid))
        log.info(
            "vmm placed in cgroup",
            extra={
                "vm": name,
                "pid": pid,
                "version": self.version.value,
                "memory": limits.memory_bytes,
                "cpus": limits.cpus,
            },
        )

    def _settings(self, directory: Path, limits: Limits, quota: int) -> list[tuple[str, str]]:
        if self.version is CgroupVersion.V2:
            return [
                ("memory.max", str(limits.memory_bytes)),
                ("memory.swap.max", "0"),
                ("cpu.max", f"{quota} {CPU_PERIOD_US}"),
                ("pids.max", str(limits.pids)),
            ]
        controller = directory.parent.parent.name
        return {
            "memory": [("memory.limit_in_bytes", str(limits.memory_bytes))],
            "cpu": [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))],
            "pids": [("pids.max", str(limits.pids))],
        }.get(controller, [])

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
            else [self.root / c / self.parent for c in V1_CONTROLLERS]
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
