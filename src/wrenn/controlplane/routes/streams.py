"""WebSockets `exec/stream`, `processes/{selector}/stream`, `pty` and `files/watch`, over agent streams.

Every socket is accepted first. Credentials come from the upgrade's headers (`X-API-Key`, `Authorization:
Bearer`) or, for browsers, from a first `{"type": "auth", "token"}` message within 5 s. Any failure (bad
credentials, a capsule that is missing, another team's or not running, an agent error) is one in-band
`{"type": "error", "code", "data"}` message, then a close: `_fail` is the only place that replies so.
(Why over 500 lines: four socket protocols that share one socket class, one auth and one failure path.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from connectrpc.errors import ConnectError
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from protobuf import Oneof
from sqlalchemy import update
from starlette.websockets import WebSocketState

from wrenn._shared.asgiproxy import first_done
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

from .. import _errors
from .._agents import AgentPool, agent_error, unreachable
from .._deps import Principal, authenticate, has_credentials, token_principal
from ..db import Capsule, utcnow
from ..service import CapsuleService

router = APIRouter(tags=["streams"])
log = logging.getLogger("wrenn.controlplane.streams")

_T = TypeVar("_T")

#: How long a socket without header credentials has to send its `auth` message.
AUTH_TIMEOUT_S = 5.0
#: `pty` and `files/watch` send `{"type": "ping"}` this often so that proxies keep them open.
PING_INTERVAL_S = 30.0
#: `last_active_at` (and the agent's idle timer) is bumped at most this often per socket.
TOUCH_INTERVAL_S = 5.0
#: After `stop`, how long `exec/stream` waits for the killed command's `exit` before it just closes.
STOP_GRACE_S = 5.0
#: Client messages of a `pty` socket queued ahead of the agent; when full, the socket is not read.
PTY_QUEUE = 64
#: Consecutive `input` messages are sent to the agent as one call of at most this many bytes.
PTY_COALESCE_BYTES = 64 * 1024

_FILE_EVENTS = {
    pb.FileEventType.CREATE: "create",
    pb.FileEventType.WRITE: "write",
    pb.FileEventType.REMOVE: "remove",
    pb.FileEventType.RENAME: "rename",
    pb.FileEventType.CHMOD: "chmod",
}
#: Close codes after an in-band error (the message says the rest).
_CLOSE_CODES = {"unauthorized": 1008, "forbidden": 1008, "account_deactivated": 1008, "internal_error": 1011}


# --- the socket -------------------------------------------------------------------------------------


class _Socket:
    """An accepted, authenticated WebSocket on a running capsule, and the host agent that runs it."""

    def __init__(self, ws: WebSocket, capsule_id: str, host_id: str, address: str) -> None:
        self.ws = ws
        self.capsule_id = capsule_id
        self.host_id = host_id
        self._agents: AgentPool = ws.app.state.agents
        self.agent: HostAgentServiceClient = self._agents.client(address, host_id=host_id)
        self._send_lock = asyncio.Lock()
        self._touched = time.monotonic()  # `running` has just bumped it

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(message))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(data)

    async def receive(self) -> dict[str, Any]:
        """The client's next message (`{}` unless a JSON object; a binary frame is terminal input,
        `{"type": "input", "raw": bytes}`, as the seed SDK sends it); WebSocketDisconnect once it is gone."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        await self.touch()
        if message.get("bytes") is not None and message.get("text") is None:
            return {"type": "input", "raw": message["bytes"]}
        return _decode(message.get("text") or b"")

    async def call(self, awaitable: Awaitable[_T]) -> _T:
        """A unary agent call, its errors as API errors."""
        return await self._agents.call(self.host_id, awaitable)

    async def events(self, stream: AsyncIterator[_T]) -> AsyncGenerator[_T, None]:
        """An agent stream's messages, its errors as API errors; leaving it cancels the stream."""
        try:
            async for item in stream:
                await self.touch()
                yield item
        except ConnectError as exc:
            raise agent_error(exc, self.host_id) from None
        except OSError as exc:
            raise unreachable(self.host_id, exc) from None
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def touch(self) -> None:
        """Bump the capsule's `last_active_at` and the agent's idle timer, at most every TOUCH_INTERVAL_S."""
        now = time.monotonic()
        if now - self._touched < TOUCH_INTERVAL_S:
            return
        self._touched = now
        try:
            async with self.ws.app.state.sessions() as session:
                await session.execute(
                    update(Capsule).where(Capsule.id == self.capsule_id).values(last_active_at=utcnow())
                )
                await session.commit()
            await self.call(self.agent.ping_sandbox(pb.PingSandboxRequest(sandbox_id=self.capsule_id)))
        except Exception as exc:  # noqa: BLE001 - activity bookkeeping must never break a session
            log.warning("could not record activity", extra={"capsule": self.capsule_id, "error": str(exc)})


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(exc: _errors.ApiError, fatal: bool | None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "error", "code": exc.code, "data": exc.message}
    if fatal is not None:
        message["fatal"] = fatal
    return message


