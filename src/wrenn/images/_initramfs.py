"""The initramfs: busybox-static, the virtio modules and an /init that mounts the root disk.

Written as an uncompressed newc cpio by Python (no cpio binary, no root needed for /dev/console, and
every entry has mtime 0 and uid 0, so the same inputs give the same bytes).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


@dataclass
class Newc:
    """An in-memory newc ("070701") archive."""

    _entries: list[tuple[str, int, bytes, int]] = field(default_factory=list)

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._entries.append((name, stat.S_IFDIR | mode, b"", 0))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entries.append((name, stat.S_IFREG | mode, data, 0))

    def symlink(self, name: str, target: str) -> None:
        self._entries.append((name, stat.S_IFLNK | 0o777, target.encode(), 0))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entries.append((name, stat.S_IFCHR | mode, b"", (major << 8) | minor))

    def to_bytes(self) -> bytes:
        out = bytearray()
        for ino, (name, mode, data, rdev) in enumerate(self._entries, start=1):
            out += _record(ino, name, mode, data, rdev)
        out += _record(0, "TRAILER!!!", 0, b"", 0)
        return bytes(out)


def _record(ino: int, name: str, mode: int, data: bytes, rdev: int) -> bytes:
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    return _pad(header + encoded) + _pad(data)


def _pad(chunk: bytes) -> bytes:
    return chunk + b"\0" * (-len(chunk) % 4)


def init_script() -> bytes:
    return resources.files("wrenn.images").joinpath("guest/init").read_bytes()


def busybox() -> Path:
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: install busybox-static")
    data = BUSYBOX.read_bytes()
    if b"ld-linux" in data[:4096] or b"/lib64/ld-" in data[:4096]:
        raise RuntimeError(f"{BUSYBOX} is dynamically linked: install busybox-static, not busybox")
    return BUSYBOX


def build(modules: list[tuple[str, bytes]], out: Path) -> None:
    """Write the initramfs to `out`. `modules` are (file name, contents) in load order."""
    archive = Newc()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "run", "tmp"):
        archive.dir(d)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", busybox().read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", init_script(), 0o755)
    for name, data in modules:
        archive.file(f"lib/modules/{name}", data)
    archive.file("lib/modules/load-order", "".join(f"{name}\n" for name, _ in modules).encode())
    out.write_bytes(archive.to_bytes())
