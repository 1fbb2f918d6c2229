"""Jupyter Server from the execution server's side: its REST API for kernels, and one kernel's WebSocket
channels (Jupyter's JSON message protocol), with the messages of each request routed to whoever sent it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

log = logging.getLogger("wrenn.interpreter")

#: A message the channel makes up for every request still waiting when the kernel's socket closes.
LOST = "_wrenn_lost"
#: Charts and images travel on iopub: no message is too large.
MAX_MESSAGE_BYTES = 1 << 30


class JupyterError(RuntimeError):
    pass


class Jupyter:
    """Jupyter Server's REST API (no token: the guest's own server, on loopback)."""

    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if (await self.http.get(f"{self.base_url}/api/status", timeout=5)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise JupyterError(
                    f"Jupyter Server did not answer at {self.base_url} within {timeout_s:.0f} s"
                )
            await asyncio.sleep(0.1)

    async def kernel_names(self) -> set[str]:
        r = await self._call("GET", "/api/kernelspecs")
        return set(r.json().get("kernelspecs", {}))

    async def start_kernel(self, name: str) -> str:
        r = await self._call("POST", "/api/kernels", json={"name": name})
        return str(r.json()["id"])

    async def restart_kernel(self, kernel_id: str) -> None:
        await self._call("POST", f"/api/kernels/{kernel_id}/restart", seconds=120)

    async def interrupt_kernel(self, kernel_id: str) -> None:
        await self._call("POST", f"/api/kernels/{kernel_id}/interrupt")

    async def delete_kernel(self, kernel_id: str) -> None:
        await self._call("DELETE", f"/api/kernels/{kernel_id}", missing_ok=True)

    def channels_url(self, kernel_id: str, session_id: str) -> str:
        ws = "ws" + self.base_url.removeprefix("http")
        return f"{ws}/api/kernels/{kernel_id}/channels?session_id={session_id}"

    async def _call(
        self, method: str, path: str, *, json: Any = None, seconds: float = 60, missing_ok: bool = False
    ) -> httpx.Response:
        try:
            r = await self.http.request(method, f"{self.base_url}{path}", json=json, timeout=seconds)
        except httpx.HTTPError as exc:
            raise JupyterError(f"Jupyter Server: {method} {path}: {exc}") from exc
        if r.status_code == 404 and missing_ok:
            return r
        if not r.is_success:
            raise JupyterError(f"Jupyter Server: {method} {path} answered {r.status_code}: {r.text[:500]}")
        return r


class Request:
    """The messages (iopub and shell) whose parent is one execute_request, in arrival order."""

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()


class KernelChannel:
    """One WebSocket to a kernel through Jupyter Server. A background task reads it and hands each message
    to the request it answers; when the socket closes, every waiting request gets a LOST message."""

    def __init__(self, jupyter: Jupyter, kernel_id: str) -> None:
        self.jupyter = jupyter
        self.kernel_id = kernel_id
        self.session_id = uuid.uuid4().hex
        self._requests: dict[str, Request] = {}
        self._stack: AsyncExitStack | None = None
        self._ws: AsyncWebSocketSession | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def open(self) -> None:
        stack = AsyncExitStack()
        url = self.jupyter.channels_url(self.kernel_id, self.session_id)
        try:
            self._ws = await stack.enter_async_context(
                aconnect_ws(
                    url,
                    self.jupyter.http,
                    max_message_size_bytes=MAX_MESSAGE_BYTES,
                    queue_size=4096,
                    keepalive_ping_interval_seconds=None,  # loopback; and a paused guest must not time out
                )
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._reader = asyncio.create_task(self._read(), name=f"kernel-{self.kernel_id}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._stack is not None:
            with contextlib.suppress(Exception):
                await self._stack.aclose()
        self._stack = self._ws = self._reader = None
        self._fail_all("the kernel's connection was closed")

    async def reopen(self) -> None:
        await self.close()
        await self.open()

    async def execute(self, code: str, *, silent: bool) -> Request:
        """Send an execute_request; its messages arrive on the returned request's queue."""
        if self._ws is None or not self.connected:
            await self.reopen()
        assert self._ws is not None
        msg_id = uuid.uuid4().hex
        request = Request(msg_id)
        self._requests[msg_id] = request
        message = {
            "header": {
                "msg_id": msg_id,
                "username": "wrenn",
                "session": self.session_id,
                "msg_type": "execute_request",
                "version": "5.3",
                "date": datetime.now(UTC).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "buffers": [],
            "content": {
                "code": code,
                "silent": silent,
                "store_history": not silent,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        }
        try:
            await self._ws.send_text(json.dumps(message))
        except Exception as exc:
            self._requests.pop(msg_id, None)
            raise JupyterError(f"cannot send to kernel {self.kernel_id}: {exc}") from exc
        return request

    def forget(self, request: Request) -> None:
        self._requests.pop(request.msg_id, None)

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "the kernel's connection closed"
        try:
            while True:
                text = await self._ws.receive_text()
                self._dispatch(json.loads(text))
        except asyncio.CancelledError:
            raise
        except WebSocketDisconnect as exc:
            reason = f"the kernel's connection closed ({exc.code})"
        except Exception as exc:  # noqa: BLE001 (every waiting request is told why)
            reason = f"the kernel's connection failed: {exc}"
            log.warning("kernel channel failed", extra={"kernel": self.kernel_id, "error": str(exc)})
        self._fail_all(reason)

    def _dispatch(self, message: dict[str, Any]) -> None:
        msg_type = message.get("msg_type") or message.get("header", {}).get("msg_type")
        content = message.get("content") or {}
        if msg_type == "status" and content.get("execution_state") in ("restarting", "dead"):
            for request in list(self._requests.values()):
                request.messages.put_nowait(message)
            return
        parent = (message.get("parent_header") or {}).get("msg_id")
        waiting = self._requests.get(parent) if parent else None
        if waiting is not None:
            waiting.messages.put_nowait(message)

    def _fail_all(self, reason: str) -> None:
        for request in list(self._requests.values()):
            request.messages.put_nowait({"msg_type": LOST, "content": {"reason": reason}})
        self._requests.clear()
