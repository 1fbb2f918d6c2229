"""The REST API without I/O: every endpoint as a `Call` (the request and how to parse its response),
and multi-step operations as generators of calls.

An operation is a generator that yields `Call`s and `Sleep`s and returns its result; `yield from call`
inside it evaluates to the parsed response. `_transport.run_sync` drives one with an `httpx.Client`,
`_transport.run_async` with an `httpx.AsyncClient`, so each operation is written once for both. (Why
over 500 lines: it is the whole REST surface the SDK speaks, one small `Call` per endpoint, kept in one
place so the sync and async faces cannot drift apart.)
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote, urlencode

import httpx

from . import _config
from ._exceptions import (
    WrennConflictError,
    WrennError,
    WrennNotFoundError,
    error_from_body,
    raise_for_response,
)
from ._models import (
    CapsuleInfo,
    CommandHandle,
    CommandResult,
    FileEntry,
    FilesystemEvent,
    ProcessInfo,
    Status,
    Template,
)

T = TypeVar("T")


@dataclass
class Call(Generic[T]):
    """One HTTP request of the API and the parser of its response."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, str] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    #: A streamed body: an iterable of bytes (sync client) or an async iterable (async client).
    content: Any = None
    headers: dict[str, str] | None = None
    #: Seconds or an `httpx.Timeout`; None keeps the client's default.
    timeout: float | httpx.Timeout | None = None

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.params:
            kwargs["params"] = self.params
        if self.data is not None:
            kwargs["data"] = self.data
        if self.files is not None:
            kwargs["files"] = self.files
        if self.content is not None:
            kwargs["content"] = self.content
        if self.headers:
            kwargs["headers"] = self.headers
        if self.timeout is not None:
            kwargs["timeout"] = self.timeout
        return kwargs

    def __iter__(self) -> Generator[Step, Any, T]:
        response = yield self
        return self.parse(response)


@dataclass(frozen=True)
class Sleep:
    """A pause inside an operation (`time.sleep` or `asyncio.sleep`, depending on the driver)."""

    seconds: float

    def __iter__(self) -> Generator[Step, Any, None]:
        yield self


Step: TypeAlias = "Call[Any] | Sleep"
Op: TypeAlias = Generator[Step, Any, T]


# --- response parsers -----------------------------------------------------------------------------


def _json_obj(response: httpx.Response) -> dict[str, Any]:
    raise_for_response(response)
    body = response.json()
    if not isinstance(body, dict):
        raise WrennError("internal_error", f"expected a JSON object, got {type(body).__name__}", 500)
    return body


def _json_list(response: httpx.Response, key: str | None = None) -> list[dict[str, Any]]:
    raise_for_response(response)
    body = response.json()
    if key is not None and isinstance(body, dict):
        body = body.get(key) or []
    if not isinstance(body, list):
        raise WrennError("internal_error", f"expected a JSON list, got {type(body).__name__}", 500)
    return [item for item in body if isinstance(item, dict)]


def _empty(response: httpx.Response) -> None:
    raise_for_response(response)


def _content(response: httpx.Response) -> bytes:
    raise_for_response(response)
    return response.content


def _capsule(response: httpx.Response) -> CapsuleInfo:
    return CapsuleInfo.from_json(_json_obj(response))


def capsule_path(capsule_id: str, rest: str = "") -> str:
    return f"/v1/capsules/{quote(capsule_id, safe='')}{rest}"


# --- capsules -------------------------------------------------------------------------------------


def create_capsule(
    template: str | None,
    vcpus: int | None,
    memory_mb: int | None,
    timeout: int | None,
    allow_public_traffic: bool | None = None,
) -> Call[CapsuleInfo]:
    body: dict[str, Any] = {}
    for key, value in (("template", template), ("vcpus", vcpus), ("memory_mb", memory_mb)):
        if value is not None:
            body[key] = value
    if timeout is not None:
        body["timeout_sec"] = timeout
    if allow_public_traffic is not None:
        body["allow_public_traffic"] = allow_public_traffic
    return Call("POST", "/v1/capsules", _capsule, json=body, timeout=_config.CREATE_TIMEOUT)


def list_capsules() -> Call[list[CapsuleInfo]]:
    return Call("GET", "/v1/capsules", lambda r: [CapsuleInfo.from_json(c) for c in _json_list(r)])


def get_capsule(capsule_id: str) -> Call[CapsuleInfo]:
    return Call("GET", capsule_path(capsule_id), _capsule)


def destroy_capsule(capsule_id: str) -> Call[None]:
    return Call("DELETE", capsule_path(capsule_id), _empty)


