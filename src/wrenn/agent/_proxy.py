"""The agent's traffic listener: `/proxy/{sandbox_id}/{port}/{path}`, HTTP and WebSocket traffic to a
port inside a sandbox, reached at its host IP. The control plane forwards `{port}-{id}.{domain}` here.
Proxied traffic is activity: it resumes a paused sandbox and keeps the idle timer from firing while a
request or socket is open.

This app is served on a listener of its own, apart from the control API: it answers nothing but
`/proxy/...` (404 otherwise), so no path a user sends through the traffic proxy can reach an RPC, however
it is spelled. Paths with dot segments, empty segments, backslashes or encoded slashes are refused before
anything is looked up.

As E2B's proxy does, a sandbox that is not here is answered 502 "The sandbox was not found" (a port where
nothing listens, 502 "The sandbox is running but port is not open"), and when a sandbox is destroyed (or
its VM dies) every request and socket open to it is cut at once rather than left hanging on a guest that
will never answer: E2B's SDK then asks `/health`, hears "not found" and raises its "sandbox was killed"
error. Redirects naming the guest's own address are rewritten to the public URL (`_redirects`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from collections.abc import AsyncIterator

import httpx

from wrenn._shared.asgiproxy import (
    Message,
    Receive,
    Scope,
    Send,
    Unreachable,
    first_done,
    forward,
    path_problem,
    send_error,
    send_sandbox_not_found,
)

from ._errors import SandboxError
from ._manager import SandboxManager
from ._redirects import public_location
from ._sandbox import SANDBOX_ID, Sandbox
from .network import GUEST_IP

log = logging.getLogger("wrenn.agent.proxy")

PREFIX = "/proxy/"
ENVD_PORT = 49983
#: envd routes that belong to the host agent alone (they set the access token, or freeze connections).
HOST_ONLY_ENVD_PATHS = frozenset({"/init", "/snapshot/prepare"})
#: While a proxied request or socket is open, the sandbox is marked active this often.
TOUCH_INTERVAL_S = 5.0
_STATUS = {
    "failed_precondition": (409, "invalid_state"),
    "invalid_argument": (400, "invalid_request"),
    "unavailable": (503, "unavailable"),
    "resource_exhausted": (503, "resource_exhausted"),
    "data_loss": (500, "snapshot_unusable"),
}


@contextlib.asynccontextmanager
async def _active(sandbox: Sandbox) -> AsyncIterator[None]:
    async def tick() -> None:
        while True:
            await asyncio.sleep(TOUCH_INTERVAL_S)
            sandbox.touch()

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        sandbox.touch()


class ProxyApp:
    """The ASGI app behind `/proxy/`; `client` is the agent's one upstream client."""

    def __init__(self, manager: SandboxManager, client: httpx.AsyncClient) -> None:
        self.manager = manager
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return  # lifespan: nothing to set up
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if not raw.startswith(PREFIX):
            await send_error(scope, send, 404, "not_found", "this listener serves /proxy/{id}/{port}/ only")
            return
        if problem := path_problem(raw):
            await send_error(scope, send, 400, "invalid_request", problem)
            return
        parts = raw[len(PREFIX) :].split("/", 2)
        if len(parts) < 2 or not SANDBOX_ID.match(parts[0]):
            await send_error(scope, send, 404, "not_found", "expected /proxy/{sandbox_id}/{port}/{path}")
            return
        sandbox_id, port_text = parts[0], parts[1]
        port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
        if not 0 < port < 65536:
            await send_error(scope, send, 400, "invalid_request", f"port must be 1-65535, not {port_text!r}")
            return
        if port == ENVD_PORT and _envd_path(scope["path"]) in HOST_ONLY_ENVD_PATHS:
            await send_error(scope, send, 403, "forbidden", "this envd route is reserved for the host agent")
            return
        try:
            sandbox = await self.manager.ensure_running(sandbox_id)
        except SandboxError as exc:
            if exc.code == "not_found":
                await send_sandbox_not_found(scope, send, sandbox_id, exc.message)
                return
            status, code = _STATUS.get(exc.code, (500, "internal"))
            await send_error(scope, send, status, code, exc.message)
            return
        sandbox.touch()
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"http://{sandbox.host_ip}:{port}/{parts[2] if len(parts) > 2 else ''}"
        url += f"?{query}" if query else ""
        downstream = _Downstream(scope, send, sandbox, port)
        async with _active(sandbox):
            with sandbox.traffic() as cut:
                try:
                    await first_done(forward(scope, receive, downstream.send, self.client, url), cut.wait())
                except Unreachable as exc:
                    extra = {"sandbox": sandbox_id, "port": port, "error": str(exc)}
                    log.info("port unreachable", extra=extra)
                    message = f"nothing listens on port {port} in capsule {sandbox_id}"
                    e2b = {"sandboxId": sandbox_id, "port": port, "code": 502,
                           "message": "The sandbox is running but port is not open"}  # fmt: skip
                    await send_error(scope, send, 502, "port_unreachable", message, e2b)  # E2B's too
                    return
        if cut.is_set():
            await downstream.cut(sandbox_id)


class _Downstream:
    """The client's side of one proxied exchange: what was sent yet, and redirects made public."""

    def __init__(self, scope: Scope, send: Send, sandbox: Sandbox, port: int) -> None:
        self.scope = scope
        self._send = send
        self.started = False
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self._own = (GUEST_IP, sandbox.host_ip)
        self._port, self._sandbox_id = port, sandbox.id
        self._public_host = headers.get(b"host", "")
        self._public_scheme = headers.get(b"x-forwarded-proto", "http").split(",")[0].strip().lower()

    async def send(self, message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept", "websocket.http.response.start"):
            self.started = True
        if message["type"] == "http.response.start":
            message = {**message, "headers": [self._header(k, v) for k, v in message["headers"]]}
        await self._send(message)

    def _header(self, name: bytes, value: bytes) -> tuple[bytes, bytes]:
        if name.lower() != b"location":
            return name, value
        public = public_location(
            value.decode("latin-1"), own_addresses=self._own, port=self._port, sandbox_id=self._sandbox_id,
            public_host=self._public_host, public_scheme=self._public_scheme,
        )  # fmt: skip
        return (name, public.encode("latin-1")) if public is not None else (name, value)

    async def cut(self, sandbox_id: str) -> None:
        """The sandbox left while this exchange was open. Not answered yet: E2B's not-found. An HTTP
        response under way is broken off (returning unfinished makes the server drop the connection,
        which is how a client learns the stream did not end by itself); a WebSocket is closed."""
        log.info("traffic cut: the sandbox is gone", extra={"sandbox": sandbox_id})
        if not self.started:
            await send_sandbox_not_found(self.scope, self._send, sandbox_id, f"sandbox {sandbox_id} is gone")
        elif self.scope["type"] == "websocket":
            await self._send({"type": "websocket.close", "code": 1011, "reason": "the sandbox is gone"})


def _envd_path(path: str) -> str:
    """The decoded path after `/proxy/{id}/{port}`, as envd's router would see it (`/init/` -> `/init`)."""
    rest = path[len(PREFIX) :].split("/", 2)
    return posixpath.normpath("/" + (rest[2].lstrip("/") if len(rest) > 2 else "")).rstrip("/")
