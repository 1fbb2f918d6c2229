"""The `process.Process` Connect service, on top of the process table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from wrenn.proto.envd.process.process_connect import Process
from wrenn.proto.envd.process.process_pb import (
    CloseStdinRequest,
    CloseStdinResponse,
    ConnectRequest,
    ConnectResponse,
    ListRequest,
    ListResponse,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    ProcessSelector,
    SendInputRequest,
    SendInputResponse,
    SendSignalRequest,
    SendSignalResponse,
    Signal,
    StartRequest,
    StartResponse,
    StreamInputRequest,
    StreamInputResponse,
    UpdateRequest,
    UpdateResponse,
)

from .. import _paths
from .._errors import to_connect
from .._state import EnvdState
from .._users import UnknownUserError, User, basic_auth_user
from ._manager import ManagedProcess, ProcessManager, ProcessNotFoundError, ProcessStateError, Spec, event

log = logging.getLogger("wrenn.envd.process")

#: Seconds between keepalives when the client names no interval (as E2B's envd).
DEFAULT_KEEPALIVE_S = 90.0
KEEPALIVE_HEADER = "keepalive-ping-interval"

_SIGNALS = {Signal.SIGTERM: signal.SIGTERM, Signal.SIGKILL: signal.SIGKILL}
_R = TypeVar("_R")


def keepalive_interval(ctx: RequestContext[object, object]) -> float:
    raw = ctx.request_headers.get(KEEPALIVE_HEADER)
    try:
        value = float(raw) if raw else DEFAULT_KEEPALIVE_S
    except ValueError:
        return DEFAULT_KEEPALIVE_S
    return value if value > 0 else DEFAULT_KEEPALIVE_S


def request_user(state: EnvdState, ctx: RequestContext[object, object]) -> User:
    try:
        return state.user(basic_auth_user(ctx.request_headers.get("authorization")))
    except UnknownUserError as exc:
        raise ConnectError(Code.UNAUTHENTICATED, str(exc)) from None


class ProcessService(Process):
    def __init__(self, state: EnvdState, manager: ProcessManager) -> None:
        self._state = state
        self._manager = manager

    # --- helpers ---------------------------------------------------------------------------------

    def _select(self, selector: ProcessSelector | None) -> ManagedProcess:
        which = selector.selector if selector is not None else None
        if which is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "process selector (pid or tag) is required")
        try:
            if which.field == "pid":
                return self._manager.get(pid=int(which.value))
            return self._manager.get(tag=str(which.value))
        except ProcessNotFoundError as exc:
            raise ConnectError(Code.NOT_FOUND, str(exc)) from None

    def _running(self, selector: ProcessSelector | None) -> ManagedProcess:
        managed = self._select(selector)
        if not managed.running:
            raise ConnectError(Code.NOT_FOUND, f"process {managed.pid} has already exited")
        return managed

    @staticmethod
    async def _guard(action: Callable[[], object]) -> None:
        try:
            result = action()
            if asyncio.iscoroutine(result):
                await result
        except ProcessStateError as exc:
            raise ConnectError(Code.FAILED_PRECONDITION, str(exc)) from None

    def _spec(self, request: StartRequest, user: User) -> Spec:
        config = request.process
        if config is None or not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        try:
            cwd = _paths.resolve(config.cwd, user.home) if config.cwd else self._state.workdir(user)
        except _paths.BadPathError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd: {exc}") from None
        if not os.path.isdir(cwd):
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd {cwd!r} does not exist or is not a directory")
        pty_size = None
        if request.pty is not None:
            size = request.pty.size
            cols, rows = (size.cols, size.rows) if size is not None else (80, 24)
            pty_size = (cols or 80, rows or 24)
        return Spec(
            cmd=config.cmd,
            args=list(config.args),
            env=self._state.process_env(user, dict(config.envs)),
            cwd=cwd,
            user=user,
            config=ProcessConfig(cmd=config.cmd, args=list(config.args), envs=dict(config.envs), cwd=cwd),
            tag=request.tag or None,
            stdin=bool(request.stdin),
            pty_size=pty_size,
        )

    async def _follow(
        self,
        managed: ManagedProcess,
        queue: asyncio.Queue[ProcessEvent],
        ctx: RequestContext[object, object],
        *,
        is_start: bool,
    ) -> AsyncIterator[ProcessEvent]:
        """`start`, then the process's events, with keepalives, until `end` or the stream's deadline."""
        interval = keepalive_interval(ctx)
        remaining_ms = ctx.timeout_ms
        deadline = None if remaining_ms is None else time.monotonic() + remaining_ms / 1000.0
        try:
            yield event("start", ProcessEvent.StartEvent(pid=managed.pid))
            while True:
                wait = interval
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, _deadline_message(managed, is_start))
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise ConnectError(
                            Code.DEADLINE_EXCEEDED, _deadline_message(managed, is_start)
                        ) from None
                    yield event("keepalive", ProcessEvent.KeepAlive())
                    continue
                if item.event is not None and item.event.field == "end":
                    if is_start and managed.deadline_exceeded:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, _deadline_message(managed, is_start))
                    yield item
                    return
                yield item
        finally:
            managed.unsubscribe(queue)

    # --- RPCs ------------------------------------------------------------------------------------

    async def start(
        self, request: StartRequest, ctx: RequestContext[StartRequest, StartResponse]
    ) -> AsyncIterator[StartResponse]:
        user = request_user(self._state, ctx)  # type: ignore[arg-type]
        spec = self._spec(request, user)
        timeout_ms = ctx.timeout_ms
        try:
            managed, queue = await self._manager.start(
                spec, deadline_s=None if timeout_ms is None else timeout_ms / 1000.0
            )
        except FileExistsError as exc:
            raise ConnectError(Code.ALREADY_EXISTS, str(exc)) from None
        except FileNotFoundError:
            raise ConnectError(Code.INVALID_ARGUMENT, f"command not found: {spec.cmd}") from None
        except PermissionError as exc:
            raise ConnectError(
                Code.PERMISSION_DENIED, f"cannot start {spec.cmd}: {exc.strerror or exc}"
            ) from None
        except OSError as exc:
            raise to_connect(exc, spec.cmd) from None
        async for item in self._follow(managed, queue, ctx, is_start=True):  # type: ignore[arg-type]
            yield StartResponse(event=item)

    async def connect(
        self, request: ConnectRequest, ctx: RequestContext[ConnectRequest, ConnectResponse]
    ) -> AsyncIterator[ConnectResponse]:
        managed = self._select(request.process)
        queue = managed.subscribe()
        async for item in self._follow(managed, queue, ctx, is_start=False):  # type: ignore[arg-type]
            yield ConnectResponse(event=item)

    async def list(
        self, request: ListRequest, ctx: RequestContext[ListRequest, ListResponse]
    ) -> ListResponse:
        return ListResponse(
            processes=[
                ProcessInfo(config=p.spec.config, pid=p.pid, tag=p.tag)
                if p.tag
                else ProcessInfo(config=p.spec.config, pid=p.pid)
                for p in self._manager.running()
            ]
        )

    async def send_input(
        self, request: SendInputRequest, ctx: RequestContext[SendInputRequest, SendInputResponse]
    ) -> SendInputResponse:
        managed = self._running(request.process)
        await self._write(managed, request.input)
        return SendInputResponse()

    async def _write(self, managed: ManagedProcess, data: object) -> None:
        which = getattr(data, "input", None)
        if which is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "input (stdin or pty bytes) is required")
        payload = bytes(which.value)
        if which.field == "pty":
            await self._guard(lambda: managed.write_pty(payload))
        else:
            await self._guard(lambda: managed.write_stdin(payload))

    async def stream_input(
        self,
        request: AsyncIterator[StreamInputRequest],
        ctx: RequestContext[StreamInputRequest, StreamInputResponse],
    ) -> StreamInputResponse:
        managed: ManagedProcess | None = None
        async for message in request:
            which = message.event
            if which is None or which.field == "keepalive":
                continue
            if which.field == "start":
                managed = self._running(which.value.process)  # type: ignore[union-attr]
                continue
            if managed is None:
                raise ConnectError(Code.INVALID_ARGUMENT, "the first message of StreamInput must be start")
            if not managed.running:
                raise ConnectError(Code.NOT_FOUND, f"process {managed.pid} has already exited")
            await self._write(managed, which.value.input)  # type: ignore[union-attr]
        return StreamInputResponse()

    async def send_signal(
        self, request: SendSignalRequest, ctx: RequestContext[SendSignalRequest, SendSignalResponse]
    ) -> SendSignalResponse:
        signum = _SIGNALS.get(request.signal)
        if signum is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL")
        managed = self._running(request.process)
        managed.signal(signum)
        log.info("signal sent", extra={"pid": managed.pid, "signal": signum.name})
        return SendSignalResponse()

    async def close_stdin(
        self, request: CloseStdinRequest, ctx: RequestContext[CloseStdinRequest, CloseStdinResponse]
    ) -> CloseStdinResponse:
        managed = self._running(request.process)
        await self._guard(managed.close_stdin)
        return CloseStdinResponse()

    async def update(
        self, request: UpdateRequest, ctx: RequestContext[UpdateRequest, UpdateResponse]
    ) -> UpdateResponse:
        managed = self._running(request.process)
        size = request.pty.size if request.pty is not None else None
        if size is None or not size.cols or not size.rows:
            raise ConnectError(Code.INVALID_ARGUMENT, "pty.size with non-zero cols and rows is required")
        await self._guard(lambda: managed.resize(size.cols, size.rows))
        return UpdateResponse()


def _deadline_message(managed: ManagedProcess, is_start: bool) -> str:
    if is_start:
        return f"process {managed.pid} exceeded its deadline (connect-timeout-ms) and was killed"
    return "stream deadline exceeded; the process keeps running"


async def shutdown(manager: ProcessManager) -> None:
    with contextlib.suppress(TimeoutError):
        await manager.shutdown()
