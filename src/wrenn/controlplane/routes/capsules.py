"""Capsules: create, list, get, destroy, exec, files, processes, metrics; each through its host agent."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from protobuf import Oneof
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._agents import AgentPool
from .._deps import Caller, Db, Principal, audit_fields
from .._ids import new_id
from .._scheduler import pick_host
from ..db import Capsule, Host, Template, utcnow

router = APIRouter(tags=["capsules"])
ACTIVE = ("pending", "starting", "running", "paused", "hibernating", "hibernated")
_FILE_TYPES = {pb.FileType.FILE: "file", pb.FileType.DIRECTORY: "directory", pb.FileType.SYMLINK: "symlink"}
_RANGES = {
    "5m": pb.MetricsRange.LAST_5M,
    "10m": pb.MetricsRange.LAST_10M,
    "1h": pb.MetricsRange.LAST_1H,
    "2h": pb.MetricsRange.LAST_2H,
    "6h": pb.MetricsRange.LAST_6H,
    "12h": pb.MetricsRange.LAST_12H,
    "24h": pb.MetricsRange.LAST_24H,
}


class CapsuleCreate(BaseModel):
    template: str = Field(default="minimal", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
    vcpus: int = Field(default=1, ge=1, le=16)
    memory_mb: int = Field(default=512, ge=128, le=65536)
    timeout_sec: int = Field(default=0, ge=0, le=30 * 24 * 3600)
    disk_size_mb: int = Field(default=5120, ge=1024, le=512 * 1024)
    #: False: the traffic proxy requires the capsule's `traffic_access_token` on every request.
    allow_public_traffic: bool = True


class CapsuleOut(BaseModel):
    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    guest_ip: str
    host_ip: str
    created_at: datetime
    started_at: datetime | None
    last_active_at: datetime | None
    last_updated: datetime
    metadata: dict[str, Any]
    traffic_access_token: str | None = None


class ExecBody(BaseModel):
    cmd: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    timeout_sec: int = Field(default=30, ge=1, le=24 * 3600)
    background: bool = False
    tag: str | None = Field(default=None, max_length=64)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class PathBody(BaseModel):
    path: str = Field(min_length=1)
    depth: int = Field(default=1, ge=1, le=32)


def _out(c: Capsule) -> CapsuleOut:
    return CapsuleOut(
        id=c.id,
        status=c.status,
        template=c.template,
        vcpus=c.vcpus,
        memory_mb=c.memory_mb,
        timeout_sec=c.timeout_sec,
        guest_ip="169.254.0.21" if c.host_ip else "",
        host_ip=c.host_ip,
        created_at=c.created_at,
        started_at=c.started_at,
        last_active_at=c.last_active_at,
        last_updated=c.last_updated,
        metadata=c.metadata_,
        traffic_access_token=c.traffic_access_token,
    )


def _agents(request: Request) -> AgentPool:
    pool: AgentPool = request.app.state.agents
    return pool


async def _capsule(session: AsyncSession, caller: Principal, capsule_id: str) -> Capsule:
    capsule = await session.get(Capsule, capsule_id)
    if capsule is None or capsule.team_id != caller.team_id:
        raise _errors.not_found(f"capsule {capsule_id}")
    return capsule


async def _running(session: AsyncSession, caller: Principal, capsule_id: str) -> tuple[Capsule, Host]:
    capsule = await _capsule(session, caller, capsule_id)
    if capsule.status == "missing":  # its host went silent: the VM may come back with it
        raise _errors.ApiError(503, "host_unavailable", f"the host of capsule {capsule_id} is unreachable")
    if capsule.status != "running":
        raise _errors.invalid_state(f"capsule {capsule_id} is {capsule.status}")
    host = await session.get(Host, capsule.host_id) if capsule.host_id else None
    if host is None or host.status != "online":
        raise _errors.ApiError(503, "host_unavailable", f"the host of capsule {capsule_id} is unavailable")
    capsule.last_active_at = utcnow()
    await session.commit()
    return capsule, host


async def _template(session: AsyncSession, team_id: str, name: str) -> Template | None:
    found = await session.execute(select(Template).where(Template.team_id == team_id, Template.name == name))
    return found.scalar_one_or_none()


async def _placement(
    session: AsyncSession, body: CapsuleCreate, team_id: str
) -> tuple[Host, Template | None]:
    """Where a capsule goes: a template's capsules go to the host holding its files (and take its
    shape); others to the least loaded host with room."""
    template = await _template(session, team_id, body.template)
    if template is None:
        return await pick_host(session, body.memory_mb, team_id), None
    host = await session.get(Host, template.host_id) if template.host_id else None
    if host is None or host.status != "online":
        raise _errors.ApiError(
            503, "host_unavailable", f"the host holding template {template.name!r} is unavailable"
        )
    body.vcpus, body.memory_mb, body.disk_size_mb = template.vcpus, template.memory_mb, template.disk_size_mb
    return host, template


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What the E2B-compatible API adds to a create: the guest's environment, the caller's labels, a
    lifetime deadline and what happens at it, and the create's idempotency key."""

    envs: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    end_at: datetime | None = None
    on_timeout: str = "kill"
    idempotency_key: str | None = None
    request_hash: str = ""


