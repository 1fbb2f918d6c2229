"""Cold storage for hibernated sandboxes: one archive per sandbox in a directory every host of a control
plane can reach (a network file system, or a bucket mounted as one), so that a hibernated sandbox can wake
on any of them.

An archive is a sparse-aware tar compressed with zstd: the pause snapshot (`vmstate`, `memory`,
`meta.json`), the sandbox's `state.json`, and its disk flattened into one qcow2 with no backing file (a
host-local base image or template cannot follow it elsewhere). Archives are written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import _disk
from ._sandbox import SANDBOX_ID

log = logging.getLogger("wrenn.agent.cold")

SUFFIX = ".tar.zst"
#: What an archive may hold (anything else in it is never unpacked).
MEMBERS = ("vmstate", "memory", "meta.json", "state.json", "rootfs.qcow2")


class ColdStorageError(RuntimeError):
    pass


async def _output(*args: str) -> str:
    try:
        return await _disk.run(*args)
    except _disk.DiskError as exc:
        raise ColdStorageError(str(exc)) from None


async def _run(*args: str) -> None:
    await _output(*args)


class ColdStore:
    def __init__(self, directory: Path, level: int = 3) -> None:
        self.directory = directory
        self.level = level

    def path(self, sandbox_id: str) -> Path:
        if not SANDBOX_ID.match(sandbox_id):
            raise ColdStorageError(f"{sandbox_id[:80]!r} is not a sandbox id")
        return self.directory / f"{sandbox_id}{SUFFIX}"

    def exists(self, sandbox_id: str) -> bool:
        return self.path(sandbox_id).is_file()

    async def put(self, sandbox_id: str, stage: Path) -> int:
        """Archive every file of `stage`; the archive's size."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final, partial = self.path(sandbox_id), self.directory / f".{sandbox_id}{SUFFIX}.partial"
        partial.unlink(missing_ok=True)  # tar creates it anew: 0600 under the agent's umask
        started = time.monotonic()
        names = sorted(p.name for p in stage.iterdir())
        try:
            await _run(
                "tar", "--sparse", "--use-compress-program", f"zstd -T0 -{self.level} -q",
                "-C", str(stage), "-cf", str(partial), "--", *names,
            )  # fmt: skip
            partial.rename(final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        size = final.stat().st_size
        log.info(
            "archived to cold storage",
            extra={"sandbox": sandbox_id, "bytes": size, "ms": round((time.monotonic() - started) * 1000)},
        )
        return size

    async def get(self, sandbox_id: str, target: Path) -> None:
        """Unpack a sandbox's archive into `target`: its known members only, as plain files owned by root
        (never the archive's owners, modes beyond 0600, or paths out of `target`). The caller checks
        what it unpacked before using it."""
        archive = self.path(sandbox_id)
        if not archive.is_file():
            raise ColdStorageError(f"no archive of {sandbox_id} in {self.directory}")
        started = time.monotonic()
        listed = await _output("tar", "--use-compress-program", "zstd -T0 -q", "-tf", str(archive))
        members = [name for name in listed.splitlines() if name in MEMBERS]
        await _run(
            "tar", "--sparse", "--use-compress-program", "zstd -T0 -q", "-C", str(target),
            "-xf", str(archive), "--no-same-owner", "--no-same-permissions", "--no-overwrite-dir",
            "--", *members,
        )  # fmt: skip
        log.info(
            "unpacked from cold storage",
            extra={"sandbox": sandbox_id, "ms": round((time.monotonic() - started) * 1000)},
        )

    def delete(self, sandbox_id: str) -> None:
        self.path(sandbox_id).unlink(missing_ok=True)
