"""`hostagent.v1.HostAgentService`: the control plane's API to this host, over the sandbox table and
each sandbox's envd."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import psutil
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from wrenn import __version__, images
from wrenn.proto.envd.filesystem import filesystem_pb as fs
from wrenn.proto.envd.process import process_pb as proc
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentService

from ._envd import EnvdClient, FileTransferError
from ._errors import SandboxError
from ._manager import SandboxManager
from ._registration import host_images
from ._sandbox import Sandbox, SandboxParams, Status
from .vmm import Accelerator

_T = TypeVar("_T")
#: Seconds of silence after which agent streams send a keepalive.
KEEPALIVE_S = 30
#: The largest file ReadFile returns in one message; bigger ones need ReadFileStream.
MAX_UNARY_FILE = 64 << 20

_STATUS = {
    Status.PENDING: pb.SandboxStatus.PENDING,
    Status.RUNNING: pb.SandboxStatus.RUNNING,
    Status.PAUSED: pb.SandboxStatus.PAUSED,
    Status.STOPPED: pb.SandboxStatus.STOPPED,
    Status.ERROR: pb.SandboxStatus.ERROR,
}
_FILE_TYPE = {
    fs.FileType.FILE: pb.FileType.FILE,
    fs.FileType.DIRECTORY: pb.FileType.DIRECTORY,
    fs.FileType.SYMLINK: pb.FileType.SYMLINK,
}
_RANGES = {
    pb.MetricsRange.LAST_5M: 300,
    pb.MetricsRange.LAST_10M: 600,
    pb.MetricsRange.LAST_1H: 3600,
    pb.MetricsRange.LAST_2H: 7200,
    pb.MetricsRange.LAST_6H: 21600,
    pb.MetricsRange.LAST_12H: 43200,
    pb.MetricsRange.LAST_24H: 86400,
}


def _ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def _connect_error(exc: BaseException) -> ConnectError:
    if isinstance(exc, ConnectError):
        if exc.code is Code.UNAUTHENTICATED:  # envd: unknown user
            return ConnectError(Code.INVALID_ARGUMENT, exc.message)
        return exc
    if isinstance(exc, SandboxError):
        return ConnectError(Code[exc.code.upper()], exc.message)
    if isinstance(exc, FileTransferError):
        code = {
            400: Code.INVALID_ARGUMENT,
            401: Code.INVALID_ARGUMENT,
            403: Code.PERMISSION_DENIED,
            404: Code.NOT_FOUND,
            413: Code.RESOURCE_EXHAUSTED,
            507: Code.RESOURCE_EXHAUSTED,
        }.get(exc.status, Code.INTERNAL)
        return ConnectError(code, exc.message)
    if isinstance(exc, (httpx.TransportError, OSError)):
        return ConnectError(Code.UNAVAILABLE, f"envd in the sandbox does not answer: {exc}")
    return ConnectError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")


async def _call(awaitable: Awaitable[_T]) -> _T:
    try:
        return await awaitable
    except (ConnectError, SandboxError, FileTransferError, httpx.TransportError, OSError) as exc:
        raise _connect_error(exc) from None


def _entry(e: fs.EntryInfo | None) -> pb.FileEntry:
    if e is None:
        return pb.FileEntry()
    entry = pb.FileEntry(
        name=e.name,
        path=e.path,
        type=_FILE_TYPE.get(e.type, pb.FileType.UNSPECIFIED),
        size=e.size,
        mode=e.mode,
        permissions=e.permissions,
        owner=e.owner,
        group=e.group,
        modified_at=e.modified_time,
    )
    if e.has_field("symlink_target"):
        entry.symlink_target = e.symlink_target
    return entry


def _event(event: proc.ProcessEvent | None) -> pb.ProcessEvent | None:
    """envd's process event in the agent's terms (PTY output is not part of exec streams)."""
    which = event.event if event is not None else None
    if which is None:
        return None
    match which.field:
        case "start":
            return pb.ProcessEvent(event=Oneof("start", pb.ProcessEvent.StartEvent(pid=which.value.pid)))  # type: ignore[arg-type]
        case "data":
            out = which.value.output
            if out is None or out.field == "pty":
                return None
            data = pb.ProcessEvent.DataEvent(output=Oneof(out.field, out.value))  # type: ignore[arg-type]
            return pb.ProcessEvent(event=Oneof("data", data))  # type: ignore[arg-type]
        case "end":
            end = which.value
            mapped = pb.ProcessEvent.EndEvent(exit_code=end.exit_code, exited=end.exited, status=end.status)
            if end.has_field("error"):
                mapped.error = end.error
            return pb.ProcessEvent(event=Oneof("end", mapped))  # type: ignore[arg-type]
        case _:
            return pb.ProcessEvent(event=Oneof("keepalive", pb.KeepAlive()))  # type: ignore[arg-type]


def _start_request(
    cmd: str,
    args: list[str],
    envs: dict[str, str],
    cwd: str,
    *,
    tag: str | None = None,
    pty: tuple[int, int] | None = None,
) -> proc.StartRequest:
    if not cmd:
        raise ConnectError(Code.INVALID_ARGUMENT, "cmd is required")
    config = proc.ProcessConfig(cmd=cmd, args=args, envs=envs)
    if cwd:
        config.cwd = cwd
    request = proc.StartRequest(process=config)
    if tag:
        request.tag = tag
    if pty:
        request.pty = proc.PTY(size=proc.PTY.Size(cols=pty[0], rows=pty[1]))
    return request


def _selector(pid: int = 0, tag: str = "") -> proc.ProcessSelector:
    if pid:
        return proc.ProcessSelector(selector=Oneof("pid", pid))  # type: ignore[arg-type]
    if tag:
        return proc.ProcessSelector(selector=Oneof("tag", tag))  # type: ignore[arg-type]
    raise ConnectError(Code.INVALID_ARGUMENT, "a process pid or tag is required")


class AgentService(HostAgentService):
    def __init__(
        self,
        manager: SandboxManager,
        on_terminate: Callable[[], None] | None = None,
        proxy_port: int = 0,
    ) -> None:
        self.m = manager
        self._on_terminate = on_terminate
        self._proxy_port = proxy_port

    def _envd(self, sandbox_id: str, user: str = "") -> tuple[EnvdClient, dict[str, str]]:
        try:
            sandbox = self.m.running(sandbox_id)
        except SandboxError as exc:
            raise _connect_error(exc) from None
        assert sandbox.envd is not None
        return sandbox.envd, {
            **sandbox.envd.headers(user or None),
            "Keepalive-Ping-Interval": str(KEEPALIVE_S),
        }

    def _info(self, s: Sandbox) -> pb.SandboxInfo:
        return pb.SandboxInfo(
            sandbox_id=s.id,
            status=_STATUS[s.status],
            template=s.params.template,
            vcpus=s.params.vcpus,
            memory_mb=s.params.memory_mb,
            disk_size_mb=s.params.disk_size_mb,
            timeout_sec=s.params.timeout_sec,
            host_ip=s.host_ip,
            created_at=_ts(s.created_at),
            last_active_at=_ts(s.last_active_at),
            envd_version=s.envd_version,
            kernel_version=s.kernel_version,
            vmm=pb.Vmm.FIRECRACKER if self.m.driver.name == "firecracker" else pb.Vmm.QEMU,
            accelerator=pb.Accelerator.KVM
            if self.m.accelerator.accelerator is Accelerator.KVM
            else pb.Accelerator.TCG,
            error=s.error,
            team_id=s.params.team_id,
            metadata=dict(s.params.metadata),
            paused_at=_ts(s.paused_at) if s.paused_at is not None else None,
            from_snapshot=s.from_snapshot,
        )

    # --- sandboxes -----------------------------------------------------------------------------------

    async def create_sandbox(
        self, request: pb.CreateSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CreateSandboxResponse:
        config = self.m.config
        params = SandboxParams(
            sandbox_id=request.sandbox_id,
            template=request.template or config.default_template,
            vcpus=request.vcpus or 1,
            memory_mb=request.memory_mb or 512,
            disk_size_mb=request.disk_size_mb or 5120,
            timeout_sec=request.timeout_sec,
            team_id=request.team_id,
            default_user=request.default_user or config.default_user,
            default_env=dict(request.default_env),
            allow_internet=request.allow_internet,
            envd_access_token=request.envd_access_token,
            metadata=dict(request.metadata),
            auto_pause=not request.discard_on_timeout,
            cold_boot=request.cold_boot,
        )
        sandbox = await _call(self.m.create(params))
        return pb.CreateSandboxResponse(sandbox=self._info(sandbox))

    async def destroy_sandbox(
        self, request: pb.DestroySandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.DestroySandboxResponse:
        await _call(self.m.destroy(request.sandbox_id))
        return pb.DestroySandboxResponse()

    async def pause_sandbox(
        self, request: pb.PauseSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PauseSandboxResponse:
        return pb.PauseSandboxResponse(sandbox=self._info(await _call(self.m.pause(request.sandbox_id))))

    async def resume_sandbox(
        self, request: pb.ResumeSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ResumeSandboxResponse:
        return pb.ResumeSandboxResponse(sandbox=self._info(await _call(self.m.resume(request.sandbox_id))))

    async def hibernate_sandbox(
        self, request: pb.HibernateSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.HibernateSandboxResponse:
        size = await _call(self.m.hibernate(request.sandbox_id))
        return pb.HibernateSandboxResponse(archive_bytes=size)

    async def thaw_sandbox(
        self, request: pb.ThawSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ThawSandboxResponse:
        return pb.ThawSandboxResponse(sandbox=self._info(await _call(self.m.thaw(request.sandbox_id))))

    async def create_template(
        self, request: pb.CreateTemplateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CreateTemplateResponse:
        t = await _call(self.m.create_template(request.sandbox_id, request.name))
        return pb.CreateTemplateResponse(
            template=pb.TemplateInfo(
                name=t.name,
                vcpus=t.vcpus,
                memory_mb=t.memory_mb,
                disk_size_mb=t.disk_size_mb,
                size_bytes=t.size_bytes(),
                image=t.image,
                created_at=_ts(t.created_at),
            )
        )

    async def delete_template(
        self, request: pb.DeleteTemplateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.DeleteTemplateResponse:
        await _call(self.m.delete_template(request.name))
        return pb.DeleteTemplateResponse()

    async def list_sandboxes(
        self, request: pb.ListSandboxesRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(sandboxes=[self._info(s) for s in self.m.sandboxes.values()])

    async def get_sandbox(
        self, request: pb.GetSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetSandboxResponse:
        try:
            return pb.GetSandboxResponse(sandbox=self._info(self.m.get(request.sandbox_id)))
        except SandboxError as exc:
            raise _connect_error(exc) from None

    async def ping_sandbox(
        self, request: pb.PingSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PingSandboxResponse:
        try:
            sandbox = self.m.running(request.sandbox_id)
        except SandboxError as exc:
            raise _connect_error(exc) from None
        return pb.PingSandboxResponse(last_active_at=_ts(sandbox.last_active_at))

    # --- processes -----------------------------------------------------------------------------------

    async def exec(self, request: pb.ExecRequest, ctx: RequestContext[Any, Any]) -> pb.ExecResponse:
        envd, headers = self._envd(request.sandbox_id, request.user)
        start = _start_request(request.cmd, list(request.args), dict(request.envs), request.cwd)
        timeout_s = request.timeout_sec or 30
        out = pb.ExecResponse()
        stdout, stderr = bytearray(), bytearray()
        began = time.monotonic()
        try:
            async for response in envd.process.start(start, headers=headers, timeout_ms=timeout_s * 1000):
                event = _event(response.event)
                which = event.event if event is not None else None
                if which is None:
                    continue
                if which.field == "data" and (output := which.value.output) is not None:
                    (stdout if output.field == "stdout" else stderr).extend(output.value)
                elif which.field == "end":
                    out.exit_code, out.exited, out.status = (
                        which.value.exit_code,
                        which.value.exited,
                        which.value.status,
                    )
                    if which.value.has_field("error"):
                        out.error = which.value.error
        except ConnectError as exc:
            if exc.code is not Code.DEADLINE_EXCEEDED:
                raise _connect_error(exc) from None
            out.timed_out, out.exit_code, out.status = True, -1, "deadline exceeded"
        except (httpx.TransportError, OSError) as exc:
            raise _connect_error(exc) from None
        out.stdout, out.stderr = bytes(stdout), bytes(stderr)
        out.duration_ms = int((time.monotonic() - began) * 1000)
        return out

    async def _relay(
        self, stream: AsyncIterator[Any], wrap: Callable[[pb.ProcessEvent], _T], sandbox_id: str
    ) -> AsyncIterator[_T]:
        try:
            async for response in stream:
                self.m.get(sandbox_id).touch()
                event = _event(response.event)
                if event is not None:
                    yield wrap(event)
        except (ConnectError, SandboxError, httpx.TransportError, OSError) as exc:
            raise _connect_error(exc) from None

    async def exec_stream(
        self, request: pb.ExecStreamRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ExecStreamResponse]:
        envd, headers = self._envd(request.sandbox_id, request.user)
        start = _start_request(request.cmd, list(request.args), dict(request.envs), request.cwd)
        timeout_ms = request.timeout_sec * 1000 if request.timeout_sec else None
        pid, ended = 0, False
        try:
            async for item in self._relay(
                envd.process.start(start, headers=headers, timeout_ms=timeout_ms),
                lambda e: e,
                request.sandbox_id,
            ):
                which = item.event
                if which is not None and which.field == "start":
                    pid = which.value.pid
                ended = ended or (which is not None and which.field == "end")
                yield pb.ExecStreamResponse(event=item)
        finally:
            if pid and not ended:  # the caller went away: the command goes with it
                kill = proc.SendSignalRequest(process=_selector(pid), signal=proc.Signal.SIGKILL)
                await asyncio.shield(_quietly(envd.process.send_signal(kill, headers=headers)))

    async def start_background(
        self, request: pb.StartBackgroundRequest, ctx: RequestContext[Any, Any]
    ) -> pb.StartBackgroundResponse:
        envd, headers = self._envd(request.sandbox_id, request.user)
        tag = request.tag or f"proc-{secrets.token_hex(4)}"
        start = _start_request(request.cmd, list(request.args), dict(request.envs), request.cwd, tag=tag)
        stream = envd.process.start(start, headers=headers)
        try:
            first = await _call(anext(aiter(stream)))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        event = first.event.event if first.event else None
        if event is None or event.field != "start":
            raise ConnectError(Code.INTERNAL, "envd did not report the process start")
        return pb.StartBackgroundResponse(pid=event.value.pid, tag=tag)

    async def list_processes(
        self, request: pb.ListProcessesRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListProcessesResponse:
        envd, headers = self._envd(request.sandbox_id)
        listed = await _call(envd.process.list(proc.ListRequest(), headers=headers))
        return pb.ListProcessesResponse(
            processes=[
                pb.ProcessInfo(
                    pid=p.pid,
                    tag=p.tag or "",
                    cmd=p.config.cmd if p.config else "",
                    args=list(p.config.args) if p.config else [],
                    cwd=(p.config.cwd or "") if p.config else "",
                )
                for p in listed.processes
            ]
        )

    def _target(self, request: Any) -> proc.ProcessSelector:
        which = request.selector
        if which is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "a process pid or tag is required")
        return _selector(
            pid=which.value if which.field == "pid" else 0, tag=which.value if which.field == "tag" else ""
        )

    async def kill_process(
        self, request: pb.KillProcessRequest, ctx: RequestContext[Any, Any]
    ) -> pb.KillProcessResponse:
        envd, headers = self._envd(request.sandbox_id)
        signum = proc.Signal.SIGTERM if request.signal == pb.Signal.SIGTERM else proc.Signal.SIGKILL
        await _call(
            envd.process.send_signal(
                proc.SendSignalRequest(process=self._target(request), signal=signum), headers=headers
            )
        )
        return pb.KillProcessResponse()

    async def connect_process(
        self, request: pb.ConnectProcessRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ConnectProcessResponse]:
        envd, headers = self._envd(request.sandbox_id)
        stream = envd.process.connect(proc.ConnectRequest(process=self._target(request)), headers=headers)
        async for item in self._relay(
            stream, lambda e: pb.ConnectProcessResponse(event=e), request.sandbox_id
        ):
            yield item

    # --- files ---------------------------------------------------------------------------------------

    async def read_file(
        self, request: pb.ReadFileRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ReadFileResponse:
        envd, _ = self._envd(request.sandbox_id)
        content = bytearray()

        async def collect() -> None:
            async for chunk in envd.download(request.path):
                content.extend(chunk)
                if len(content) > MAX_UNARY_FILE:
                    raise SandboxError(
                        "resource_exhausted",
                        f"{request.path} is larger than {MAX_UNARY_FILE >> 20} MiB: use ReadFileStream",
                    )

        await _call(collect())
        return pb.ReadFileResponse(content=bytes(content))

    async def _chmod(self, envd: EnvdClient, path: str, mode: int) -> None:
        start = _start_request("chmod", [f"{mode:o}", path], {}, "")
        async for _ in envd.process.start(start, headers=envd.headers("root"), timeout_ms=10_000):
            pass

    async def _stat(self, envd: EnvdClient, path: str) -> pb.FileEntry:
        stat = await _call(envd.filesystem.stat(fs.StatRequest(path=path), headers=envd.headers()))
        return _entry(stat.entry)

    async def write_file(
        self, request: pb.WriteFileRequest, ctx: RequestContext[Any, Any]
    ) -> pb.WriteFileResponse:
        envd, _ = self._envd(request.sandbox_id)
        written = await _call(envd.upload(request.path, bytes(request.content)))
        if request.has_field("mode"):
            await _call(self._chmod(envd, written["path"], request.mode))
        return pb.WriteFileResponse(entry=await self._stat(envd, written["path"]))

    async def read_file_stream(
        self, request: pb.ReadFileStreamRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        envd, _ = self._envd(request.sandbox_id)
        try:
            async for chunk in envd.download(request.path):
                yield pb.ReadFileStreamResponse(chunk=chunk)
        except (FileTransferError, httpx.TransportError, OSError) as exc:
            raise _connect_error(exc) from None

    async def write_file_stream(
        self, request: AsyncIterator[pb.WriteFileStreamRequest], ctx: RequestContext[Any, Any]
    ) -> pb.WriteFileStreamResponse:
        messages = aiter(request)
        first = await anext(messages, None)
        meta = (
            first.content.value
            if first is not None and first.content is not None and first.content.field == "meta"
            else None
        )
        if not isinstance(meta, pb.WriteFileMeta):
            raise ConnectError(Code.INVALID_ARGUMENT, "the first message must be meta {sandbox_id, path}")
        envd, _ = self._envd(meta.sandbox_id)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.content is not None and message.content.field == "chunk":
                    yield bytes(message.content.value)

        written = await _call(envd.upload(meta.path, chunks()))
        if meta.has_field("mode"):
            await _call(self._chmod(envd, written["path"], meta.mode))
        return pb.WriteFileStreamResponse(entry=await self._stat(envd, written["path"]))

    async def list_dir(self, request: pb.ListDirRequest, ctx: RequestContext[Any, Any]) -> pb.ListDirResponse:
        envd, headers = self._envd(request.sandbox_id)
        listed = await _call(
            envd.filesystem.list_dir(
                fs.ListDirRequest(path=request.path, depth=request.depth or 1), headers=headers
            )
        )
        return pb.ListDirResponse(entries=[_entry(e) for e in listed.entries])

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RequestContext[Any, Any]) -> pb.MakeDirResponse:
        envd, headers = self._envd(request.sandbox_id)
        made = await _call(envd.filesystem.make_dir(fs.MakeDirRequest(path=request.path), headers=headers))
        return pb.MakeDirResponse(entry=_entry(made.entry))

    async def remove_path(
        self, request: pb.RemovePathRequest, ctx: RequestContext[Any, Any]
    ) -> pb.RemovePathResponse:
        envd, headers = self._envd(request.sandbox_id)
        await _call(envd.filesystem.remove(fs.RemoveRequest(path=request.path), headers=headers))
        return pb.RemovePathResponse()

    async def stat(self, request: pb.StatRequest, ctx: RequestContext[Any, Any]) -> pb.StatResponse:
        envd, _ = self._envd(request.sandbox_id)
        return pb.StatResponse(entry=await self._stat(envd, request.path))

    async def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDirResponse]:
        envd, headers = self._envd(request.sandbox_id)
        watch = fs.WatchDirRequest(path=request.path, recursive=request.recursive)
        try:
            async for response in envd.filesystem.watch_dir(watch, headers=headers):
                which = response.event
                if which is None:
                    continue
                if which.field == "start":
                    yield pb.WatchDirResponse(event=Oneof("start", pb.WatchDirResponse.WatchStarted()))  # type: ignore[arg-type]
                elif which.field == "filesystem":
                    event = pb.FileEvent(name=which.value.name, type=pb.FileEventType(int(which.value.type)))
                    yield pb.WatchDirResponse(event=Oneof("file", event))  # type: ignore[arg-type]
                else:
                    yield pb.WatchDirResponse(event=Oneof("keepalive", pb.KeepAlive()))  # type: ignore[arg-type]
        except (ConnectError, httpx.TransportError, OSError) as exc:
            raise _connect_error(exc) from None

    # --- terminals -----------------------------------------------------------------------------------

    async def pty_attach(
        self, request: pb.PtyAttachRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.PtyAttachResponse]:
        envd, headers = self._envd(request.sandbox_id, request.user)
        if request.cmd:
            tag = request.tag or f"pty-{secrets.token_hex(4)}"
            envs = {"TERM": "xterm-256color", "LANG": "C.UTF-8", **dict(request.envs)}
            start = _start_request(
                request.cmd,
                list(request.args),
                envs,
                request.cwd,
                tag=tag,
                pty=(request.cols or 80, request.rows or 24),
            )
            stream: AsyncIterator[Any] = envd.process.start(start, headers=headers)
        elif request.tag:
            tag = request.tag
            stream = envd.process.connect(proc.ConnectRequest(process=_selector(tag=tag)), headers=headers)
        else:
            raise ConnectError(
                Code.INVALID_ARGUMENT, "give cmd to start a terminal, or tag to reattach to one"
            )
        try:
            async for response in stream:
                self.m.get(request.sandbox_id).touch()
                which = response.event.event if response.event else None
                if which is None:
                    continue
                match which.field:
                    case "start":
                        started = pb.PtyAttachResponse.Started(pid=which.value.pid, tag=tag)
                        yield pb.PtyAttachResponse(event=Oneof("started", started))  # type: ignore[arg-type]
                    case "data":
                        output = pb.PtyAttachResponse.Output(data=which.value.output.value)
                        yield pb.PtyAttachResponse(event=Oneof("output", output))  # type: ignore[arg-type]
                    case "end":
                        exited = pb.PtyAttachResponse.Exited(exit_code=which.value.exit_code)
                        if which.value.has_field("error"):
                            exited.error = which.value.error
                        yield pb.PtyAttachResponse(event=Oneof("exited", exited))  # type: ignore[arg-type]
                    case _:
                        yield pb.PtyAttachResponse(event=Oneof("keepalive", pb.KeepAlive()))  # type: ignore[arg-type]
        except (ConnectError, SandboxError, httpx.TransportError, OSError) as exc:
            raise _connect_error(exc) from None

    async def pty_send_input(
        self, request: pb.PtySendInputRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PtySendInputResponse:
        envd, headers = self._envd(request.sandbox_id)
        data = proc.ProcessInput(input=Oneof("pty", bytes(request.data)))  # type: ignore[arg-type]
        await _call(
            envd.process.send_input(
                proc.SendInputRequest(process=_selector(tag=request.tag), input=data), headers=headers
            )
        )
        return pb.PtySendInputResponse()

    async def pty_resize(
        self, request: pb.PtyResizeRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PtyResizeResponse:
        envd, headers = self._envd(request.sandbox_id)
        size = proc.PTY(size=proc.PTY.Size(cols=request.cols, rows=request.rows))
        await _call(
            envd.process.update(
                proc.UpdateRequest(process=_selector(tag=request.tag), pty=size), headers=headers
            )
        )
        return pb.PtyResizeResponse()

    async def pty_kill(self, request: pb.PtyKillRequest, ctx: RequestContext[Any, Any]) -> pb.PtyKillResponse:
        envd, headers = self._envd(request.sandbox_id)
        kill = proc.SendSignalRequest(process=_selector(tag=request.tag), signal=proc.Signal.SIGKILL)
        await _call(envd.process.send_signal(kill, headers=headers))
        return pb.PtyKillResponse()

    # --- metrics, host -------------------------------------------------------------------------------

    async def get_sandbox_metrics(
        self, request: pb.GetSandboxMetricsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetSandboxMetricsResponse:
        try:
            self.m.get(request.sandbox_id)
        except SandboxError as exc:
            raise _connect_error(exc) from None
        range_s = _RANGES.get(request.range, 600)
        return pb.GetSandboxMetricsResponse(
            points=[
                pb.MetricsPoint(
                    timestamp=_ts(p.timestamp),
                    cpu_pct=p.cpu_pct,
                    mem_bytes=p.mem_bytes,
                    disk_bytes=p.disk_bytes,
                )
                for p in self.m.metrics.points(request.sandbox_id, range_s)
            ]
        )

    async def get_host_info(
        self, request: pb.GetHostInfoRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetHostInfoResponse:
        mem = psutil.virtual_memory()
        disk = shutil.disk_usage(self.m.config.data_dir)
        choice = self.m.accelerator
        image = images.find(self.m.config.default_template, self.m.config.data_dir)
        return pb.GetHostInfoResponse(
            hostname=platform.node(),
            arch=platform.machine(),
            cpu_count=os.cpu_count() or 1,
            memory_total_mb=mem.total >> 20,
            memory_available_mb=mem.available >> 20,
            disk_total_mb=disk.total >> 20,
            disk_available_mb=disk.free >> 20,
            accelerator=pb.Accelerator.KVM if choice.accelerator is Accelerator.KVM else pb.Accelerator.TCG,
            accelerator_reason=choice.reason,
            vmm=pb.Vmm.FIRECRACKER if self.m.driver.name == "firecracker" else pb.Vmm.QEMU,
            vmm_version=self.m.driver.version(),
            agent_version=__version__,
            kernel_version=image.kernel_version if image else "",
            slot_capacity=self.m.config.slots,
            slots_used=self.m.slots_used(),
            proxy_port=self._proxy_port,
            images=[pb.ImageInfo(**i) for i in host_images(self.m.config.data_dir)],
        )

    async def terminate(
        self, request: pb.TerminateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.TerminateResponse:
        await self.m.terminate()
        if self._on_terminate is not None:
            asyncio.get_running_loop().call_later(0.2, self._on_terminate)
        else:
            asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
        return pb.TerminateResponse()


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - best effort: the process may already be gone
        return