def pause_capsule(capsule_id: str) -> Call[CapsuleInfo]:
    return Call("POST", capsule_path(capsule_id, "/pause"), _capsule, timeout=_config.LONG_TIMEOUT)


def resume_capsule(capsule_id: str) -> Call[CapsuleInfo]:
    return Call("POST", capsule_path(capsule_id, "/resume"), _capsule, timeout=_config.LONG_TIMEOUT)


def ping_capsule(capsule_id: str) -> Call[None]:
    return Call("POST", capsule_path(capsule_id, "/ping"), _empty)


def create_snapshot(
    capsule_id: str, name: str | None, overwrite: bool, default_user: str | None = None
) -> Call[Template]:
    body: dict[str, Any] = {"sandbox_id": capsule_id}
    if name is not None:
        body["name"] = name
    if default_user is not None:
        body["default_user"] = default_user
    return Call(
        "POST",
        "/v1/snapshots",
        lambda r: Template.from_json(_json_obj(r)),
        json=body,
        params={"overwrite": "true"} if overwrite else None,
        timeout=_config.LONG_TIMEOUT,
    )


def fork_capsule(capsule_id: str, count: int) -> Call[list[CapsuleInfo]]:
    return Call(
        "POST",
        capsule_path(capsule_id, "/fork"),
        lambda r: [CapsuleInfo.from_json(c) for c in _json_list(r)],
        json={"count": count},
        timeout=_config.CREATE_TIMEOUT,
    )


def list_snapshots(type_: str | None = None) -> Call[list[Template]]:
    params = {"type": type_} if type_ else None
    return Call(
        "GET", "/v1/snapshots", lambda r: [Template.from_json(t) for t in _json_list(r)], params=params
    )


def capsule_metrics(capsule_id: str, range_: str | None = None) -> Call[dict[str, Any]]:
    """`{sandbox_id, range, points: [{timestamp_unix, cpu_pct, mem_bytes, disk_bytes}]}`."""
    params = {"range": range_} if range_ else None
    return Call("GET", capsule_path(capsule_id, "/metrics"), _json_obj, params=params)


def capsule_logs(
    capsule_id: str, cursor: int | None = None, limit: int = 1000, backward: bool = False
) -> Call[list[dict[str, Any]]]:
    """`[{timestamp, timestamp_ms, level, source, message}]`: forward from `cursor` (unix ms), or the
    newest up to it, newest first."""
    params = {"limit": str(limit), "direction": "backward" if backward else "forward"}
    if cursor is not None:
        params["cursor"] = str(cursor)
    return Call("GET", capsule_path(capsule_id, "/logs"), lambda r: _json_list(r, "logs"), params=params)


def team_get(path: str, params: dict[str, str] | None = None) -> Call[dict[str, Any]]:
    """A team-wide read (`/v1/capsules/stats`, `/v1/capsules/usage`) as JSON."""
    return Call("GET", path, _json_obj, params=params)