async def _fail(ws: WebSocket, exc: _errors.ApiError, fatal: bool | None) -> None:
    """The one in-band error reply: the error message, then a close."""
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(_error_message(exc, fatal)))
    await _close(ws, _CLOSE_CODES.get(exc.code, 1000))


async def _close(ws: WebSocket, code: int = 1000) -> None:
    if ws.application_state != WebSocketState.DISCONNECTED and ws.client_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(code)


# --- the handshake ----------------------------------------------------------------------------------


async def _auth_token(ws: WebSocket) -> str:
    """The token of the client's first message, `{"type": "auth", "token"}`, within AUTH_TIMEOUT_S."""
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            message = await ws.receive()
    except TimeoutError:
        raise _errors.unauthorized(
            f"send X-API-Key or Authorization: Bearer, or a first message "
            f'{{"type": "auth", "token"}} within {AUTH_TIMEOUT_S:g} s'
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    first = _decode(message.get("text") or message.get("bytes") or b"")
    token = first.get("token")
    if first.get("type") != "auth" or not isinstance(token, str) or not token:
        raise _errors.unauthorized('the first message must be {"type": "auth", "token": <JWT or API key>}')
    return token


async def _authenticate(ws: WebSocket) -> Principal:
    state = ws.app.state
    if has_credentials(ws):
        async with state.sessions() as session:
            return await authenticate(ws, session)
    token = await _auth_token(ws)
    async with state.sessions() as session:
        return await token_principal(token, session, state.tokens)


async def _open(ws: WebSocket, capsule_id: str) -> _Socket:
    """Authenticate the caller and find its running capsule and that capsule's host."""
    caller = await _authenticate(ws)
    async with ws.app.state.sessions() as session:
        capsule, host = await CapsuleService(session, ws.app.state.agents, ws.app.state.settings).running(
            caller.team_id, capsule_id
        )
    return _Socket(ws, capsule.id, host.id, host.address)


async def _serve(
    ws: WebSocket,
    capsule_id: str,
    handler: Callable[[_Socket], Awaitable[None]],
    *,
    fatal: bool | None = None,
) -> None:
    """Accept, open, run `handler`, close; every failure is one in-band error (`fatal` added for `pty`)."""
    await ws.accept()
    try:
        await handler(await _open(ws, capsule_id))
    except WebSocketDisconnect:
        return
    except _errors.ApiError as exc:
        await _fail(ws, exc, fatal)
        return
    except Exception:
        log.exception("websocket failed", extra={"path": ws.url.path})
        await _fail(ws, _errors.ApiError(500, "internal_error", "internal error"), fatal)
        return
    await _close(ws)


async def _pinger(sock: _Socket) -> None:
    while True:
        await asyncio.sleep(PING_INTERVAL_S)
        await sock.send({"type": "ping"})


# --- exec/stream and processes/{selector}/stream ----------------------------------------------------


@router.websocket("/v1/capsules/{capsule_id}/exec/stream")
async def exec_stream(ws: WebSocket, capsule_id: str) -> None:
    """Client `{"type": "start", "cmd", "args"}`, then optionally `{"type": "stop"}`. Server `start{pid}`,
    `stdout`/`stderr{data}`, `exit{exit_code}` or `error{code, data}`. A dropped socket kills the command."""
    await _serve(ws, capsule_id, _run_exec)


@router.websocket("/v1/capsules/{capsule_id}/processes/{selector}/stream")
async def process_stream(ws: WebSocket, capsule_id: str, selector: str) -> None:
    """Attach to a running process (pid or tag): the `exec/stream` server messages from now on. Closing
    the socket leaves the process running."""

    async def attach(sock: _Socket) -> None:
        numeric = selector.isdigit() and int(selector) < 2**32
        which = Oneof("pid", int(selector)) if numeric else Oneof("tag", selector)
        request = pb.ConnectProcessRequest(sandbox_id=sock.capsule_id, selector=which)  # type: ignore[arg-type]
        await _relay_process(sock, sock.agent.connect_process(request), stoppable=False)

    await _serve(ws, capsule_id, attach)


async def _run_exec(sock: _Socket) -> None:
    start = await sock.receive()
    cmd, args = start.get("cmd"), start.get("args") or []
    if start.get("type") != "start" or not isinstance(cmd, str) or not cmd or not _strings(args):
        raise _errors.bad_request('the first message must be {"type": "start", "cmd": str, "args": [str]}')
    request = pb.ExecStreamRequest(sandbox_id=sock.capsule_id, cmd=cmd, args=args)
    await _relay_process(sock, sock.agent.exec_stream(request), stoppable=True)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class _Process:
    """Process events as `exec/stream` messages; text is decoded per stream, so split characters survive."""

    def __init__(self) -> None:
        self.pid = 0
        self._text = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("stdout", "stderr")}

    def message(self, event: pb.ProcessEvent | None) -> dict[str, Any] | None:
        value = event.event.value if event is not None and event.event is not None else None
        if isinstance(value, pb.ProcessEvent.StartEvent):
            self.pid = value.pid
            return {"type": "start", "pid": value.pid}
        if isinstance(value, pb.ProcessEvent.DataEvent) and value.output is not None:
            kind = value.output.field
            return {"type": kind, "data": self._text[kind].decode(value.output.value)}
        if isinstance(value, pb.ProcessEvent.EndEvent):
            return {"type": "exit", "exit_code": value.exit_code}
        return None  # keepalive