async def launch(
    session: AsyncSession,
    agents: AgentPool,
    caller: Principal,
    body: CapsuleCreate,
    count: int = 1,
    template_name: str | None = None,
    lifecycle: Lifecycle | None = None,
) -> list[Capsule]:
    """Create `count` capsules of `body` and boot them at once; each row ends `running` or `error`
    (committed), and the first failure is raised once all have ended. Shared by create and fork."""
    life = lifecycle or Lifecycle()
    host, template = await _placement(session, body, caller.team_id)
    capsules = [
        Capsule(
            id=new_id("cl"),
            team_id=caller.team_id,
            host_id=host.id,
            template=template_name or body.template,
            vcpus=body.vcpus,
            memory_mb=body.memory_mb,
            timeout_sec=body.timeout_sec,
            disk_size_mb=body.disk_size_mb,
            envd_token=secrets.token_urlsafe(32),
            traffic_access_token=None if body.allow_public_traffic else secrets.token_hex(32),
            status="pending",
            labels=dict(life.labels),
            end_at=life.end_at,
            on_timeout=life.on_timeout,
            idempotency_key=life.idempotency_key,
            request_hash=life.request_hash,
        )
        for _ in range(count)
    ]
    session.add_all(capsules)
    await session.commit()
    client = agents.client(host.address)

    def boot(capsule: Capsule) -> Any:
        request_pb = pb.CreateSandboxRequest(
            sandbox_id=capsule.id,
            template=template.id if template else body.template,
            vcpus=body.vcpus,
            memory_mb=body.memory_mb,
            disk_size_mb=body.disk_size_mb,
            timeout_sec=body.timeout_sec,
            team_id=caller.team_id,
            envd_access_token=capsule.envd_token,
            allow_internet=True,
            default_env=life.envs,
        )
        return agents.call(host.id, client.create_sandbox(request_pb, timeout_ms=600_000))

    # The boots go on even if the client goes away, so every row ends running or error.
    boots = asyncio.ensure_future(asyncio.gather(*(boot(c) for c in capsules), return_exceptions=True))
    results = await asyncio.shield(boots)
    failure: BaseException | None = None
    for capsule, created in zip(capsules, results, strict=True):
        if isinstance(created, BaseException):
            capsule.status = "error"
            capsule.error = (created.message if isinstance(created, _errors.ApiError) else str(created))[
                :4000
            ]
            failure = failure or created
            continue
        capsule.status, capsule.started_at, capsule.last_active_at = "running", utcnow(), utcnow()
        capsule.host_ip = created.sandbox.host_ip if created.sandbox else ""
        capsule.metadata_ = {
            "kernel_version": created.sandbox.kernel_version if created.sandbox else "",
            "envd_version": created.sandbox.envd_version if created.sandbox else "",
            # A string, as every metadata value: the seed SDK's model is dict[str, str].
            "from_snapshot": "true" if created.sandbox and created.sandbox.from_snapshot else "false",
        }
        _audit.record(
            session, **audit_fields(caller), resource_type="capsule", resource_id=capsule.id, action="create"
        )
    await session.commit()
    if failure is not None:
        raise failure
    return capsules


@router.post("/v1/capsules", status_code=201, response_model=CapsuleOut)
async def create_capsule(body: CapsuleCreate, request: Request, caller: Caller, session: Db) -> CapsuleOut:
    """Boot a capsule from a base image or a template of the team (a template's capsules start in its
    state, with its vcpus and memory)."""
    (capsule,) = await launch(session, _agents(request), caller, body)
    return _out(capsule)


