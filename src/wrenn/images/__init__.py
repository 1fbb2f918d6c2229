"""Guest images: the kernel and root filesystem builder (`wrenn image build`).

An image is Debian's cloud kernel (`vmlinuz` for QEMU, `vmlinux` for Firecracker), a busybox initramfs
with the virtio drivers, and an ext4 root disk (debootstrap bookworm minbase + envd), built on the host
and stored read-only under `{data_dir}/images/{template}/{version}/`:

    image = wrenn.images.build("minimal", data_dir=Path("/var/lib/wrenn"), progress=True)
    image = wrenn.images.find("minimal", data_dir)       # the current build, or None

The version is a hash of the inputs (template recipe, kernel package, envd sources and packages), so
building again is a no-op until one of them changes. The guest's PID 1 is `/sbin/wrenn-init`, which reads
`wrenn.hostname= wrenn.ip=ADDR/PREFIX wrenn.gw= wrenn.dns=A,B wrenn.time=SECONDS` from the kernel
command line and runs envd on TCP 49983.
"""

from ._build import DEFAULT_DISK_SIZE, build
from ._image import DEFAULT_DATA_DIR, NAME, VERSION, Image, InvalidName, available, find, find_version
from ._npm import NpmLockError, recipe_tarball
from ._steps import STEPS, BuildError
from ._templates import ALIASES, TEMPLATES, Readiness, Template

__all__ = [
    "ALIASES",
    "DEFAULT_DATA_DIR",
    "DEFAULT_DISK_SIZE",
    "NAME",
    "STEPS",
    "TEMPLATES",
    "VERSION",
    "BuildError",
    "Image",
    "InvalidName",
    "NpmLockError",
    "Readiness",
    "Template",
    "available",
    "build",
    "find",
    "find_version",
    "recipe_tarball",
]
