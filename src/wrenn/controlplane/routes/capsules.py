"""Capsules under `/v1`: create, list, get, destroy, pause, resume, exec, files, processes, metrics. The
lifecycle is the capsule service's; work inside a running capsule goes through `service.Guest`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import UploadFile

from .. import _errors
from .._capsule_view import CapsuleOut, capsule_out
from .._deps import Caller, Capsules, Templates
from ..service import DEFAULTS, TEMPLATE_NAME, CreateSpec, Guest, NetworkBody, logs, usage
from ..service.guest import history
from ..service.network import from_v1

router = APIRouter(tags=["capsules"])


class CapsuleCreate(BaseModel):
    template: str = Field(default=DEFAULTS.template, pattern=TEMPLATE_NAME)
    vcpus: int = Field(default=DEFAULTS.vcpus, ge=1, le=16)
    #: Left out: the base image's own (512 MiB; code-interpreter: 1024), or the team template's.
    memory_mb: int | None = Field(default=None, ge=128, le=65536)
    timeout_sec: int = Field(default=DEFAULTS.timeout_sec, ge=0, le=30 * 24 * 3600)
    disk_size_mb: int = Field(default=DEFAULTS.disk_size_mb, ge=1024, le=512 * 1024)
    #: False: the traffic proxy requires the capsule's `traffic_access_token` on every request.
    allow_public_traffic: bool = DEFAULTS.allow_public_traffic
    #: The egress policy (docs/network.md); left out: the template's, else open.
    network: NetworkBody | None = None


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


@router.post("/v1/capsules", status_code=201, response_model=CapsuleOut)
async def create_capsule(body: CapsuleCreate, caller: Caller, capsules: Capsules) -> CapsuleOut:
    """Boot a capsule from a base image or a template of the team (a template's capsules start in its
    state, with its vcpus and memory)."""
    network = from_v1(body.network) if body.network else None
    spec = CreateSpec(
        **body.model_dump(exclude={"network", "memory_mb"}), memory_mb=body.memory_mb or 0, network=network
    )
    (capsule,) = await capsules.create(caller, spec)
    return capsule_out(capsule)


@router.get("/v1/capsules", response_model=list[CapsuleOut])
async def list_capsules(caller: Caller, capsules: Capsules) -> list[CapsuleOut]:
    return [capsule_out(c) for c in await capsules.visible(caller.team_id)]


@router.get("/v1/capsules/{capsule_id}", response_model=CapsuleOut)
async def get_capsule(capsule_id: str, caller: Caller, capsules: Capsules) -> CapsuleOut:
    return capsule_out(await capsules.get(caller.team_id, capsule_id))


@router.delete("/v1/capsules/{capsule_id}", status_code=204)
async def destroy_capsule(capsule_id: str, caller: Caller, capsules: Capsules) -> Response:
    await capsules.destroy(await capsules.get(caller.team_id, capsule_id), caller)
    return Response(status_code=204)


@router.post("/v1/capsules/{capsule_id}/pause", response_model=CapsuleOut)
async def pause_capsule(capsule_id: str, caller: Caller, capsules: Capsules) -> CapsuleOut:
    """Snapshot the capsule (memory, processes, disk) and free its CPU, RAM and network slot."""
    capsule = await capsules.get(caller.team_id, capsule_id)
    await capsules.pause(capsule, caller)
    return capsule_out(capsule)


@router.post("/v1/capsules/{capsule_id}/resume", response_model=CapsuleOut)
async def resume_capsule(capsule_id: str, caller: Caller, capsules: Capsules) -> CapsuleOut:
    """Restore a paused capsule as it was paused: memory, running processes and files."""
    capsule = await capsules.get(caller.team_id, capsule_id)
    await capsules.resume(capsule, caller)
    return capsule_out(capsule)


async def _guest(capsules: Capsules, caller: Caller, capsule_id: str) -> Guest:
    capsule, host = await capsules.running(caller.team_id, capsule_id)
    return Guest(capsules.agents, capsule, host)


#: The running capsule a request works in (404, 409 or 503 before the route runs otherwise).
Running = Annotated[Guest, Depends(_guest)]


@router.post("/v1/capsules/{capsule_id}/ping", status_code=204)
async def ping(guest: Running) -> Response:
    await guest.ping()
    return Response(status_code=204)


@router.post("/v1/capsules/{capsule_id}/exec")
async def exec_command(body: ExecBody, guest: Running) -> Any:
    """Foreground: the command's output and exit code (`envs` and `cwd` honoured). Background: 202."""
    if body.background:
        started = await guest.start(body.cmd, body.args, body.envs, body.cwd or "", body.tag or "")
        return JSONResponse(started, status_code=202)
    return await guest.exec(body.cmd, body.args, body.envs, body.cwd or "", body.timeout_sec)


def _too_large(limit: int) -> _errors.ApiError:
    return _errors.ApiError(
        413, "too_large", f"uploads are limited to {limit >> 20} MB; use files/stream/write"
    )