@router.get("/v1/capsules", response_model=list[CapsuleOut])
async def list_capsules(caller: Caller, session: Db) -> list[CapsuleOut]:
    rows = await session.execute(
        select(Capsule)
        .where(Capsule.team_id == caller.team_id, Capsule.status.in_(ACTIVE))
        .order_by(Capsule.created_at)
    )
    return [_out(c) for c in rows.scalars()]


@router.get("/v1/capsules/{capsule_id}", response_model=CapsuleOut)
async def get_capsule(capsule_id: str, caller: Caller, session: Db) -> CapsuleOut:
    return _out(await _capsule(session, caller, capsule_id))


async def destroy(session: AsyncSession, agents: AgentPool, capsule: Capsule) -> None:
    """Destroy a capsule's VM on its host and mark the row `stopped` (not committed). A VM the host no
    longer knows counts as destroyed; any other agent error is raised and the row is left as it was.
    Shared by `DELETE /v1/capsules/{id}` and team deletion."""
    host = await session.get(Host, capsule.host_id) if capsule.host_id else None
    if capsule.status == "hibernated" and (host is None or host.status != "online"):
        # its archive is in the shared cold storage: any online host can delete it
        host = (await session.execute(select(Host).where(Host.status == "online").limit(1))).scalar()
    if capsule.status != "stopped" and host is not None:
        try:
            await agents.call(
                host.id,
                agents.client(host.address).destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=capsule.id)),
            )
        except _errors.ApiError as exc:
            if exc.code != "not_found":  # already gone on the host: destroyed is destroyed
                raise
    capsule.status = "stopped"


@router.delete("/v1/capsules/{capsule_id}", status_code=204)
async def destroy_capsule(capsule_id: str, request: Request, caller: Caller, session: Db) -> Response:
    capsule = await _capsule(session, caller, capsule_id)
    await destroy(session, _agents(request), capsule)
    _audit.record(
        session, **audit_fields(caller), resource_type="capsule", resource_id=capsule.id, action="destroy"
    )
    await session.commit()
    return Response(status_code=204)


async def pause(session: AsyncSession, agents: AgentPool, caller: Principal, capsule: Capsule) -> Host:
    """Pause a running capsule on its host and mark it `paused` (committed); its host. Shared by
    `POST /v1/capsules/{id}/pause`, snapshots and fork."""
    capsule, host = await _running(session, caller, capsule.id)
    await agents.call(
        host.id,
        agents.client(host.address).pause_sandbox(
            pb.PauseSandboxRequest(sandbox_id=capsule.id), timeout_ms=300_000
        ),
    )
    capsule.status, capsule.host_ip, capsule.paused_at = "paused", "", utcnow()
    _audit.record(
        session, **audit_fields(caller), resource_type="capsule", resource_id=capsule.id, action="pause"
    )
    await session.commit()
    return host


@router.post("/v1/capsules/{capsule_id}/pause", response_model=CapsuleOut)
async def pause_capsule(capsule_id: str, request: Request, caller: Caller, session: Db) -> CapsuleOut:
    """Snapshot the capsule (memory, processes, disk) and free its CPU, RAM and network slot."""
    capsule = await _capsule(session, caller, capsule_id)
    if capsule.status != "paused":
        await pause(session, _agents(request), caller, capsule)
    return _out(capsule)


async def resume(session: AsyncSession, agents: AgentPool, capsule: Capsule) -> None:
    """Bring a paused capsule back on its host and mark it `running` (committed). Shared by
    `POST /v1/capsules/{id}/resume` and the traffic proxy (traffic to a paused capsule resumes it). A
    snapshot its host cannot restore turns the capsule to `error`."""
    if capsule.status == "running":
        return
    if capsule.status == "hibernated":
        await _thaw(session, agents, capsule)
        return
    if capsule.status != "paused":
        raise _errors.invalid_state(f"capsule {capsule.id} is {capsule.status}: only a paused one resumes")
    host = await session.get(Host, capsule.host_id) if capsule.host_id else None
    if host is None or host.status != "online":
        raise _errors.ApiError(503, "host_unavailable", f"the host of capsule {capsule.id} is unavailable")
    request = pb.ResumeSandboxRequest(sandbox_id=capsule.id)
    await _wake(
        session,
        agents,
        capsule,
        host,
        agents.client(host.address).resume_sandbox(request, timeout_ms=300_000),
    )


