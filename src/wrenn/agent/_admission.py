"""Admission: whether this host can take one more sandbox (a create, a resume, a thaw) without running out
of memory or disk, counting what every sandbox it already holds may still grow to.

A sandbox's disk is a qcow2 overlay that grows as its guest writes, up to its limit (`disk_limit_bytes`:
its VMM cannot write a file past it), and a pause writes its RAM next to it. Its RAM file in the memory
directory (a tmpfs) grows as the guest touches its memory. So each sandbox held here keeps a claim on its
file systems: what it may still take (its limit, less what its files already hold). A sandbox is admitted
only when every file system it touches has room for its own claim on top of everyone else's, plus
`reserved_disk_mb` on the data directory's. All overlays growing at once then still fit.

An operator may overcommit the data directory (`disk_overcommit` > 1, as thin-provisioned platforms do):
the sandboxes' disk claims then count for 1/ratio of their size there, trading the guarantee for density
(watch the host's free space). Each sandbox's own claim must still fit whole, and RAM files never
overcommit.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import psutil

from . import _disk
from ._errors import SandboxError
from ._sandbox import Sandbox, SandboxParams, Status
from ._table import SandboxTable

MIB = 1 << 20


def disk_limit_bytes(disk_size_mb: int) -> int:
    """The most a sandbox's disk may take on the host: the size asked for. (Its overlay is at least the
    image's size, and a guest asking for less than that can write only this much of it.)"""
    return disk_size_mb * MIB


def disk_file_limit(disk_size_mb: int) -> int:
    """The VMM's file size limit for a disk limit: room for qcow2's own metadata (its L2 and refcount
    tables, ~1/8000 of the data) on top."""
    limit = disk_limit_bytes(disk_size_mb)
    return limit + limit // 256 + 64 * MIB


def _allocated(directory: Path) -> int:
    return sum(_disk.allocated_bytes(f) for f in directory.rglob("*") if f.is_file())


class Admission:
    def __init__(self, table: SandboxTable) -> None:
        self.table = table

    def _claims(self, sandbox: Sandbox) -> list[tuple[Path, int]]:
        """What `sandbox` may still take, by directory: its disk and snapshot while it has them, and its
        RAM while it runs (or is about to)."""
        params = sandbox.params
        if sandbox.status not in (Status.PENDING, Status.RUNNING, Status.PAUSED):
            return []  # released: it holds nothing
        disk = disk_limit_bytes(params.disk_size_mb) + params.memory_mb * MIB - _allocated(sandbox.workdir)
        claims = [(self.table.config.data_dir, max(0, disk))]
        memory = self.table.memory_file(sandbox)
        if sandbox.status is not Status.PAUSED and memory is not None:
            claims.append((memory.parent, max(0, params.memory_mb * MIB - _disk.allocated_bytes(memory))))
        return claims

    def check(self, params: SandboxParams, *, held: Sandbox | None = None) -> None:
        """`resource_exhausted` unless the host can run a sandbox of `params`: memory, its RAM file, and
        disk for its claim and everyone else's. `held`: the sandbox itself, already on this host (a
        resume: its files count as its own)."""
        config = self.table.config
        available_mb = psutil.virtual_memory().available >> 20
        if params.memory_mb + config.reserved_memory_mb > available_mb:
            raise SandboxError(
                "resource_exhausted",
                f"not enough memory: {params.memory_mb} MiB asked, {available_mb} MiB available "
                f"({config.reserved_memory_mb} MiB kept for the host)",
            )
        self._check_room(params, held)

    def check_disk(self, *, incoming_bytes: int) -> None:
        """`resource_exhausted` unless `incoming_bytes` (an archive about to be unpacked) fit on the data
        directory beside every claim."""
        self._check_room(None, None, incoming_bytes)

    def _check_room(
        self, params: SandboxParams | None, held: Sandbox | None, incoming_bytes: int = 0
    ) -> None:
        config = self.table.config
        needs: dict[int, int] = defaultdict(int)
        names: dict[int, Path] = {}

        def claim(directory: Path, amount: int) -> None:
            device = os.stat(directory).st_dev
            names.setdefault(device, directory)
            needs[device] += amount

        ratio = max(1.0, config.disk_overcommit)

        def claim_disk(directory: Path, amount: int) -> None:
            claim(directory, int(amount / ratio) if directory == config.data_dir else amount)

        for other in self.table.sandboxes.values():
            if other is not held:
                for directory, amount in self._claims(other):
                    claim_disk(directory, amount)
        own = 0
        if held is not None:
            for directory, amount in self._claims(held):
                claim_disk(directory, amount)
                own += amount if directory == config.data_dir else 0
        elif params is not None:
            own = disk_limit_bytes(params.disk_size_mb) + params.memory_mb * MIB
            claim_disk(config.data_dir, own)
        if params is not None and self.table.capabilities.memory_file:  # about to run: no RAM file yet
            claim(config.memory_dir, params.memory_mb * MIB)
        claim(config.data_dir, incoming_bytes + config.reserved_disk_mb * MIB)
        if ratio > 1 and own:  # overcommitted: this one's own claim must still fit whole
            data_device = os.stat(config.data_dir).st_dev
            needs[data_device] = max(needs[data_device], own + config.reserved_disk_mb * MIB)
        for device, need in needs.items():
            free = _disk.free_bytes(names[device])
            if need > free:
                raise SandboxError(
                    "resource_exhausted",
                    f"not enough room in {names[device]}: the sandboxes on this host may take "
                    f"{need >> 20} MiB more (this one's disk and memory included), {free >> 20} MiB are free",
                )
