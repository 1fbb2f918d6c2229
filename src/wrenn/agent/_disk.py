"""Per-sandbox copy-on-write disks over a read-only template image.

QEMU gets a qcow2 overlay whose backing file is the template's raw ext4 image (a few hundred KiB until
the guest writes). Firecracker takes only raw disks: it gets a reflink copy where the file system
supports one (XFS, btrfs), else a sparse copy.

A qcow2 file names its backing file in its header, and a VMM holds its overlay read-write: a compromised
one could rewrite that name to any host path. So the agent never follows a header it did not write last:
it records what each disk was made over (`Sandbox.disk_base`; `disk_base` in a ready snapshot's or a
template's `meta.json`), hands the VMM the chain it recorded (`backing_chain`), flattens by that chain, and
creates overlays without opening their base (`-u`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
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


async def create_root(base: Path, directory: Path, size_mb: int, kind: str) -> Path:
    """A sandbox's root disk in `directory` over the image's raw `base`, as its VMM opens it: a qcow2
    overlay (`kind` "qcow2") or a raw copy ("raw"), presenting a disk of `size_mb`."""
    if kind == "qcow2":
        return await create_overlay(base, directory / "rootfs.qcow2", size_mb)
    if kind == "raw":
        return await create_copy(base, directory / "rootfs.raw", size_mb)
    raise DiskError(f"no such disk format: {kind!r}")


async def create_overlay(base: Path, overlay: Path, size_mb: int) -> Path:
    """A qcow2 overlay of `base` (an image's raw root file system, or the qcow2 disk of a ready snapshot
    or template) presenting a disk of `size_mb`, and at least the image's size. `base` is not opened
    (`-u`): its header is not ours to trust."""
    return await create_overlay_over([(base, disk_format(base)), backing_chain(base)[-1]], overlay, size_mb)


#: The longest chain of disks a sandbox's overlay may sit on (template over template over ... image).
MAX_CHAIN = 16
META = "meta.json"


def disk_format(path: Path) -> str:
    return "qcow2" if path.suffix == ".qcow2" else "raw"


def backing_chain(base: Path | None) -> list[tuple[Path, str]]:
    """The files under an overlay made over `base`, top first, with their formats, as the agent recorded
    them: a ready snapshot's or template's disk names its own base in the `meta.json` beside it; an
    image's raw root file system ends the chain. A built template's records its whole chain of blobs
    instead (`disk_chain`, top first: blobs are named by their digest, which says nothing of their format).
    DiskError when a record is missing or loops."""
    chain: list[tuple[Path, str]] = []
    while base is not None:
        if len(chain) >= MAX_CHAIN:
            raise DiskError(f"the disk chain under {base} is longer than {MAX_CHAIN}")
        fmt = disk_format(base)
        chain.append((base, fmt))
        if fmt == "raw":
            break
        try:
            record = json.loads((base.parent / META).read_text())
            recorded, below = record.get("disk_base"), record.get("disk_chain")
        except (OSError, ValueError, AttributeError) as exc:
            raise DiskError(f"{base} has no record of what it was made over: {exc}") from None
        if below is not None:
            return chain + recorded_chain(below)
        if not isinstance(recorded, str) or not recorded:
            raise DiskError(f"{base} has no record of what it was made over")
        base = Path(recorded)
    return chain


#: The longest recorded chain of blobs (a built template: its base, then a layer per step).
MAX_RECORDED_CHAIN = 256


def recorded_chain(value: object) -> list[tuple[Path, str]]:
    """A `disk_chain` record as a chain: qcow2 layers, top first, down to one raw file system."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_RECORDED_CHAIN:
        raise DiskError("a recorded disk chain is not a list of disks")
    chain: list[tuple[Path, str]] = []
    for index, item in enumerate(value):
        last = index == len(value) - 1
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[0]):
            raise DiskError("a recorded disk chain has an entry that is no disk")
        if item[1] != ("raw" if last else "qcow2"):
            raise DiskError("a recorded disk chain must be qcow2 layers over one raw file system")
        chain.append((Path(item[0]), item[1]))
    return chain


def chain_record(chain: list[tuple[Path, str]]) -> list[list[str]]:
    """`chain` (top first) as `disk_chain` records it."""
    return [[str(path), fmt] for path, fmt in chain]


async def create_overlay_over(chain: list[tuple[Path, str]], overlay: Path, size_mb: int) -> Path:
    """A qcow2 overlay over the top of an explicit `chain` (top first), presenting a disk of `size_mb` and
    at least the bottom file system's size. Nothing of the chain is opened (`-u`)."""
    (top, top_format), (bottom, _) = chain[0], chain[-1]
    size = max(size_mb << 20, bottom.stat().st_size)
    await run(
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "-u",
        "-b", str(top), "-F", top_format, str(overlay), str(size),
    )  # fmt: skip
    return overlay


def base_from_header(disk: Path, allowed: list[Path]) -> Path | None:
    """What a qcow2 disk made by an earlier agent (before `disk_base` was recorded) names as its backing
    file, trusted only inside `allowed` directories (images, ready snapshots, templates); None when it
    names none. DiskError for anything else. Read once, to record it."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", "--", str(disk)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        named = json.loads(out.stdout).get("full-backing-filename") or None
    except ValueError:
        raise DiskError(f"qemu-img info {disk.name}: {out.stderr.strip()}") from None
    if named is None:
        return None
    base = Path(os.path.normpath(named))
    if not any(base.is_relative_to(directory) for directory in allowed) or not base.is_file():
        raise DiskError(f"{disk} names {named} as its backing file, which is none of the agent's disks")
    return base


def chain_json(top: Path, chain: list[tuple[Path, str]]) -> str:
    """`top` over `chain` as a QEMU `json:` filename: every backing named, none read from a header."""
    node: dict[str, object] | None = None
    for path, fmt in reversed(chain):
        layer: dict[str, object] = {"driver": fmt, "file": {"driver": "file", "filename": str(path)}}
        if fmt == "qcow2":
            layer["backing"] = node
        node = layer
    root = {"driver": "qcow2", "file": {"driver": "file", "filename": str(top)}, "backing": node}
    return "json:" + json.dumps(root)


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


async def flatten(source: Path, chain: list[tuple[Path, str]], target: Path) -> None:
    """A qcow2 copy of `source` (over `chain`) with the chain folded in: a disk that stands alone."""
    await run("qemu-img", "convert", "-q", "-O", "qcow2", chain_json(source, chain), str(target))


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