async def _relay_process(
    sock: _Socket,
    stream: AsyncIterator[pb.ExecStreamResponse | pb.ConnectProcessResponse],
    *,
    stoppable: bool,
) -> None:
    process = _Process()

    async def pump() -> None:
        async with contextlib.aclosing(sock.events(stream)) as events:
            async for response in events:
                message = process.message(response.event)
                if message is not None:
                    await sock.send(message)
                    if message["type"] == "exit":
                        return

    async def listen() -> None:
        try:
            while (await sock.receive()).get("type") != "stop" or not stoppable:
                pass
        except WebSocketDisconnect:
            if stoppable:  # the agent would only notice its closed stream at its next write
                await _kill(sock, process.pid)
            raise
        if await _kill(sock, process.pid):
            await asyncio.sleep(STOP_GRACE_S)  # for the `exit` message: the pump ends the race with it

    await first_done(pump(), listen())


async def _kill(sock: _Socket, pid: int) -> bool:
    """SIGKILL an `exec/stream` command (and its process group). Before `start` there is no pid: closing
    the agent stream then cancels the command."""
    if not pid:
        return False
    which = Oneof("pid", pid)
    kill = pb.KillProcessRequest(sandbox_id=sock.capsule_id, selector=which, signal=pb.Signal.SIGKILL)  # type: ignore[arg-type]
    with contextlib.suppress(_errors.ApiError):  # not_found: it has just ended by itself
        await sock.call(sock.agent.kill_process(kill))
    return True


# --- pty --------------------------------------------------------------------------------------------


