"""The SDK's data types: plain dataclasses, each with the parser of its JSON shape."""

from __future__ import annotations

import base64
import builtins
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "CapsuleInfo",
    "CommandHandle",
    "CommandResult",
    "FileEntry",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "ProcessInfo",
    "PtyEvent",
    "PtyEventType",
    "Status",
    "StreamErrorEvent",
    "StreamEvent",
    "StreamExitEvent",
    "StreamStartEvent",
    "StreamStderrEvent",
    "StreamStdoutEvent",
    "Template",
]


class Status(StrEnum):
    """A capsule's status. `CapsuleInfo.status` is a plain `str` so that a status this SDK does not
    know yet still parses; it compares equal to these members (`info.status == Status.running`)."""

    pending = "pending"
    starting = "starting"
    running = "running"
    paused = "paused"
    hibernating = "hibernating"
    hibernated = "hibernated"
    stopped = "stopped"
    error = "error"
    missing = "missing"


def _dt(value: Any) -> datetime | None:
    """A time from the API as aware UTC: RFC 3339 with `Z` or an offset (what Wrenn sends), a naive ISO
    time (older servers' SQLite values, which are UTC), or unix seconds."""
    if not value:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass
class CapsuleInfo:
    """A capsule as the API describes it (`GET /v1/capsules/{id}`). Exported as `wrenn.models.Capsule`
    too, the seed's name for it."""

    id: str
    status: str
    template: str = "minimal"
    vcpus: int = 1
    memory_mb: int = 512
    timeout_sec: int = 0
    guest_ip: str = ""
    host_ip: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    last_active_at: datetime | None = None
    last_updated: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Set when created with `allow_public_traffic=False`: send it as `X-Traffic-Access-Token` to reach
    #: the capsule's ports through the proxy.
    traffic_access_token: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CapsuleInfo:
        return cls(
            id=str(data["id"]),
            status=str(data.get("status", "")),
            template=str(data.get("template", "")),
            vcpus=_int(data.get("vcpus")),
            memory_mb=_int(data.get("memory_mb")),
            timeout_sec=_int(data.get("timeout_sec")),
            guest_ip=str(data.get("guest_ip") or ""),
            host_ip=str(data.get("host_ip") or ""),
            created_at=_dt(data.get("created_at")),
            started_at=_dt(data.get("started_at")),
            last_active_at=_dt(data.get("last_active_at")),
            last_updated=_dt(data.get("last_updated")),
            metadata=dict(data.get("metadata") or {}),
            traffic_access_token=data.get("traffic_access_token") or None,
        )


@dataclass
class Template:
    """A template or snapshot (`/v1/snapshots`)."""

    name: str
    type: str = "snapshot"
    vcpus: int = 0
    memory_mb: int = 0
    size_bytes: int = 0
    created_at: datetime | None = None
    platform: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Template:
        return cls(
            name=str(data["name"]),
            type=str(data.get("type", "snapshot")),
            vcpus=_int(data.get("vcpus")),
            memory_mb=_int(data.get("memory_mb")),
            size_bytes=_int(data.get("size_bytes")),
            created_at=_dt(data.get("created_at")),
            platform=bool(data.get("platform", False)),
            metadata=dict(data.get("metadata") or {}),
        )


class FileType(StrEnum):
    file = "file"
    directory = "directory"
    symlink = "symlink"


@dataclass
class FileEntry:
    """One entry of `files.list`/`files.make_dir`. `modified_at` is in Unix seconds, as the API sends it."""

    name: str
    path: str
    type: str = "file"
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_at: int = 0
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == FileType.directory

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        target = data.get("symlink_target")
        return cls(
            name=str(data.get("name", "")),
            path=str(data.get("path", "")),
            type=str(data.get("type", "file")),
            size=_int(data.get("size")),
            mode=_int(data.get("mode")),
            permissions=str(data.get("permissions", "")),
            owner=str(data.get("owner", "")),
            group=str(data.get("group", "")),
            modified_at=_int(data.get("modified_at")),
            symlink_target=None if target is None else str(target),
        )