async def _thaw(session: AsyncSession, agents: AgentPool, capsule: Capsule) -> None:
    """A hibernated capsule wakes on whichever host has room (hosts share the cold storage)."""
    host = await pick_host(session, capsule.memory_mb, capsule.team_id)
    capsule.status, capsule.host_id = "starting", host.id  # counted on that host from now on
    await session.commit()
    request = pb.ThawSandboxRequest(sandbox_id=capsule.id)
    await _wake(
        session, agents, capsule, host, agents.client(host.address).thaw_sandbox(request, timeout_ms=900_000),
        on_failure="hibernated",
    )  # fmt: skip


async def _wake(
    session: AsyncSession,
    agents: AgentPool,
    capsule: Capsule,
    host: Host,
    rpc: Awaitable[Any],
    on_failure: str = "paused",
) -> None:
    """Await the agent's resume or thaw and mark the capsule `running` on `host` (committed). A snapshot
    the host cannot restore turns it to `error`; any other failure leaves it `on_failure`."""
    try:
        woken = await agents.call(host.id, rpc)
    except _errors.ApiError as exc:
        if exc.code == "snapshot_unusable":
            capsule.status, capsule.error = "error", exc.message[:4000]
        else:
            capsule.status = on_failure
        await session.commit()
        raise
    capsule.status, capsule.last_active_at, capsule.paused_at = "running", utcnow(), None
    capsule.host_ip = woken.sandbox.host_ip if woken.sandbox else ""
    await session.commit()


@router.post("/v1/capsules/{capsule_id}/resume", response_model=CapsuleOut)
async def resume_capsule(capsule_id: str, request: Request, caller: Caller, session: Db) -> CapsuleOut:
    """Restore a paused capsule as it was paused: memory, running processes and files."""
    capsule = await _capsule(session, caller, capsule_id)
    if capsule.status != "running":
        await resume(session, _agents(request), capsule)
        _audit.record(
            session, **audit_fields(caller), resource_type="capsule", resource_id=capsule.id, action="resume"
        )
        await session.commit()
    return _out(capsule)


@router.post("/v1/capsules/{capsule_id}/ping", status_code=204)
async def ping(capsule_id: str, request: Request, caller: Caller, session: Db) -> Response:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    await agents.call(
        host.id, agents.client(host.address).ping_sandbox(pb.PingSandboxRequest(sandbox_id=capsule.id))
    )
    return Response(status_code=204)