@router.post("/v1/capsules/{capsule_id}/files/write", status_code=204)
async def write_file(request: Request, guest: Running) -> Response:
    limit = request.app.state.settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
        raise _too_large(limit)
    form = await request.form(max_part_size=limit)
    path, upload = form.get("path"), form.get("file")
    if not isinstance(path, str) or not path or not isinstance(upload, UploadFile):
        raise _errors.bad_request("multipart fields 'path' and 'file' are required")
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise _too_large(limit)
    await guest.write(path, content)
    return Response(status_code=204)


@router.post("/v1/capsules/{capsule_id}/files/stream/write", status_code=204)
async def stream_write(request: Request, guest: Running) -> Response:
    """Multipart `path` then `file`, passed on to the agent in chunks as it arrives: no size limit, and
    nothing held in memory. The `path` part must come before `file` (as in the seed)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise _errors.bad_request("send multipart/form-data with a 'path' part, then a 'file' part")
    parts = _StreamedParts(options[b"boundary"])
    feeder = asyncio.ensure_future(parts.feed(request.stream()))

    async def path() -> AsyncIterator[str]:
        yield await parts.path()

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await parts.chunks.get()) is not None:
            yield chunk

    try:
        await guest.write_stream(path(), chunks())
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
async def read_file(body: PathBody, guest: Running) -> Response:
    return Response(content=await guest.read(body.path), media_type="application/octet-stream")


@router.post("/v1/capsules/{capsule_id}/files/stream/read")
async def stream_read(body: PathBody, guest: Running) -> StreamingResponse:
    return StreamingResponse(await guest.read_stream(body.path), media_type="application/octet-stream")


@router.post("/v1/capsules/{capsule_id}/files/list")
async def list_files(body: PathBody, guest: Running) -> dict[str, Any]:
    return {"entries": await guest.list_dir(body.path, body.depth)}


@router.post("/v1/capsules/{capsule_id}/files/mkdir")
async def make_dir(body: PathBody, guest: Running) -> dict[str, Any]:
    return {"entry": await guest.mkdir(body.path)}


@router.post("/v1/capsules/{capsule_id}/files/remove", status_code=204)
async def remove(body: PathBody, guest: Running) -> Response:
    await guest.remove(body.path)
    return Response(status_code=204)


@router.get("/v1/capsules/{capsule_id}/processes")
async def list_processes(guest: Running) -> dict[str, Any]:
    return {"processes": await guest.processes()}


@router.delete("/v1/capsules/{capsule_id}/processes/{selector}", status_code=204)
async def kill_process(
    selector: str, guest: Running, signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL"
) -> Response:
    await guest.kill(selector, signal)
    return Response(status_code=204)


@router.get("/v1/capsules/{capsule_id}/metrics")
async def metrics(
    capsule_id: str,
    caller: Caller,
    capsules: Capsules,
    range: Literal["5m", "10m", "1h", "2h", "6h", "12h", "24h"] = Query("10m"),
) -> dict[str, Any]:
    """CPU, memory and disk of the last `range`, running, paused or destroyed (every sample up to 10 min,
    30 s averages up to 2 h, 5 min averages beyond)."""
    capsule = await capsules.get(caller.team_id, capsule_id)
    window, _ = usage.METRICS_RANGES[range]
    since = int(time.time()) - window
    points = [
        {
            "timestamp_unix": p["t"],
            "cpu_pct": p["cpu_pct"],
            "mem_bytes": p["mem_bytes"],
            "disk_bytes": p["disk_bytes"],
        }
        for p in usage.in_range(
            await history(capsules.session, capsules.agents, capsule, since, range), range
        )
    ]
    return {"sandbox_id": capsule_id, "range": range, "points": points}


@router.get("/v1/capsules/{capsule_id}/logs")
async def capsule_logs(
    capsule_id: str,
    caller: Caller,
    capsules: Capsules,
    cursor: int | None = Query(default=None, ge=0, description="unix milliseconds"),
    limit: int = Query(default=1000, ge=1, le=10000),
    direction: Literal["forward", "backward"] = "forward",
) -> dict[str, Any]:
    """The capsule's console (kernel, init, envd and every process it started and ended), paged:
    `forward` from `cursor` oldest first, `backward` up to it newest first (service/logs.py)."""
    capsule = await capsules.get(caller.team_id, capsule_id)
    chosen = logs.page(await logs.entries(capsules, capsule), limit, cursor, direction == "backward")
    return {"logs": [logs.as_json(e) for e in chosen]}


class ForkBody(BaseModel):
    count: int = Field(default=1, ge=1, le=20)


@router.post("/v1/capsules/{capsule_id}/fork", status_code=201, response_model=list[CapsuleOut])
async def fork_capsule(
    capsule_id: str, body: ForkBody, caller: Caller, templates: Templates
) -> list[CapsuleOut]:
    """`count` new capsules in the state of this one: its memory, processes and files at this moment.
    The capsule is paused for the copy and then runs on (a paused one stays paused). The forks stand
    on a template named `fork-<capsule id>-<hex>`, deletable once they are gone."""
    capsule = await templates.capsules.get(caller.team_id, capsule_id)
    return [capsule_out(c) for c in await templates.fork(caller, capsule, body.count)]
