"""The template store: built templates' files, named by their content (SHA-256), and the build cache.

Two directories. The **store** (`--template-store`) is where a host publishes what it built; all hosts of
a control plane mount the same one (the shared directory of cold storage, say) for a template built on
one host to start on any. The **cache** (`{data_dir}/blobs`) is this host's copy: a blob is fetched from
the store the first time it is needed, its SHA-256 checked against the name the control plane gave, and
kept. Without a `--template-store`, the cache is the store.

Blob files are named by the hex digest alone. A qcow2 layer names its backing file by the digest of the
layer below it, relative to its own directory, so a chain of layers resolves alike in the store and in
any host's cache, byte for byte the same file. The store is written by other hosts: nothing in it is used
before its digest is checked, and a layer must name exactly the backing file expected of it and no
external data file (`check_layer`).

`cache/<key>.json` (in the store) records what a build step made: the step's key is a hash of everything
it depends on (the team, the base, the steps before it and its own inputs), its entry the disk chain
after it and the build's user, workdir and environment at that point.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from . import _disk

log = logging.getLogger("wrenn.agent.blobs")

DIGEST = re.compile(r"^[0-9a-f]{64}$")
KEY = DIGEST


class BlobError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST.match(digest):
        raise BlobError(f"{digest[:80]!r} is not a SHA-256 hex digest")
    return digest


class BlobStore:
    def __init__(self, cache: Path, store: Path | None = None) -> None:
        self.cache = cache
        self.store = store or cache
        self._fetching: dict[str, asyncio.Lock] = {}

    @property
    def shared(self) -> bool:
        return self.store != self.cache

    def local(self, digest: str) -> Path:
        return self.cache / check_digest(digest)

    def published(self, digest: str) -> Path:
        return self.store / check_digest(digest)

    def prepare(self) -> None:
        for directory in {self.cache, self.store, self.store / "cache"}:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.cache.glob(".*.partial"):
            leftover.unlink(missing_ok=True)

    # --- getting a blob --------------------------------------------------------------------------------

    async def ensure(self, digest: str, size: int | None = None) -> Path:
        """The local path of blob `digest`, fetched from the store and verified when this host lacks it."""
        path = self.local(digest)
        if path.is_file() and (size is None or path.stat().st_size == size):
            return path
        lock = self._fetching.setdefault(digest, asyncio.Lock())
        async with lock:
            if path.is_file():
                return path
            source = self.published(digest)
            if not source.is_file():
                raise BlobError(f"blob {digest[:12]} is in neither this host's cache nor the template store")
            partial = self.cache / f".{digest}.partial"
            started = time.monotonic()
            try:
                await _disk.copy_sparse(source, partial)
                actual = await asyncio.to_thread(sha256_file, partial)
                if actual != digest:
                    raise BlobError(
                        f"blob {digest[:12]} in the template store is corrupt (its SHA-256 is {actual})"
                    )
                partial.chmod(0o444)
                partial.rename(path)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            log.info(
                "blob fetched",
                extra={
                    "blob": digest[:12],
                    "bytes": path.stat().st_size,
                    "ms": round((time.monotonic() - started) * 1000),
                },
            )
        return path

    # --- adding a blob --------------------------------------------------------------------------------

    async def add(self, path: Path, digest: str | None = None) -> tuple[str, int]:
        """Keep the file at `path` (consumed: moved or linked) as a blob and publish it; its digest and size.
        `digest` is given only for a file whose digest is known for sure (a base image's, from its
        manifest)."""
        if digest is None:
            digest = await asyncio.to_thread(sha256_file, path)
        target = self.local(digest)
        if not target.is_file():
            partial = self.cache / f".{digest}.partial"
            partial.unlink(missing_ok=True)
            try:
                os.link(path, partial)
            except OSError:
                await _disk.copy_sparse(path, partial)
            partial.chmod(0o444)
            partial.rename(target)
        await self.publish(digest)
        return digest, target.stat().st_size

    async def publish(self, digest: str) -> None:
        """Copy a local blob into the shared store (no-op when the cache is the store, or it is there)."""
        if not self.shared:
            return
        target = self.published(digest)
        if target.is_file():
            return
        partial = self.store / f".{digest}.{os.getpid()}.partial"
        try:
            await _disk.copy_sparse(self.local(digest), partial)
            partial.chmod(0o444)
            partial.rename(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    # --- layers ---------------------------------------------------------------------------------------

    async def check_layer(self, digest: str, parent: str, parent_format: str) -> None:
        """BlobError unless the qcow2 layer `digest` names exactly `parent` (relative, of `parent_format`) as
        its backing file, and no external data file: a layer from the store opens nothing else."""
        out = await _disk.run(
            "qemu-img", "info", "--output=json", "-f", "qcow2", "--", str(self.local(digest))
        )
        try:
            info = json.loads(out)
        except ValueError:
            raise BlobError(f"qemu-img info gave no JSON for blob {digest[:12]}") from None
        if info.get("format") != "qcow2" or info.get("backing-filename") != parent:
            raise BlobError(f"blob {digest[:12]} is not a qcow2 layer over {parent[:12]}")
        if info.get("backing-filename-format", parent_format) != parent_format:
            raise BlobError(f"blob {digest[:12]} names its backing file's format wrongly")
        specific = (info.get("format-specific") or {}).get("data") or {}
        if specific.get("data-file"):
            raise BlobError(f"blob {digest[:12]} names an external data file")

    async def ensure_chain(self, chain: list[tuple[str, int]]) -> Path:
        """Every blob of a disk chain (bottom first: a raw file system, then qcow2 layers) here and checked;
        the local path of its top."""
        top = Path()
        for index, (digest, size) in enumerate(chain):
            top = await self.ensure(digest, size)
            if index:
                parent_format = "raw" if index == 1 else "qcow2"
                await self.check_layer(digest, chain[index - 1][0], parent_format)
        return top

    def local_chain(self, chain: list[tuple[str, int]]) -> list[tuple[Path, str]]:
        """A disk chain of blobs (bottom first) as this host's files, top first, with their formats."""
        return [(self.local(d), "raw" if i == 0 else "qcow2") for i, (d, _) in enumerate(chain)][::-1]

    # --- the build cache --------------------------------------------------------------------------------

    def cache_entry(self, key: str) -> dict[str, Any] | None:
        if not KEY.match(key):
            return None
        try:
            entry = json.loads((self.store / "cache" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def put_cache_entry(self, key: str, entry: dict[str, Any]) -> None:
        directory = self.store / "cache"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = directory / f".{key}.{os.getpid()}.partial"
        partial.write_text(json.dumps(entry, sort_keys=True))
        partial.rename(directory / f"{check_digest(key)}.json")

    def cached_blobs(self) -> set[str]:
        found: set[str] = set()
        for path in (self.store / "cache").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                found.update(str(d) for d, _ in json.loads(path.read_text())["chain"])
        return found

    # --- collection -------------------------------------------------------------------------------------

    def collect(self, keep: set[str], *, store: bool, grace_s: float) -> tuple[int, int]:
        """Remove blobs neither in `keep` nor in the build cache nor younger than `grace_s` (a build may be
        making them): from this host's cache, and from the store with `store`. (count, bytes) removed."""
        keep = keep | self.cached_blobs()
        now = time.time()
        removed = freed = 0
        directories = [self.cache] + ([self.store] if store and self.shared else [])
        for directory in directories:
            for path in directory.iterdir():
                if not DIGEST.match(path.name) or path.name in keep:
                    continue
                with contextlib.suppress(OSError):
                    st = path.stat()
                    if now - st.st_mtime < grace_s:
                        continue
                    path.unlink()
                    removed, freed = removed + 1, freed + st.st_blocks * 512
        if removed:
            log.info("template store collected", extra={"removed": removed, "bytes": freed})
        return removed, freed
