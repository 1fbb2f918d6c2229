"""Logs a guest writes to, kept to a size: a VM's serial console and its VMM's own output.

The VMM never writes these files itself (a guest printing forever would fill the host's disk): it writes
into a socket or a pipe, and the agent appends what arrives to the file, dropping the oldest half whenever
it would pass its limit. The file is the agent's (0600); its tail is what a failed boot reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

#: The most a console or VMM log keeps.
LOG_LIMIT = 1 << 20
_CHUNK = 1 << 16


class CappedLog:
    """Appends to `path`, never letting it grow past `limit` bytes."""

    def __init__(self, path: Path, limit: int = LOG_LIMIT) -> None:
        self.path = path
        self.limit = limit

    def append(self, data: bytes) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size + len(data) > self.limit:  # keep the newest half of what the file and `data` hold
            keep, old = self.limit // 2, b""
            if len(data) < keep:
                with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
                    f.seek(max(0, size - keep))
                    old = f.read()
            self._write((old + data)[-keep:], os.O_TRUNC)
        else:
            self._write(data, os.O_APPEND)

    def _write(self, data: bytes, mode: int) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | mode, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Append everything `reader` yields until it ends."""
        while chunk := await reader.read(_CHUNK):
            self.append(chunk)


class LogPumps:
    """The tasks copying one VM's streams into their capped logs."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []

    def pipe(self, reader: asyncio.StreamReader | None, log: CappedLog) -> None:
        if reader is not None:
            self._tasks.append(asyncio.create_task(log.pump(reader)))

    async def socket(self, path: Path, log: CappedLog) -> None:
        """Connect to a VMM's listening console socket and copy what it sends. Best effort: a console
        that cannot be reached leaves the VM running without one."""
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(str(path))
            self._writers.append(writer)
            self._tasks.append(asyncio.create_task(log.pump(reader)))

    async def drained(self, timeout_s: float = 2.0) -> None:
        """Wait (a while) until the streams end: after the VMM exited, so that its last words are in."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        self._tasks, self._writers = [], []