def delete_snapshot(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/snapshots/{quote(name, safe='')}", _empty)


def connect_op(capsule_id: str) -> Op[CapsuleInfo]:
    """Fetch a capsule and resume it if it is paused (or hibernated)."""
    info = yield from get_capsule(capsule_id)
    if info.status in (Status.paused, Status.hibernated):
        info = yield from resume_capsule(capsule_id)
    return info


def wait_ready_op(
    capsule_id: str, timeout: float, interval: float, clock: Callable[[], float]
) -> Op[CapsuleInfo]:
    """Poll until the capsule runs; resume it if it is paused; fail if it stops or errs."""
    deadline = clock() + timeout
    while True:
        info = yield from get_capsule(capsule_id)
        if info.status == Status.running:
            return info
        if info.status in (Status.error, Status.stopped, Status.missing):
            raise RuntimeError(f"capsule {capsule_id} is {info.status}, not starting")
        if clock() >= deadline:
            raise TimeoutError(f"capsule {capsule_id} did not become ready within {timeout}s")
        if info.status in (Status.paused, Status.hibernated):
            yield from resume_capsule(capsule_id)
        else:
            yield from Sleep(interval)


# --- commands -------------------------------------------------------------------------------------


def exec_body(
    cmd: str,
    *,
    background: bool,
    timeout: int | None,
    envs: dict[str, str] | None,
    cwd: str | None,
    tag: str | None,
) -> dict[str, Any]:
    """`POST /exec` body for a shell command line (the API execs without a shell)."""
    body: dict[str, Any] = {"cmd": "/bin/sh", "args": ["-c", cmd], "background": background}
    if timeout is not None and not background:
        body["timeout_sec"] = timeout
    if envs:
        body["envs"] = dict(envs)
    if cwd is not None:
        body["cwd"] = cwd
    if tag is not None:
        body["tag"] = tag
    return body


def run_command(
    capsule_id: str,
    cmd: str,
    *,
    timeout: int | None,
    envs: dict[str, str] | None,
    cwd: str | None,
) -> Call[CommandResult]:
    body = exec_body(cmd, background=False, timeout=timeout, envs=envs, cwd=cwd, tag=None)
    http_timeout = (timeout if timeout is not None else _config.SERVER_RUN_TIMEOUT) + _config.RUN_GRACE
    return Call(
        "POST",
        capsule_path(capsule_id, "/exec"),
        lambda r: CommandResult.from_json(_json_obj(r)),
        json=body,
        timeout=http_timeout,
    )


def start_command(
    capsule_id: str, cmd: str, *, envs: dict[str, str] | None, cwd: str | None, tag: str | None
) -> Call[CommandHandle]:
    def parse(response: httpx.Response) -> CommandHandle:
        data = _json_obj(response)
        return CommandHandle(
            pid=int(data.get("pid") or 0), tag=str(data.get("tag") or ""), capsule_id=capsule_id
        )

    body = exec_body(cmd, background=True, timeout=None, envs=envs, cwd=cwd, tag=tag)
    return Call("POST", capsule_path(capsule_id, "/exec"), parse, json=body)


def list_processes(capsule_id: str) -> Call[list[ProcessInfo]]:
    return Call(
        "GET",
        capsule_path(capsule_id, "/processes"),
        lambda r: [ProcessInfo.from_json(p) for p in _json_list(r, "processes")],
    )


def kill_process(capsule_id: str, selector: int | str, signal: str = "SIGKILL") -> Call[None]:
    path = capsule_path(capsule_id, f"/processes/{quote(str(selector), safe='')}")
    params = None if signal == "SIGKILL" else {"signal": signal}
    return Call("DELETE", path, _empty, params=params)


def stream_start_message(cmd: str, args: list[str] | None) -> dict[str, Any]:
    """First client message of `exec/stream`: with no `args`, `cmd` is a shell command line."""
    if args:
        return {"type": "start", "cmd": cmd, "args": list(args)}
    return {"type": "start", "cmd": "/bin/sh", "args": ["-c", cmd]}


# --- files ----------------------------------------------------------------------------------------


def read_file(capsule_id: str, path: str) -> Call[bytes]:
    return Call("POST", capsule_path(capsule_id, "/files/read"), _content, json={"path": path})


def write_file(capsule_id: str, path: str, data: str | bytes) -> Call[None]:
    content = data.encode() if isinstance(data, str) else bytes(data)
    return Call(
        "POST",
        capsule_path(capsule_id, "/files/write"),
        _empty,
        data={"path": path},  # httpx sends form fields before files: `path` precedes `file`
        files={"file": (posixpath.basename(path) or "upload", content)},
        timeout=_config.LONG_TIMEOUT,
    )


def list_dir(capsule_id: str, path: str, depth: int = 1) -> Call[list[FileEntry]]:
    return Call(
        "POST",
        capsule_path(capsule_id, "/files/list"),
        lambda r: [FileEntry.from_json(e) for e in _json_list(r, "entries")],
        json={"path": path, "depth": depth},
    )


def make_dir(capsule_id: str, path: str) -> Call[FileEntry]:
    return Call(
        "POST",
        capsule_path(capsule_id, "/files/mkdir"),
        lambda r: FileEntry.from_json(_json_obj(r).get("entry") or {}),
        json={"path": path},
    )


def remove_path(capsule_id: str, path: str) -> Call[None]:
    return Call("POST", capsule_path(capsule_id, "/files/remove"), _empty, json={"path": path})


def _split(path: str) -> tuple[str, str]:
    norm = posixpath.normpath(path)
    return posixpath.dirname(norm) or ".", posixpath.basename(norm)


def find_entry_op(capsule_id: str, path: str) -> Op[FileEntry | None]:
    """The entry of `path`, found by listing its parent (the API has no stat)."""
    parent, name = _split(path)
    if not name or name == "/":
        return None
    try:
        entries = yield from list_dir(capsule_id, parent, 1)
    except WrennNotFoundError:
        return None
    return next((e for e in entries if e.name == name), None)


def exists_op(capsule_id: str, path: str) -> Op[bool]:
    if posixpath.normpath(path) == "/":
        return True
    entry = yield from find_entry_op(capsule_id, path)
    return entry is not None


def make_dir_op(capsule_id: str, path: str) -> Op[FileEntry]:
    """Create a directory and its parents; an existing directory is not an error."""
    try:
        return (yield from make_dir(capsule_id, path))
    except WrennConflictError:
        existing = yield from find_entry_op(capsule_id, path)
        if existing is None or not existing.is_dir:
            raise
        return existing


def stream_read(capsule_id: str, path: str) -> Call[None]:
    """`files/stream/read`: the transports send it with `client.stream` and yield the body's chunks."""
    return Call("POST", capsule_path(capsule_id, "/files/stream/read"), _empty, json={"path": path})


@dataclass
class MultipartUpload:
    """The frame of a streamed multipart upload (`files/stream/write`): `path` first, then `file`,
    whose bytes the caller streams between `head` and `tail`."""

    path: str
    boundary: str = field(default_factory=lambda: os.urandom(16).hex())

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def head(self) -> bytes:
        b = self.boundary.encode()
        name = posixpath.basename(self.path).replace('"', "") or "upload"
        return b"".join(
            [
                b"--" + b + b'\r\nContent-Disposition: form-data; name="path"\r\n\r\n',
                self.path.encode() + b"\r\n",
                b"--"
                + b
                + b'\r\nContent-Disposition: form-data; name="file"; filename="'
                + name.encode()
                + b'"\r\n',
                b"Content-Type: application/octet-stream\r\n\r\n",
            ]
        )

    @property
    def tail(self) -> bytes:
        return b"\r\n--" + self.boundary.encode() + b"--\r\n"


def stream_write(capsule_id: str, upload: MultipartUpload, content: Any) -> Call[None]:
    """`files/stream/write` with `content` the frame's head, the file's chunks and its tail (a sync or
    an async iterable, for the client that sends it). No read or write timeout: a big file takes long."""
    return Call(
        "POST",
        capsule_path(capsule_id, "/files/stream/write"),
        _empty,
        content=content,
        headers={"Content-Type": upload.content_type},
        timeout=httpx.Timeout(None, connect=10.0),
    )


def watch_path(capsule_id: str, path: str, recursive: bool) -> str:
    query = urlencode({"path": path, "recursive": "true" if recursive else "false"})
    return capsule_path(capsule_id, f"/files/watch?{query}")


# --- WebSocket messages ---------------------------------------------------------------------------


def ws_error(message: dict[str, Any], default_code: str = "agent_error") -> WrennError:
    """The exception for an in-band `{"type": "error", "data"|"message", "code"?}` message."""
    text = str(message.get("data") or message.get("message") or "error")
    code = str(message.get("code") or default_code)
    return error_from_body(0, {"error": {"code": code, "message": text}})


def pty_start_message(
    cmd: str,
    args: list[str] | None,
    cols: int,
    rows: int,
    envs: dict[str, str] | None,
    cwd: str | None,
) -> dict[str, Any]:
    if cols <= 0 or rows <= 0:
        raise ValueError("cols and rows must be greater than 0")
    # output as base64 in JSON messages (the server's default is binary frames, the seed SDK's way)
    message: dict[str, Any] = {"type": "start", "cmd": cmd, "cols": cols, "rows": rows, "encoding": "base64"}
    if args:
        message["args"] = list(args)
    if envs:
        message["envs"] = dict(envs)
    if cwd:
        message["cwd"] = cwd
    return message


def pty_input_message(data: bytes | str) -> dict[str, Any]:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    return {"type": "input", "data": base64.b64encode(raw).decode("ascii")}


def pty_resize_message(cols: int, rows: int) -> dict[str, Any]:
    if cols <= 0 or rows <= 0:
        raise ValueError("cols and rows must be greater than 0")
    return {"type": "resize", "cols": cols, "rows": rows}


def decode_ws_text(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {"type": "unknown", "data": value}


def is_final_stream_event(kind: str) -> bool:
    """`exit` and `error` end an `exec/stream` or `processes/{selector}/stream` session."""
    return kind in ("exit", "error")


def watch_message(raw: dict[str, Any]) -> FilesystemEvent | None:
    """One server message of `files/watch`: an event, None for `start`/`ping`/unknown types; an
    `error` message raises."""
    kind = raw.get("type")
    if kind == "event":
        return FilesystemEvent.from_json(raw)
    if kind == "error":
        raise ws_error(raw)
    return None


#: How long `files.watch` waits for the server's `start` (the watch is in place).
WATCH_START_TIMEOUT = 30.0
