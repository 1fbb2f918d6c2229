"""A built image on disk: `{data}/images/{template}/{version}/` plus a `current` symlink per template."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._templates import ALIASES, DEFAULT_MEMORY_MB, TEMPLATES

DEFAULT_DATA_DIR = Path(os.environ.get("WRENN_DATA_DIR", "/var/lib/wrenn"))
MANIFEST = "manifest.json"
#: The files of a complete image, by manifest key.
FILES: dict[str, str] = {
    "vmlinuz": "vmlinuz",
    "vmlinux": "vmlinux",
    "initrd": "initrd.img",
    "rootfs": "rootfs.ext4",
}


#: An image (template) name, and a version (12 hex digits of the inputs' hash): each becomes a path
#: component, so nothing else (no `/`, no `..`) is ever joined onto the images directory.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION = re.compile(r"^[0-9a-f]{1,64}$")


class InvalidName(ValueError):
    pass


def images_dir(data_dir: Path) -> Path:
    return data_dir / "images"


def template_dir(data_dir: Path, template: str) -> Path:
    if not NAME.match(template):
        raise InvalidName(f"an image name is 1-64 characters of [a-z0-9_-], not {template[:80]!r}")
    return images_dir(data_dir) / template


def version_dir(data_dir: Path, template: str, version: str) -> Path:
    if not VERSION.match(version):
        raise InvalidName(f"an image version is hex digits, not {version[:80]!r}")
    return template_dir(data_dir, template) / version


@dataclass(frozen=True, slots=True)
class Image:
    """A complete, read-only guest image. Boot `vmlinuz` (QEMU) or `vmlinux` (Firecracker) with `initrd`
    and `rootfs` as /dev/vda (through a copy-on-write overlay: never write to `rootfs`)."""

    template: str
    version: str
    kernel_version: str
    envd_version: str
    directory: Path
    vmlinuz: Path
    vmlinux: Path
    initrd: Path
    rootfs: Path
    #: What the recipe says the image is for.
    description: str = ""

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_path.read_text())
        return data

    def memory_mb(self) -> int:
        """The memory (MiB) of a capsule of this image whose create asks for none: its template's."""
        template = TEMPLATES.get(self.template)
        return template.memory_mb if template is not None else DEFAULT_MEMORY_MB

    def aliases(self) -> list[str]:
        """Other names this image answers to (E2B's and the seed's names for it)."""
        return sorted(alias for alias, name in ALIASES.items() if name == self.template)

    def readiness(self) -> dict[str, Any] | None:
        """The template's readiness declaration (`{"port", "path", "timeout_s"}`), None when envd's answer
        is enough (or the manifest is unreadable)."""
        try:
            ready = self.manifest().get("ready")
        except (OSError, ValueError):
            return None
        return ready if isinstance(ready, dict) else None

    @classmethod
    def load(cls, directory: Path) -> Image | None:
        """The image in `directory`, or None when it is missing or incomplete."""
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            files = manifest["files"]
            for key, name in FILES.items():
                if (directory / name).stat().st_size != files[key]["size"]:
                    return None
            return cls(
                template=manifest["template"],
                version=manifest["version"],
                kernel_version=manifest["kernel"]["release"],
                envd_version=manifest["envd_version"],
                description=str(manifest.get("inputs", {}).get("template", {}).get("description", "")),
                directory=directory,
                **{key: directory / name for key, name in FILES.items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def find(template: str = "minimal", data_dir: Path | None = None) -> Image | None:
    """The current (newest complete) image of `template`, or None when there is none (or the name is
    not an image name)."""
    if not NAME.match(template):
        return None
    tdir = template_dir(data_dir or DEFAULT_DATA_DIR, ALIASES.get(template, template))
    current = tdir / "current"
    if not current.is_symlink() or not VERSION.match(os.readlink(current)):
        return None  # `current` names a version beside it, nothing else
    return Image.load((tdir / os.readlink(current)).resolve())


def available(data_dir: Path) -> list[Image]:
    """The current image of every template built under `data_dir`, by name."""
    root = images_dir(data_dir)
    names = sorted(p.name for p in root.iterdir() if NAME.match(p.name)) if root.is_dir() else []
    return [image for name in names if (image := find(name, data_dir)) is not None]


def find_version(template: str, version: str, data_dir: Path) -> Image | None:
    """That exact build of `template`, if it is still on disk; None for names that are not names."""
    if not NAME.match(template) or not VERSION.match(version):
        return None
    return Image.load(version_dir(data_dir, ALIASES.get(template, template), version))


def point_current(template_path: Path, version: str) -> None:
    """Atomically repoint `current` at `version` (a relative symlink)."""
    link = template_path / "current"
    tmp = template_path / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    tmp.replace(link)
