"""The guest kernel: Debian's cloud kernel package, unpacked (never installed) on the host.

From it come `vmlinuz` (the bzImage, for QEMU), `vmlinux` (the uncompressed ELF inside the bzImage, for
Firecracker and PVH boot) and the modules the initramfs needs.
"""

from __future__ import annotations

import gzip
import lzma
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ._steps import BuildLog

META_PACKAGE = "linux-image-cloud-amd64"

#: Modules the guest needs before it can mount its root disk and reach the network, by module name.
#: virtio_pci too, so the same initramfs works on q35/pc machines as well as microvm (virtio-mmio).
#: ext4 is built into the cloud kernel; it is listed so that a kernel where it is modular still boots.
WANTED_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_rng",
    "ext4",
)


@dataclass(frozen=True, slots=True)
class KernelRelease:
    """What apt would fetch: the image package, its Debian version and the kernel release (uname -r)."""

    package: str
    package_version: str
    release: str


def resolve() -> KernelRelease:
    """The kernel the cloud meta package currently points at (`apt-cache depends`, no download)."""
    out = _apt_cache("depends", META_PACKAGE)
    match = re.search(r"Depends:\s*(linux-image-(\S+-cloud-amd64))\b", out)
    if not match:
        raise RuntimeError(
            f"apt-cache depends {META_PACKAGE} names no kernel image; run apt-get update. Output: {out!r}"
        )
    package, release = match.group(1), match.group(2)
    show = _apt_cache("show", "--no-all-versions", package)
    version = re.search(r"^Version:\s*(\S+)", show, re.M)
    if not version:
        raise RuntimeError(f"apt-cache show {package} gives no version")
    return KernelRelease(package=package, package_version=version.group(1), release=release)


def _apt_cache(*args: str) -> str:
    proc = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"apt-cache {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def fetch(kernel: KernelRelease, workdir: Path, build_log: BuildLog) -> Path:
    """Download the kernel .deb into `workdir` and unpack it there; returns the unpacked tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # apt's _apt user writes the download when it can
    build_log.run(["apt-get", "download", f"{kernel.package}={kernel.package_version}"], cwd=workdir)
    debs = sorted(workdir.glob(f"{kernel.package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download left no {kernel.package} .deb")
    tree = workdir / "tree"
    build_log.run(["dpkg-deb", "-x", debs[-1], tree])
    debs[-1].unlink()
    build_log.run(["depmod", "-b", tree, kernel.release])  # the .deb ships no modules.dep
    return tree


def bzimage(tree: Path, kernel: KernelRelease) -> Path:
    path = tree / "boot" / f"vmlinuz-{kernel.release}"
    if not path.is_file():
        raise RuntimeError(f"{path.name} is not in {kernel.package}")
    return path


def extract_vmlinux(bz: Path, out: Path, build_log: BuildLog) -> None:
    """Write the uncompressed ELF kernel inside the bzImage `bz` to `out`.

    The x86 boot protocol's setup header gives where the compressed payload sits:
    `(setup_sects + 1) * 512 + payload_offset`, `payload_length` bytes long.
    """
    data = bz.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        raise RuntimeError(f"{bz} is not a bzImage (no HdrS setup header)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    if payload[:4] == b"\x02\x21\x4c\x18":  # LZ4 legacy frame (Debian's choice)
        packed = out.with_suffix(".lz4")
        packed.write_bytes(payload)
        try:
            with out.open("wb") as f:
                # lz4 -dc stops at the size trailer the kernel build appends and says so; that is fine.
                proc = subprocess.run(["lz4", "-dc", packed], stdout=f, stderr=subprocess.PIPE, check=False)
            build_log.write(proc.stderr.decode(errors="replace"))
        finally:
            packed.unlink()
    elif payload[:2] == b"\x1f\x8b":
        out.write_bytes(gzip.decompress(payload))
    elif payload[:6] == b"\xfd7zXZ\x00":
        out.write_bytes(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload))
    elif payload[:4] == b"\x28\xb5\x2f\xfd":
        with out.open("wb") as f:
            subprocess.run(["zstd", "-dc"], input=payload, stdout=f, check=True)
    else:
        raise RuntimeError(f"unknown kernel compression (payload starts {payload[:6].hex()})")
    with out.open("rb") as f:
        if f.read(4) != b"\x7fELF":
            raise RuntimeError("the decompressed kernel payload is not an ELF file")


def module_load_order(tree: Path, kernel: KernelRelease, build_log: BuildLog) -> list[Path]:
    """The .ko files of WANTED_MODULES and their dependencies, dependencies first (built-ins skipped)."""
    order: list[Path] = []
    for name in WANTED_MODULES:
        out = build_log.capture(
            ["modprobe", "--dirname", tree, "--set-version", kernel.release, "--show-depends", name]
        )
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                if path not in order:
                    order.append(path)
            elif parts and parts[0] != "builtin":
                raise RuntimeError(f"unexpected modprobe output for {name}: {line!r}")
    return order


def module_bytes(src: Path) -> bytes:
    """One module's contents, decompressed from .ko.xz / .ko.gz so that busybox insmod can load it."""
    if src.suffix == ".xz":
        return lzma.decompress(src.read_bytes())
    if src.suffix == ".gz":
        return gzip.decompress(src.read_bytes())
    if src.suffix == ".ko":
        return src.read_bytes()
    raise RuntimeError(f"cannot load compressed module {src.name}")
