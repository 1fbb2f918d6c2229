"""The I/O: drive `_api` operations with an `httpx.Client` or an `httpx.AsyncClient`, and open the
API's WebSockets (httpx-ws) as JSON message channels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar, cast

import httpx
import httpx_ws

from . import _config
from ._api import Call, Op, Sleep, decode_ws_text
from ._exceptions import aerror_from_response, error_from_body, error_from_response

T = TypeVar("T")


def run_sync(client: httpx.Client, op: Op[T] | Call[T]) -> T:
    """Run an operation (or a single call) on a sync client."""
    gen = iter(op)
    try:
        step = next(gen)
        while True:
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = gen.send(None)
            else:
                try:
                    response = client.request(**step.request_kwargs())
                except Exception as exc:  # noqa: BLE001 - thrown into the operation, so its finally blocks run
                    step = gen.throw(exc)
                    continue
                step = gen.send(response)
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        gen.close()


async def run_async(client: httpx.AsyncClient, op: Op[T] | Call[T]) -> T:
    """Run an operation (or a single call) on an async client."""
    gen = iter(op)
    try:
        step = next(gen)
        while True:
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = gen.send(None)
            else:
                try:
                    response = await client.request(**step.request_kwargs())
                except Exception as exc:  # noqa: BLE001 - as in run_sync
                    step = gen.throw(exc)
                    continue
                step = gen.send(response)
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        gen.close()


def stream_body_sync(client: httpx.Client, call: Call[Any]) -> Iterator[bytes]:
    """Send `call` and yield the body's chunks as they arrive (errors are raised before the first)."""
    kwargs = call.request_kwargs()
    request = client.build_request(
        kwargs.pop("method"), kwargs.pop("url"), **{k: v for k, v in kwargs.items() if k != "timeout"}
    )
    if call.timeout is not None:
        request.extensions["timeout"] = httpx.Timeout(call.timeout).as_dict()
    response = client.send(request, stream=True)
    try:
        if response.status_code >= 400:
            raise error_from_response(response)
        yield from response.iter_bytes()
    finally:
        response.close()


async def stream_body_async(client: httpx.AsyncClient, call: Call[Any]) -> AsyncIterator[bytes]:
    kwargs = call.request_kwargs()
    request = client.build_request(
        kwargs.pop("method"), kwargs.pop("url"), **{k: v for k, v in kwargs.items() if k != "timeout"}
    )
    if call.timeout is not None:
        request.extensions["timeout"] = httpx.Timeout(call.timeout).as_dict()
    response = await client.send(request, stream=True)
    try:
        if response.status_code >= 400:
            raise await aerror_from_response(response)
        async for chunk in response.aiter_bytes():
            yield chunk
    finally:
        await response.aclose()


# --- WebSockets -----------------------------------------------------------------------------------


def _upgrade_error(exc: httpx_ws.WebSocketUpgradeError) -> Exception:
    """A refused upgrade: the route's error JSON when the server sent one, else by status."""
    response = exc.response
    if response.status_code == 101:
        return error_from_body(500, None, "WebSocket upgrade failed")
    return error_from_response(response)


class SyncChannel:
    """A WebSocket carrying JSON text messages (sync)."""

    def __init__(self, ws: httpx_ws.WebSocketSession) -> None:
        self._ws = ws

    def send(self, message: dict[str, Any]) -> None:
        self._ws.send_text(json.dumps(message))

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None once the server has closed the connection."""
        try:
            return decode_ws_text(self._ws.receive_text(timeout))
        except httpx_ws.WebSocketDisconnect:
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()


class AsyncChannel:
    """A WebSocket carrying JSON text messages (async)."""

    def __init__(self, ws: httpx_ws.AsyncWebSocketSession) -> None:
        self._ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self._ws.send_text(json.dumps(message))

    async def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            return decode_ws_text(await self._ws.receive_text(timeout))
        except httpx_ws.WebSocketDisconnect:
            return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()


@contextlib.contextmanager
def open_channel(client: httpx.Client, path: str) -> Iterator[SyncChannel]:
    """Open the API WebSocket at `path` (relative to the base URL; credentials from the client)."""
    ws: httpx_ws.WebSocketSession
    try:
        with httpx_ws.connect_ws(path, client, max_message_size_bytes=_config.WS_MAX_MESSAGE_BYTES) as ws:
            yield SyncChannel(ws)
    except httpx_ws.WebSocketUpgradeError as exc:
        raise _upgrade_error(exc) from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (nested) groups, or None if there are several."""
    if len(group.exceptions) != 1:
        return None
    inner = group.exceptions[0]
    return _single(inner) if isinstance(inner, BaseExceptionGroup) else inner


@contextlib.asynccontextmanager
async def aopen_channel(client: httpx.AsyncClient, path: str) -> AsyncIterator[AsyncChannel]:
    """`open_channel` for an async client. httpx-ws runs the socket in an anyio task group, which wraps
    what the body raises in an ExceptionGroup; a lone exception is unwrapped so callers see it as is.
    Enter and leave it in one task."""
    ws: httpx_ws.AsyncWebSocketSession
    try:
        async with httpx_ws.aconnect_ws(
            path, client, max_message_size_bytes=_config.WS_MAX_MESSAGE_BYTES
        ) as ws:
            yield AsyncChannel(ws)
    except httpx_ws.WebSocketUpgradeError as exc:
        raise _upgrade_error(exc) from None
    except BaseExceptionGroup as group:
        inner = _single(group)
        if inner is None:
            raise
        if isinstance(inner, httpx_ws.WebSocketUpgradeError):
            raise _upgrade_error(inner) from None
        raise inner from None
