"""Work inside a running capsule, through its host agent: commands, files, processes, metrics. The
routes shape HTTP around these; the conversions between the agent's messages and the API's JSON live
here, once."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from protobuf import Oneof
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _errors
from .._agents import AgentPool
from ..db import Capsule, CapsuleStatus, Host, HostStatus
from . import usage

log = logging.getLogger("wrenn.controlplane.guest")
FILE_TYPES = {pb.FileType.FILE: "file", pb.FileType.DIRECTORY: "directory", pb.FileType.SYMLINK: "symlink"}
#: `?range=` of the metrics routes, as the agent names it.
RANGES = {
    "5m": pb.MetricsRange.LAST_5M,
    "10m": pb.MetricsRange.LAST_10M,
    "1h": pb.MetricsRange.LAST_1H,
    "2h": pb.MetricsRange.LAST_2H,
    "6h": pb.MetricsRange.LAST_6H,
    "12h": pb.MetricsRange.LAST_12H,
    "24h": pb.MetricsRange.LAST_24H,
}


def file_entry(e: pb.FileEntry | None) -> dict[str, Any]:
    """A FileEntry as the API shows it."""
    if e is None:
        return {}
    entry: dict[str, Any] = {
        "name": e.name,
        "path": e.path,
        "type": FILE_TYPES.get(e.type, "file"),
        "size": e.size,
        "mode": e.mode,
        "permissions": e.permissions,
        "owner": e.owner,
        "group": e.group,
        "modified_at": e.modified_at.seconds if e.modified_at else 0,
    }
    if e.has_field("symlink_target"):
        entry["symlink_target"] = e.symlink_target
    return entry


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _text(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return _b64(data), True


@dataclass(frozen=True, slots=True)
class Guest:
    """One running capsule on its host."""

    agents: AgentPool
    capsule: Capsule
    host: Host

    @property
    def _id(self) -> str:
        return self.capsule.id

    @property
    def _client(self) -> Any:
        return self.agents.client(self.host.address, host_id=self.host.id)

    async def _call(self, awaitable: Any) -> Any:
        return await self.agents.call(self.host.id, awaitable)

    async def exec(
        self, cmd: str, args: list[str], envs: dict[str, str], cwd: str, timeout_sec: int
    ) -> dict[str, Any]:
        """A foreground command: its output (utf-8, or base64 for both streams when either is not
        text), exit code and duration."""
        began = time.monotonic()
        request = pb.ExecRequest(
            sandbox_id=self._id, cmd=cmd, args=args, envs=envs, cwd=cwd, timeout_sec=timeout_sec
        )
        result = await self._call(self._client.exec(request, timeout_ms=(timeout_sec + 30) * 1000))
        stdout, b1 = _text(result.stdout)
        stderr, b2 = _text(result.stderr)
        if b1 != b2:  # one encoding for both
            stdout, stderr = _b64(result.stdout), _b64(result.stderr)
        return {
            "sandbox_id": self._id,
            "cmd": cmd,
            "stdout": stdout,
            "stderr": stderr,
            "exit_code": result.exit_code,
            "duration_ms": result.duration_ms or int((time.monotonic() - began) * 1000),
            "encoding": "base64" if (b1 or b2) else "utf-8",
            "timed_out": result.timed_out,
        }

    async def start(
        self, cmd: str, args: list[str], envs: dict[str, str], cwd: str, tag: str
    ) -> dict[str, Any]:
        """A background command: its pid and tag."""
        request = pb.StartBackgroundRequest(
            sandbox_id=self._id, cmd=cmd, args=args, envs=envs, cwd=cwd, tag=tag
        )
        started = await self._call(self._client.start_background(request))
        return {"sandbox_id": self._id, "cmd": cmd, "pid": started.pid, "tag": started.tag}

    async def write(self, path: str, content: bytes) -> None:
        await self._call(
            self._client.write_file(pb.WriteFileRequest(sandbox_id=self._id, path=path, content=content))
        )

    async def write_stream(self, path: AsyncIterator[str] | str, chunks: AsyncIterator[bytes]) -> None:
        """Write a file whose path may arrive late (a streamed multipart body) from chunks as they come."""

        async def messages() -> AsyncIterator[pb.WriteFileStreamRequest]:
            name = path if isinstance(path, str) else await anext(path)
            meta = pb.WriteFileMeta(sandbox_id=self._id, path=name)
            yield pb.WriteFileStreamRequest(content=Oneof("meta", meta))  # type: ignore[arg-type]
            async for chunk in chunks:
                yield pb.WriteFileStreamRequest(content=Oneof("chunk", chunk))  # type: ignore[arg-type]

        await self._call(self._client.write_file_stream(messages()))

    async def read(self, path: str) -> bytes:
        read = await self._call(self._client.read_file(pb.ReadFileRequest(sandbox_id=self._id, path=path)))
        return bytes(read.content)

    async def read_stream(self, path: str) -> AsyncIterator[bytes]:
        """The file's chunks; a missing file fails here, before the first chunk is handed out."""
        stream = aiter(
            self._client.read_file_stream(pb.ReadFileStreamRequest(sandbox_id=self._id, path=path))
        )
        first = await self._call(anext(stream, None))

        async def chunks() -> AsyncIterator[bytes]:
            if first is not None:
                yield first.chunk
            async for piece in stream:
                yield piece.chunk

        return chunks()

    async def list_dir(self, path: str, depth: int) -> list[dict[str, Any]]:
        listed = await self._call(
            self._client.list_dir(pb.ListDirRequest(sandbox_id=self._id, path=path, depth=depth))
        )
        return [file_entry(e) for e in listed.entries]

    async def mkdir(self, path: str) -> dict[str, Any]:
        made = await self._call(self._client.make_dir(pb.MakeDirRequest(sandbox_id=self._id, path=path)))
        return file_entry(made.entry)

    async def remove(self, path: str) -> None:
        await self._call(self._client.remove_path(pb.RemovePathRequest(sandbox_id=self._id, path=path)))

    async def processes(self) -> list[dict[str, Any]]:
        listed = await self._call(self._client.list_processes(pb.ListProcessesRequest(sandbox_id=self._id)))
        return [{"pid": p.pid, "tag": p.tag, "cmd": p.cmd, "args": list(p.args)} for p in listed.processes]

    async def kill(self, selector: str, signal: str) -> None:
        """Signal a process by pid (ASCII digits) or tag."""
        # ASCII digits only: "²".isdigit() is true but int() refuses it (was a 500).
        is_pid = selector.isascii() and selector.isdigit()
        if is_pid and int(selector) > 0xFFFFFFFF:  # was a 503 "host unreachable: out of range for uint32"
            raise _errors.bad_request(f"selector: pid {selector} is out of range")
        which = Oneof("pid", int(selector)) if is_pid else Oneof("tag", selector)
        kill = pb.KillProcessRequest(
            sandbox_id=self._id,
            selector=which,  # type: ignore[arg-type]
            signal=pb.Signal.SIGTERM if signal == "SIGTERM" else pb.Signal.SIGKILL,
        )
        await self._call(self._client.kill_process(kill))

    async def metrics(self, range_: str) -> list[pb.MetricsPoint]:
        got = await self._call(
            self._client.get_sandbox_metrics(
                pb.GetSandboxMetricsRequest(sandbox_id=self._id, range=RANGES[range_])
            )
        )
        return list(got.points)

    async def ping(self) -> None:
        await self._call(self._client.ping_sandbox(pb.PingSandboxRequest(sandbox_id=self._id)))