@dataclass
class CommandResult:
    """A foreground command's outcome. Output the server sent as base64 (not valid UTF-8) is decoded
    with replacement characters; the raw bytes are in `stdout_bytes`/`stderr_bytes`."""

    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int | None = None
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommandResult:
        out, err = str(data.get("stdout") or ""), str(data.get("stderr") or "")
        if data.get("encoding") == "base64":
            out_b, err_b = base64.b64decode(out), base64.b64decode(err)
        else:
            out_b, err_b = out.encode(), err.encode()
        duration = data.get("duration_ms")
        return cls(
            stdout=out_b.decode("utf-8", errors="replace"),
            stderr=err_b.decode("utf-8", errors="replace"),
            exit_code=_int(data.get("exit_code"), -1),
            duration_ms=None if duration is None else _int(duration),
            stdout_bytes=out_b,
            stderr_bytes=err_b,
        )


@dataclass
class CommandHandle:
    """A background command (`commands.run(..., background=True)`)."""

    pid: int
    tag: str
    capsule_id: str


@dataclass
class ProcessInfo:
    """A process the capsule's agent tracks (`commands.list()`)."""

    pid: int
    tag: str | None = None
    cmd: str | None = None
    args: builtins.list[str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessInfo:
        args = data.get("args")
        return cls(
            pid=_int(data.get("pid")),
            tag=data.get("tag") or None,
            cmd=data.get("cmd"),
            args=None if args is None else [str(a) for a in args],
        )


# --- exec/stream and processes/{selector}/stream events --------------------------------------------


@dataclass
class StreamEvent:
    """Base of the events of `commands.stream` and `commands.connect`. Unknown message types arrive as
    a bare `StreamEvent` with their `type`."""

    type: str


@dataclass
class StreamStartEvent(StreamEvent):
    pid: int = 0


@dataclass
class StreamStdoutEvent(StreamEvent):
    data: str = ""


@dataclass
class StreamStderrEvent(StreamEvent):
    data: str = ""


@dataclass
class StreamExitEvent(StreamEvent):
    exit_code: int = -1


@dataclass
class StreamErrorEvent(StreamEvent):
    data: str = ""


def parse_stream_event(raw: dict[str, Any]) -> StreamEvent:
    kind = str(raw.get("type") or "unknown")
    if kind == "start":
        return StreamStartEvent(kind, pid=_int(raw.get("pid")))
    if kind == "stdout":
        return StreamStdoutEvent(kind, data=str(raw.get("data") or ""))
    if kind == "stderr":
        return StreamStderrEvent(kind, data=str(raw.get("data") or ""))
    if kind == "exit":
        return StreamExitEvent(kind, exit_code=_int(raw.get("exit_code"), -1))
    if kind == "error":
        return StreamErrorEvent(kind, data=str(raw.get("data") or ""))
    return StreamEvent(kind)


# --- pty ------------------------------------------------------------------------------------------


class PtyEventType(StrEnum):
    started = "started"
    output = "output"
    exit = "exit"
    error = "error"
    ping = "ping"


@dataclass
class PtyEvent:
    """One server message of a PTY session. `data` is the decoded output for `output`, the message
    (UTF-8) for `error`, and empty otherwise; `pid`/`tag` come with `started`, `exit_code` with `exit`,
    `fatal` with `error`."""

    type: str
    data: bytes = b""
    pid: int | None = None
    tag: str | None = None
    exit_code: int | None = None
    fatal: bool = False

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PtyEvent:
        kind = str(raw.get("type") or "")
        if kind == PtyEventType.started:
            pid = raw.get("pid")
            return cls(kind, pid=None if pid is None else _int(pid), tag=raw.get("tag"))
        if kind == PtyEventType.output:
            encoded = raw.get("data") or ""
            return cls(kind, data=base64.b64decode(encoded) if encoded else b"")
        if kind == PtyEventType.exit:
            return cls(kind, exit_code=_int(raw.get("exit_code"), -1))
        if kind == PtyEventType.error:
            return cls(kind, data=str(raw.get("data") or "").encode(), fatal=bool(raw.get("fatal", False)))
        return cls(kind or PtyEventType.ping)


# --- files/watch ----------------------------------------------------------------------------------


class FilesystemEventType(StrEnum):
    create = "create"
    write = "write"
    remove = "remove"
    rename = "rename"
    chmod = "chmod"


@dataclass
class FilesystemEvent:
    """One change under a watched directory. `name` is relative to the watched path."""

    name: str
    type: str

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FilesystemEvent:
        return cls(name=str(raw.get("name", "")), type=str(raw.get("event_type", "")).lower())
