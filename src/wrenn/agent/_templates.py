"""Templates made from snapshots: a paused sandbox's memory, devices and disk, kept to start new sandboxes
from. `templates/<name>/` holds `vmstate`, `memory` (when the RAM was a file), `rootfs.qcow2` (a copy of
the sandbox's overlay, still backed by its base image) and `meta.json`.

`vmstate` and `memory` are hard links to the paused sandbox's snapshot files: a snapshot's files are never
written again once complete (the next pause writes a new directory), so sharing them costs nothing. The
disk is copied, since the sandbox writes on to its own once resumed.

A built template (docs/templates.md) is materialised here too, under its build id, from its blobs in this
host's cache: `vmstate` and `memory` hard links to them, `rootfs.qcow2` an empty overlay over the top of
its disk chain, and `meta.json` naming the kernel and initrd blobs its sandboxes boot with.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrenn import images

from . import _disk
from ._errors import SandboxError
from ._private import write_private

log = logging.getLogger("wrenn.agent.templates")

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    directory: Path
    meta: dict[str, Any]

    @property
    def vcpus(self) -> int:
        return int(self.meta["vcpus"])

    @property
    def memory_mb(self) -> int:
        return int(self.meta["memory_mb"])

    @property
    def disk_size_mb(self) -> int:
        return int(self.meta["disk_size_mb"])

    @property
    def image(self) -> str:
        """The base image the snapshot's guest was booted from, and its version."""
        return str(self.meta["image"])

    @property
    def image_version(self) -> str:
        return str(self.meta["image_version"])

    @property
    def created_at(self) -> float:
        return float(self.meta.get("created_at", 0))

    def size_bytes(self) -> int:
        return sum(_disk.allocated_bytes(f) for f in self.directory.iterdir() if f.is_file())

    def boot_image(self) -> images.Image | None:
        """A built template's kernel and initrd (blobs of this host's cache); None for one made from a
        sandbox, whose base image is on this host."""
        if self.meta.get("kind") != "built":
            return None
        kernel, initrd = Path(str(self.meta["kernel"])), Path(str(self.meta["initrd"]))
        return images.Image(
            template=self.image,
            version=self.image_version,
            kernel_version=str(self.meta.get("kernel_version", "")),
            envd_version=str(self.meta.get("envd_version", "")),
            directory=self.directory,
            vmlinuz=kernel,
            vmlinux=kernel,
            initrd=initrd,
            rootfs=self.directory / "rootfs.qcow2",
        )


class TemplateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, name: str) -> Template | None:
        if not NAME.match(name):
            return None
        path = self.directory / name
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return Template(name, path, meta) if isinstance(meta, dict) else None

    async def create(self, name: str, snapshot: Path, disk: Path, meta: dict[str, Any]) -> Template:
        """A template from a complete pause snapshot and the sandbox's disk (not written meanwhile)."""
        if not NAME.match(name):
            raise SandboxError("invalid_argument", "a template name is 1-64 characters of [a-z0-9._-]")
        final = self.directory / name
        if final.exists():
            raise SandboxError("already_exists", f"template {name!r} already exists on this host")
        partial = self.directory / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700, parents=True)
        started = time.monotonic()
        try:
            for item in ("vmstate", "memory"):
                if (snapshot / item).is_file():
                    os.link(snapshot / item, partial / item)
            await _disk.copy_sparse(disk, partial / "rootfs.qcow2")
            # meta.json holds the guest's envd token
            write_private(partial / "meta.json", json.dumps({**meta, "kind": "template"}, indent=1))
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        template = Template(name, final, {**meta, "kind": "template"})
        log.info(
            "template created",
            extra={
                "template": name,
                "bytes": template.size_bytes(),
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return template

    async def materialize(
        self, name: str, *, disk: list[tuple[Path, str]], vmstate: Path, memory: Path, meta: dict[str, Any]
    ) -> Template:
        """Template `name` of a built template's blobs (already in this host's cache and checked; `disk`
        its chain, top first); the one there when it was made before. Its `meta.json` records the chain
        (`disk_chain`): sandboxes' VMMs are handed it, never what a layer's header names."""
        existing = self.get(name)
        if existing is not None:
            return existing
        if not NAME.match(name):
            raise SandboxError("invalid_argument", "a template name is 1-64 characters of [a-z0-9._-]")
        final, partial = self.directory / name, self.directory / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            for source, item in ((vmstate, "vmstate"), (memory, "memory")):
                try:
                    os.link(source, partial / item)
                except OSError:
                    await _disk.copy_sparse(source, partial / item)
            await _disk.create_overlay_over(
                disk, partial / "rootfs.qcow2", int(meta.get("disk_size_mb") or 0)
            )
            meta = {
                **meta,
                "kind": "built",
                "disk_base": str(disk[0][0]),
                "disk_chain": _disk.chain_record(disk),
            }
            write_private(partial / "meta.json", json.dumps(meta, indent=1))
            partial.rename(final)
        except FileExistsError:
            shutil.rmtree(partial, ignore_errors=True)  # made meanwhile by a concurrent create
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        made = self.get(name)
        if made is None:
            raise SandboxError("internal", f"template {name!r} could not be made on this host")
        log.info("built template made ready here", extra={"template": name})
        return made

    def delete(self, name: str) -> None:
        template = self.get(name)
        if template is None:
            raise SandboxError("not_found", f"template {name!r} not found on this host")
        shutil.rmtree(template.directory)
        log.info("template deleted", extra={"template": name})

    def cleanup_partial(self) -> None:
        """Remove what a crash during a create left."""
        if self.directory.is_dir():
            for path in self.directory.glob(".*.partial"):
                shutil.rmtree(path, ignore_errors=True)