# --- metrics copied to the database --------------------------------------------------------------------


def _point(p: pb.MetricsPoint) -> dict[str, Any]:
    return {
        "t": p.timestamp.seconds if p.timestamp else 0,
        "cpu_pct": p.cpu_pct,
        "mem_bytes": p.mem_bytes,
        "disk_bytes": p.disk_bytes,
    }


async def metrics_window(guest: Guest) -> list[dict[str, Any]]:
    """Everything the host holds for the capsule, oldest first, each time once: the 2 h and 24 h rings'
    coarse points before the 10 min ring's every sample (`{t, cpu_pct, mem_bytes, disk_bytes}`)."""
    merged: dict[int, dict[str, Any]] = {}
    for range_ in ("24h", "2h", "10m"):  # finer last: its points win a shared second
        for point in await guest.metrics(range_):
            merged[point.timestamp.seconds if point.timestamp else 0] = _point(point)
    return [merged[t] for t in sorted(merged)]


async def history(
    session: AsyncSession, agents: AgentPool, capsule: Capsule, since: int = 0, range_: str | None = None
) -> list[dict[str, Any]]:
    """The capsule's samples from `since` (unix seconds), oldest first, whatever its status: those copied to
    the database, with, while it runs, what its host holds now (left out if its host does not answer): of
    `range_` alone (one call) when given, else all its rings."""
    stored = await usage.kept(session, capsule.id, since)
    host = await session.get(Host, capsule.host_id) if capsule.host_id else None
    if capsule.status != CapsuleStatus.RUNNING or host is None or host.status != HostStatus.ONLINE:
        return stored
    try:
        running = Guest(agents, capsule, host)
        if range_ is None:
            live = await metrics_window(running)
        else:
            live = [_point(p) for p in await running.metrics(range_)]
    except _errors.ApiError as exc:
        log.info(
            "capsule samples from the database only", extra={"capsule": capsule.id, "error": exc.message}
        )
        return stored
    return usage.merged(stored, [p for p in live if p["t"] >= since])