def _text(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode(), True


@router.post("/v1/capsules/{capsule_id}/exec")
async def exec_command(capsule_id: str, body: ExecBody, request: Request, caller: Caller, session: Db) -> Any:
    """Foreground: the command's output and exit code (`envs` and `cwd` honoured). Background: 202."""
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    client = agents.client(host.address)
    if body.background:
        started = await agents.call(
            host.id,
            client.start_background(
                pb.StartBackgroundRequest(
                    sandbox_id=capsule.id,
                    cmd=body.cmd,
                    args=body.args,
                    envs=body.envs,
                    cwd=body.cwd or "",
                    tag=body.tag or "",
                )
            ),
        )
        return Response(
            status_code=202,
            media_type="application/json",
            content=_json(
                {"sandbox_id": capsule.id, "cmd": body.cmd, "pid": started.pid, "tag": started.tag}
            ),
        )
    began = time.monotonic()
    result = await agents.call(
        host.id,
        client.exec(
            pb.ExecRequest(
                sandbox_id=capsule.id,
                cmd=body.cmd,
                args=body.args,
                envs=body.envs,
                cwd=body.cwd or "",
                timeout_sec=body.timeout_sec,
            ),
            timeout_ms=(body.timeout_sec + 30) * 1000,
        ),
    )
    stdout, b1 = _text(result.stdout)
    stderr, b2 = _text(result.stderr)
    if b1 != b2:  # one encoding for both
        stdout, stderr = base64.b64encode(result.stdout).decode(), base64.b64encode(result.stderr).decode()
    return {
        "sandbox_id": capsule.id,
        "cmd": body.cmd,
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": result.exit_code,
        "duration_ms": result.duration_ms or int((time.monotonic() - began) * 1000),
        "encoding": "base64" if (b1 or b2) else "utf-8",
        "timed_out": result.timed_out,
    }


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


def _entry(e: pb.FileEntry | None) -> dict[str, Any]:
    if e is None:
        return {}
    entry: dict[str, Any] = {
        "name": e.name,
        "path": e.path,
        "type": _FILE_TYPES.get(e.type, "file"),
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


@router.post("/v1/capsules/{capsule_id}/files/write", status_code=204)
async def write_file(capsule_id: str, request: Request, caller: Caller, session: Db) -> Response:
    capsule, host = await _running(session, caller, capsule_id)
    limit = request.app.state.settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
        raise _errors.ApiError(
            413, "too_large", f"uploads are limited to {limit >> 20} MB; use files/stream/write"
        )
    form = await request.form(max_part_size=limit)
    path, upload = form.get("path"), form.get("file")
    if not isinstance(path, str) or not path or not isinstance(upload, UploadFile):
        raise _errors.bad_request("multipart fields 'path' and 'file' are required")
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise _errors.ApiError(
            413, "too_large", f"uploads are limited to {limit >> 20} MB; use files/stream/write"
        )
    agents = _agents(request)
    await agents.call(
        host.id,
        agents.client(host.address).write_file(
            pb.WriteFileRequest(sandbox_id=capsule.id, path=path, content=content)
        ),
    )
    return Response(status_code=204)


@router.post("/v1/capsules/{capsule_id}/files/stream/write", status_code=204)
async def stream_write(capsule_id: str, request: Request, caller: Caller, session: Db) -> Response:
    """Multipart `path` then `file`, passed on to the agent in chunks as it arrives: no size limit, and
    nothing held in memory. The `path` part must come before `file` (as in the seed)."""
    capsule, host = await _running(session, caller, capsule_id)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise _errors.bad_request("send multipart/form-data with a 'path' part, then a 'file' part")
    parts = _StreamedParts(options[b"boundary"])
    feeder = asyncio.ensure_future(parts.feed(request.stream()))

    async def messages() -> AsyncIterator[pb.WriteFileStreamRequest]:
        path = await parts.path()
        meta = pb.WriteFileMeta(sandbox_id=capsule.id, path=path)
        yield pb.WriteFileStreamRequest(content=Oneof("meta", meta))  # type: ignore[arg-type]
        while (chunk := await parts.chunks.get()) is not None:
            yield pb.WriteFileStreamRequest(content=Oneof("chunk", chunk))  # type: ignore[arg-type]

    agents = _agents(request)
    try:
        await agents.call(host.id, agents.client(host.address).write_file_stream(messages()))
        await feeder
    finally:
        feeder.cancel()
    return Response(status_code=204)


class _StreamedParts:
    """python-multipart's push parser, turned into `path()` and a queue of file chunks."""

    def __init__(self, boundary: bytes) -> None:
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
        self._path: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._field, self._value, self._name, self._buffer = b"", b"", b"", bytearray()
        self._pending: list[bytes] = []
        self._parser = MultipartParser(boundary, {  # type: ignore[arg-type]
            "on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_part_data": self._data, "on_part_end": self._end,
        })  # fmt: skip

    def _begin(self) -> None:
        self._name, self._buffer = b"", bytearray()

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _hend(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._name = parse_options_header(self._value)[1].get(b"name", b"")
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == b"file":
            self._fail("the 'path' part must come before 'file'")
            self._pending.append(bytes(data[start:end]))
        elif self._name == b"path":
            self._buffer.extend(data[start:end])

    def _end(self) -> None:
        if self._name == b"path" and not self._path.done():
            self._path.set_result(self._buffer.decode())

    async def path(self) -> str:
        return await self._path

    async def feed(self, body: AsyncIterator[bytes]) -> None:
        try:
            async for data in body:
                self._parser.write(data)
                for piece in self._pending:
                    await self.chunks.put(piece)
                self._pending.clear()
            self._parser.finalize()
        except ValueError as exc:  # python-multipart's parse errors
            self._fail(f"malformed multipart body: {exc}")
            raise _errors.bad_request(f"malformed multipart body: {exc}") from None
        finally:
            self._fail("the multipart body has no 'path' part")
            await self.chunks.put(None)

    def _fail(self, message: str) -> None:
        if not self._path.done():
            self._path.set_exception(_errors.bad_request(message))


@router.post("/v1/capsules/{capsule_id}/files/read")
async def read_file(
    capsule_id: str, body: PathBody, request: Request, caller: Caller, session: Db
) -> Response:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    read = await agents.call(
        host.id,
        agents.client(host.address).read_file(pb.ReadFileRequest(sandbox_id=capsule.id, path=body.path)),
    )
    return Response(content=read.content, media_type="application/octet-stream")


@router.post("/v1/capsules/{capsule_id}/files/stream/read")
async def stream_read(
    capsule_id: str, body: PathBody, request: Request, caller: Caller, session: Db
) -> StreamingResponse:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    stream = aiter(
        agents.client(host.address).read_file_stream(
            pb.ReadFileStreamRequest(sandbox_id=capsule.id, path=body.path)
        )
    )
    first = await agents.call(host.id, anext(stream, None))  # errors (missing file) before the 200

    async def chunks() -> AsyncIterator[bytes]:
        if first is not None:
            yield first.chunk
        async for piece in stream:
            yield piece.chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@router.post("/v1/capsules/{capsule_id}/files/list")
async def list_files(
    capsule_id: str, body: PathBody, request: Request, caller: Caller, session: Db
) -> dict[str, Any]:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    listed = await agents.call(
        host.id,
        agents.client(host.address).list_dir(
            pb.ListDirRequest(sandbox_id=capsule.id, path=body.path, depth=body.depth)
        ),
    )
    return {"entries": [_entry(e) for e in listed.entries]}


@router.post("/v1/capsules/{capsule_id}/files/mkdir")
async def make_dir(
    capsule_id: str, body: PathBody, request: Request, caller: Caller, session: Db
) -> dict[str, Any]:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    made = await agents.call(
        host.id,
        agents.client(host.address).make_dir(pb.MakeDirRequest(sandbox_id=capsule.id, path=body.path)),
    )
    return {"entry": _entry(made.entry)}


@router.post("/v1/capsules/{capsule_id}/files/remove", status_code=204)
async def remove(capsule_id: str, body: PathBody, request: Request, caller: Caller, session: Db) -> Response:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    await agents.call(
        host.id,
        agents.client(host.address).remove_path(pb.RemovePathRequest(sandbox_id=capsule.id, path=body.path)),
    )
    return Response(status_code=204)


@router.get("/v1/capsules/{capsule_id}/processes")
async def list_processes(capsule_id: str, request: Request, caller: Caller, session: Db) -> dict[str, Any]:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    listed = await agents.call(
        host.id, agents.client(host.address).list_processes(pb.ListProcessesRequest(sandbox_id=capsule.id))
    )
    return {
        "processes": [
            {"pid": p.pid, "tag": p.tag, "cmd": p.cmd, "args": list(p.args)} for p in listed.processes
        ]
    }


@router.delete("/v1/capsules/{capsule_id}/processes/{selector}", status_code=204)
async def kill_process(
    capsule_id: str,
    selector: str,
    request: Request,
    caller: Caller,
    session: Db,
    signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL",
) -> Response:
    capsule, host = await _running(session, caller, capsule_id)
    # ASCII digits only: "²".isdigit() is true but int() refuses it (was a 500).
    is_pid = selector.isascii() and selector.isdigit()
    if is_pid and int(selector) > 0xFFFFFFFF:  # was a 503 "host unreachable: out of range for uint32"
        raise _errors.bad_request(f"selector: pid {selector} is out of range")
    which = Oneof("pid", int(selector)) if is_pid else Oneof("tag", selector)
    kill = pb.KillProcessRequest(
        sandbox_id=capsule.id,
        selector=which,  # type: ignore[arg-type]
        signal=pb.Signal.SIGTERM if signal == "SIGTERM" else pb.Signal.SIGKILL,
    )
    agents = _agents(request)
    await agents.call(host.id, agents.client(host.address).kill_process(kill))
    return Response(status_code=204)


@router.get("/v1/capsules/{capsule_id}/metrics")
async def metrics(
    capsule_id: str,
    request: Request,
    caller: Caller,
    session: Db,
    range: Literal["5m", "10m", "1h", "2h", "6h", "12h", "24h"] = Query("10m"),
) -> dict[str, Any]:
    capsule, host = await _running(session, caller, capsule_id)
    agents = _agents(request)
    got = await agents.call(
        host.id,
        agents.client(host.address).get_sandbox_metrics(
            pb.GetSandboxMetricsRequest(sandbox_id=capsule.id, range=_RANGES[range])
        ),
    )
    points = [
        {
            "timestamp_unix": p.timestamp.seconds if p.timestamp else 0,
            "cpu_pct": p.cpu_pct,
            "mem_bytes": p.mem_bytes,
            "disk_bytes": p.disk_bytes,
        }
        for p in got.points
    ]
    return {"sandbox_id": capsule.id, "range": range, "points": points}
