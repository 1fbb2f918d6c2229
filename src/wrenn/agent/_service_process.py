"""The process and terminal RPCs of `hostagent.v1.HostAgentService`, relayed to a sandbox's envd: run a
command (to its end, streamed, or in the background), list, signal and reconnect to processes, and PTYs."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from wrenn.proto.envd.process import process_pb as proc
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._errors import SandboxError
from ._output import CappedOutput, OutputBudget
from ._rpc import EnvdRPCs, call, connect_error, quietly

_T = TypeVar("_T")


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


def start_request(
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


class ProcessRPCs(EnvdRPCs):
    #: What all foreground execs may hold of their commands' output at once.
    exec_budget: OutputBudget

    # --- processes -----------------------------------------------------------------------------------

    async def exec(self, request: pb.ExecRequest, ctx: RequestContext[Any, Any]) -> pb.ExecResponse:
        envd, headers = self._envd(request.sandbox_id, request.user)
        start = start_request(request.cmd, list(request.args), dict(request.envs), request.cwd)
        timeout_s = request.timeout_sec or 30
        out = pb.ExecResponse()
        limit = self.m.config.exec_output_limit
        stdout, stderr = CappedOutput(limit, self.exec_budget), CappedOutput(limit, self.exec_budget)
        began = time.monotonic()
        try:
            async for response in envd.process.start(start, headers=headers, timeout_ms=timeout_s * 1000):
                event = _event(response.event)
                which = event.event if event is not None else None
                if which is None:
                    continue
                if which.field == "data" and (output := which.value.output) is not None:
                    (stdout if output.field == "stdout" else stderr).add(output.value)
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
                raise connect_error(exc) from None
            out.timed_out, out.exit_code, out.status = True, -1, "deadline exceeded"
        except (httpx.TransportError, OSError) as exc:
            raise connect_error(exc) from None
        finally:
            out.stdout, out.stderr = stdout.release(), stderr.release()
        out.stdout_truncated, out.stderr_truncated = stdout.truncated, stderr.truncated
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
            raise connect_error(exc) from None

    async def exec_stream(
        self, request: pb.ExecStreamRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ExecStreamResponse]:
        envd, headers = self._envd(request.sandbox_id, request.user)
        start = start_request(request.cmd, list(request.args), dict(request.envs), request.cwd)
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
                await asyncio.shield(quietly(envd.process.send_signal(kill, headers=headers)))

    async def start_background(
        self, request: pb.StartBackgroundRequest, ctx: RequestContext[Any, Any]
    ) -> pb.StartBackgroundResponse:
        envd, headers = self._envd(request.sandbox_id, request.user)
        tag = request.tag or f"proc-{secrets.token_hex(4)}"
        start = start_request(request.cmd, list(request.args), dict(request.envs), request.cwd, tag=tag)
        stream = envd.process.start(start, headers=headers)
        try:
            first = await call(anext(aiter(stream)))
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
        listed = await call(envd.process.list(proc.ListRequest(), headers=headers))
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
        await call(
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

    # --- terminals -----------------------------------------------------------------------------------

    async def pty_attach(
        self, request: pb.PtyAttachRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.PtyAttachResponse]:
        envd, headers = self._envd(request.sandbox_id, request.user)
        if request.cmd:
            tag = request.tag or f"pty-{secrets.token_hex(4)}"
            envs = {"TERM": "xterm-256color", "LANG": "C.UTF-8", **dict(request.envs)}
            start = start_request(
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
            raise connect_error(exc) from None

    async def pty_send_input(
        self, request: pb.PtySendInputRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PtySendInputResponse:
        envd, headers = self._envd(request.sandbox_id)
        data = proc.ProcessInput(input=Oneof("pty", bytes(request.data)))  # type: ignore[arg-type]
        await call(
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
        await call(
            envd.process.update(
                proc.UpdateRequest(process=_selector(tag=request.tag), pty=size), headers=headers
            )
        )
        return pb.PtyResizeResponse()

    async def pty_kill(self, request: pb.PtyKillRequest, ctx: RequestContext[Any, Any]) -> pb.PtyKillResponse:
        envd, headers = self._envd(request.sandbox_id)
        kill = proc.SendSignalRequest(process=_selector(tag=request.tag), signal=proc.Signal.SIGKILL)
        await call(envd.process.send_signal(kill, headers=headers))
        return pb.PtyKillResponse()