@router.websocket("/v1/capsules/{capsule_id}/pty")
async def pty(ws: WebSocket, capsule_id: str) -> None:
    """First message `start{cmd="/bin/bash", args, cols=80, rows=24, envs, cwd, user, encoding}` or
    `connect{tag, encoding}`; then input as binary frames or `input{data: base64}`, `resize{cols, rows}`,
    `kill`. Server `started{tag, pid}`, output as binary frames (the seed SDK's protocol) or, with
    `encoding: "base64"`, `output{data: base64}`; `exit{exit_code}`, `error{code, data, fatal}`, `ping`.
    The terminal outlives the socket."""
    await _serve(ws, capsule_id, _run_pty, fatal=True)


async def _run_pty(sock: _Socket) -> None:
    first = await sock.receive()
    request = _pty_request(sock.capsule_id, first)
    binary = first.get("encoding") != "base64"
    async with contextlib.aclosing(sock.events(sock.agent.pty_attach(request))) as events:
        # input before `started` would find no terminal
        await _pty_output(sock, events, binary, until_started=True)
        await first_done(_pty_output(sock, events, binary), _pty_input(sock, request.tag), _pinger(sock))


def _pty_request(capsule_id: str, first: dict[str, Any]) -> pb.PtyAttachRequest:
    kind, tag = first.get("type"), first.get("tag")
    if kind == "connect":
        if not isinstance(tag, str) or not tag:
            raise _errors.bad_request('"connect" needs the "tag" of the terminal')
        return pb.PtyAttachRequest(sandbox_id=capsule_id, tag=tag)
    if kind != "start":
        raise _errors.bad_request('the first message must be {"type": "start", ...} or {"type": "connect"}')
    cmd, args, envs = first.get("cmd") or "/bin/bash", first.get("args") or [], first.get("envs") or {}
    cwd, user = first.get("cwd") or "", first.get("user") or ""
    if not (isinstance(cmd, str) and _strings(args) and isinstance(cwd, str) and isinstance(user, str)):
        raise _errors.bad_request('"cmd", "cwd" and "user" must be strings and "args" a list of strings')
    if not (isinstance(envs, dict) and all(isinstance(v, str) for v in envs.values())):
        raise _errors.bad_request('"envs" must map names to strings')
    cols, rows = _size(first.get("cols", 80)), _size(first.get("rows", 24))
    return pb.PtyAttachRequest(
        sandbox_id=capsule_id, tag=f"pty-{secrets.token_hex(4)}", cmd=cmd, args=args, envs=envs,
        cwd=cwd, user=user, cols=cols, rows=rows,
    )  # fmt: skip


