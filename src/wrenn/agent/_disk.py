"""Per-sandbox copy-on-write disks over a read-only template image.

QEMU gets a qcow2 overlay whose backing file is the template's raw ext4 image (a few hundred KiB until
the guest writes). Firecracker takes only raw disks: it gets a reflink copy where the file system
supports one (XFS, btrfs), else a sparse copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger("wrenn.agent.disk")


class DiskError(RuntimeError):
    pass


async def run(*args: str) -> str:
    """Run a command; its output. DiskError (with the output) when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise DiskError(f"{args[0]} failed: {out.decode(errors='replace').strip()}")
    return out.decode()


async def create_root(base: Path, directory: Path, size_mb: int, disk_format: str) -> Path:
    """A sandbox's root disk in `directory` over the image's raw `base`, as its VMM opens it: a qcow2
    overlay (`disk_format` "qcow2") or a raw copy ("raw"), presenting a disk of `size_mb`."""
    if disk_format == "qcow2":
        return await create_overlay(base, directory / "rootfs.qcow2", size_mb)
    if disk_format == "raw":
        return await create_copy(base, directory / "rootfs.raw", size_mb)
    raise DiskError(f"no such disk format: {disk_format!r}")


async def create_overlay(base: Path, overlay: Path, size_mb: int, base_format: str = "raw") -> Path:
    """A qcow2 overlay of `base` (raw, or qcow2: a ready snapshot's disk) presenting a disk of `size_mb`
    (at least the base's size)."""
    base_size = base.stat().st_size if base_format == "raw" else 0
    size = max(size_mb << 20, base_size)
    await run(
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
        "-b", str(base), "-F", base_format, str(overlay), str(size),
    )  # fmt: skip
    return overlay


async def create_copy(base: Path, target: Path, size_mb: int) -> Path:
    """A raw copy of `base` (reflink if possible, else sparse), grown to `size_mb`."""
    try:
        await run("cp", "--reflink=always", str(base), str(target))
    except DiskError:
        await copy_sparse(base, target)
    size = max(size_mb << 20, base.stat().st_size)
    with target.open("r+b") as f:
        f.truncate(size)
    return target


async def copy_sparse(source: Path, target: Path) -> None:
    """Copy keeping holes: only the blocks holding data take space in the copy."""
    await run("cp", "--sparse=always", "--", str(source), str(target))


async def flatten(source: Path, target: Path) -> None:
    """A qcow2 copy of `source` with its whole backing chain folded in: a disk that stands alone."""
    await run("qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(target))


async def check_standalone(path: Path) -> None:
    """DiskError unless `path` is a qcow2 image that opens no other file: no backing file and no external
    data file (either would make the VMM open a host path that the image names)."""
    out = await run("qemu-img", "info", "--output=json", "-f", "qcow2", "--", str(path))
    try:
        info = json.loads(out)
    except ValueError:
        raise DiskError(f"qemu-img info gave no JSON for {path.name}") from None
    if info.get("format") != "qcow2":
        raise DiskError(f"{path.name} is not a qcow2 image")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise DiskError(f"{path.name} names a backing file")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise DiskError(f"{path.name} names an external data file")


def allocated_bytes(path: Path) -> int:
    """Bytes the disk file really uses on the host (its blocks, not its apparent size)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free