def _size(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 10_000:
        raise _errors.bad_request('"cols" and "rows" must be integers from 1 to 10000')
    return value


async def _pty_output(
    sock: _Socket, events: AsyncIterator[pb.PtyAttachResponse], binary: bool, *, until_started: bool = False
) -> None:
    """Forward the terminal's events until it exits (or, `until_started`, until it has started); its
    output as binary frames, or as base64 in `output` messages."""
    async for response in events:
        value = response.event.value if response.event is not None else None
        if isinstance(value, pb.PtyAttachResponse.Started):
            await sock.send({"type": "started", "tag": value.tag, "pid": value.pid})
            if until_started:
                return
        elif isinstance(value, pb.PtyAttachResponse.Output):
            if binary:
                await sock.send_bytes(value.data)
            else:
                await sock.send({"type": "output", "data": base64.b64encode(value.data).decode("ascii")})
        elif isinstance(value, pb.PtyAttachResponse.Exited):
            await sock.send({"type": "exit", "exit_code": value.exit_code})
            return
    if until_started:
        raise _errors.ApiError(502, "agent_error", "the terminal ended before it started")


#: Marks the end of a PTY socket's input: what is queued before it is still applied.
_END: dict[str, Any] = {"type": "end-of-input"}
#: How long queued input may take to reach the agent after the client left.
PTY_DRAIN_S = 10.0


async def _pty_input(sock: _Socket, tag: str) -> None:
    """Client messages, applied in order. The queue is bounded and filled with `put`: when the agent is
    slower than the client, the socket is not read and TCP pushes back; nothing is dropped."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(PTY_QUEUE)

    async def apply() -> None:
        pending: dict[str, Any] | None = None
        while True:
            message = pending if pending is not None else await queue.get()
            pending = None
            if message is _END:
                return
            try:
                if message.get("type") == "input":
                    data, pending = _coalesce(queue, _input_bytes(message))
                    await sock.call(sock.agent.pty_send_input(_send_input(sock.capsule_id, tag, data)))
                else:
                    await _pty_control(sock, tag, message)
            except _errors.ApiError as exc:
                with contextlib.suppress(Exception):  # the client may be gone already
                    await sock.send(_error_message(exc, fatal=False))

    applier = asyncio.ensure_future(apply())
    draining = False
    try:
        while True:
            message = await sock.receive()
            if applier.done():
                applier.result()
                return
            await queue.put(message)
    except WebSocketDisconnect:
        # What the client sent before it left still applies (a resize, then a disconnect): drain it,
        # shielded, so that the other side of the session ending does not cut the drain short.
        draining = True
        await queue.put(_END)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(applier), PTY_DRAIN_S)
        raise
    finally:
        if not draining:
            applier.cancel()


def _send_input(capsule_id: str, tag: str, data: bytes) -> pb.PtySendInputRequest:
    return pb.PtySendInputRequest(sandbox_id=capsule_id, tag=tag, data=data)


def _input_bytes(message: dict[str, Any]) -> bytes:
    if isinstance(raw := message.get("raw"), bytes):  # a binary frame
        return raw
    data = message.get("data")
    try:
        return base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except binascii.Error:
        raise _errors.bad_request('"input" data must be base64') from None


def _coalesce(queue: asyncio.Queue[dict[str, Any]], data: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """`data` plus the queued `input`s right behind it; the first other message is handed back."""
    buffer = bytearray(data)
    while len(buffer) < PTY_COALESCE_BYTES and not queue.empty():
        message = queue.get_nowait()
        if message.get("type") != "input":
            return bytes(buffer), message
        try:
            buffer += _input_bytes(message)
        except _errors.ApiError:
            return bytes(buffer), message  # its error is reported in its turn
    return bytes(buffer), None


async def _pty_control(sock: _Socket, tag: str, message: dict[str, Any]) -> None:
    kind = message.get("type")
    if kind == "resize":
        cols, rows = _size(message.get("cols")), _size(message.get("rows"))
        resize = pb.PtyResizeRequest(sandbox_id=sock.capsule_id, tag=tag, cols=cols, rows=rows)
        await sock.call(sock.agent.pty_resize(resize))
    elif kind == "kill":
        await sock.call(sock.agent.pty_kill(pb.PtyKillRequest(sandbox_id=sock.capsule_id, tag=tag)))
    else:
        raise _errors.bad_request(f"unknown message type {kind!r}: send input, resize or kill")


# --- files/watch ------------------------------------------------------------------------------------


@router.websocket("/v1/capsules/{capsule_id}/files/watch")
async def watch(ws: WebSocket, capsule_id: str, path: str = "", recursive: str = "false") -> None:
    """Server `start` once the watch is in place, then `event{name, event_type}`, `ping`; an
    `error{code, data}` ends it. The client may send `stop`."""

    async def run(sock: _Socket) -> None:
        if not path:
            raise _errors.bad_request("the query parameter 'path' is required")
        deep = recursive.lower() in ("true", "1", "yes")
        request = pb.WatchDirRequest(sandbox_id=sock.capsule_id, path=path, recursive=deep)
        async with contextlib.aclosing(sock.events(sock.agent.watch_dir(request))) as events:
            await first_done(_watch_events(sock, events), _until_stop(sock), _pinger(sock))

    await _serve(ws, capsule_id, run)


async def _watch_events(sock: _Socket, events: AsyncIterator[pb.WatchDirResponse]) -> None:
    async for response in events:
        value = response.event.value if response.event is not None else None
        if isinstance(value, pb.WatchDirResponse.WatchStarted):
            await sock.send({"type": "start"})
        elif isinstance(value, pb.FileEvent) and value.type in _FILE_EVENTS:
            await sock.send({"type": "event", "name": value.name, "event_type": _FILE_EVENTS[value.type]})


async def _until_stop(sock: _Socket) -> None:
    while (await sock.receive()).get("type") != "stop":
        pass
