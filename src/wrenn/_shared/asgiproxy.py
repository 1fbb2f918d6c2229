"""A small reverse proxy in raw ASGI: one HTTP request or one WebSocket, forwarded through an
`httpx.AsyncClient` to an upstream URL and streamed both ways (no body is ever held whole).

Shared by the host agent (to a port in a guest) and the control plane (to a host agent). A dial that
fails after the retries raises `Unreachable` before anything was sent, so the caller picks the answer.
"""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import json
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

import httpcore
import httpx
import wsproto.events
import wsproto.utilities
from httpx_ws import AsyncWebSocketSession, HTTPXWSException, WebSocketDisconnect

from . import dial

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("wrenn.proxy")

#: Pauses before the 2nd and 3rd dial of an upstream that refuses the connection (the seed's backoff).
DIAL_BACKOFF_S = (0.1, 0.2)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade"}
)  # fmt: skip
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)


#: How many layers of percent-encoding a path may carry before it is refused as an evasion attempt.
_MAX_DECODES = 3


def path_problem(raw_path: str) -> str | None:
    """Why a request path must not be forwarded, or None. Refused: dot segments (`.`, `..`), empty
    segments (`//`), backslashes and NUL, also when percent-encoded (once or several times over), and
    encoded slashes (`%2f`), which a server behind the proxy could decode into a segment of its own.
    A forwarded path is thus the path the caller meant, never a way out of `/proxy/{id}/{port}/`."""
    if not raw_path.startswith("/"):
        return "the path must start with /"
    current = raw_path
    for _ in range(_MAX_DECODES + 1):
        if "\\" in current or "\0" in current:
            return "the path holds a backslash or a NUL character"
        segments = current.split("/")[1:]
        if any(s in (".", "..") for s in segments):
            return "the path holds a . or .. segment"
        if any(s == "" for s in segments[:-1]):
            return "the path holds an empty segment (//)"
        decoded = unquote(current, errors="surrogateescape") if "%" in current else current
        if decoded == current:
            return None
        if decoded.count("/") != current.count("/"):
            return "the path holds an encoded slash"
        current = decoded
    return "the path is percent-encoded too many times over"


class Unreachable(Exception):
    """Nothing accepted a connection at the upstream URL; nothing was sent to the client yet."""


class _ClientGone(Exception):
    pass


def new_client(
    verify: ssl.SSLContext | bool = True,
    keepalive: bool = True,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """A client fit for forwarding: only the dial has a timeout (streams and sockets may idle), no pool
    limit (each WebSocket holds a connection), no redirects followed and no cookies kept. Without
    `keepalive` every request dials anew: for upstreams whose address may name another machine tomorrow
    (a guest address freed by a pause and handed to the next sandbox). `network_backend` opens its
    connections (see `dial.transport`)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64 if keepalive else 0)
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(None, connect=5.0),
        limits=limits,
        transport=dial.transport(network_backend, verify, limits) if network_backend else None,
        cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
        follow_redirects=False,
        trust_env=False,
    )


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer `{"error": {"code", "message"}}` (and `extra`'s keys) with `status` and `headers`; a
    WebSocket is refused with it."""
    body = json.dumps({"error": {"code": code, "message": message}, **(extra or {})}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_sandbox_not_found(scope: Scope, send: Send, sandbox_id: str, message: str) -> None:
    """The answer for traffic to a sandbox that is not there (destroyed, timed out, never was): E2B's
    proxy's, 502 `{"sandboxId", "message": "The sandbox was not found", "code": 502}`, beside our own
    `error`. E2B's SDK reads that status and "was not found" as "the sandbox is not running": a request,
    or the health probe it sends after a stream broke off, then raises its `SandboxNotRunningException`
    ("the sandbox was killed ...") rather than a timeout or a generic error."""
    extra = {"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}
    await send_error(scope, send, 502, "not_found", message, extra)


Headers = list[tuple[bytes, bytes]]


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    client: httpx.AsyncClient,
    url: str,
    *,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    drop_headers: frozenset[str] = frozenset(),
) -> None:
    """Forward an `http` or `websocket` scope to `url` (http or https, query included). `drop_headers`
    (lower case) never leave; `extra_headers` are added (the hop's own credentials)."""
    headers = [*_upstream_headers(scope, drop_headers), *extra_headers]
    if scope["type"] == "websocket":
        await forward_websocket(scope, receive, send, client, url, headers)
    else:
        await forward_http(scope, receive, send, client, url, headers)


def _drop_set(headers: list[tuple[bytes, bytes]]) -> frozenset[str]:
    named = {
        t.strip().lower()
        for k, v in headers
        if k.lower() == b"connection"
        for t in v.decode("latin-1").split(",")
    }
    return HOP_BY_HOP | named


def _upstream_headers(scope: Scope, also_drop: frozenset[str] = frozenset()) -> Headers:
    """The client's headers without hop-by-hop ones (nor `also_drop`), plus X-Forwarded-For/Host/Proto
    (kept if set)."""
    raw: list[tuple[bytes, bytes]] = list(scope["headers"])
    drop = _drop_set(raw) | also_drop | (_WS_HANDSHAKE if scope["type"] == "websocket" else frozenset())
    out = [
        (k, v) for k, v in raw if k.decode("latin-1").lower() not in drop and k.lower() != b"x-forwarded-for"
    ]
    chain = [v.decode("latin-1") for k, v in raw if k.lower() == b"x-forwarded-for"]
    peer = str(scope["client"][0]) if scope.get("client") else ""
    if peer and (not chain or chain[-1].rsplit(",", 1)[-1].strip() != peer):  # uvicorn's proxy_headers
        chain.append(peer)  # may already have made the last hop the client
    if chain:
        out.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
    names = {k.lower() for k, _ in out}
    host = next((v for k, v in raw if k.lower() == b"host"), None)
    if host is not None and b"x-forwarded-host" not in names:
        out.append((b"x-forwarded-host", host))
    if b"x-forwarded-proto" not in names:
        scheme = str(scope.get("scheme") or "http")
        out.append((b"x-forwarded-proto", {"ws": b"http", "wss": b"https"}.get(scheme, scheme.encode())))
    return out


def _downstream_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    raw = list(response.headers.raw)
    drop = _drop_set(raw)
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in drop]


async def _dial(client: httpx.AsyncClient, build: Callable[[], httpx.Request]) -> httpx.Response:
    for delay in (*DIAL_BACKOFF_S, None):
        try:
            return await client.send(build(), stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if delay is None:
                raise Unreachable(str(exc) or type(exc).__name__) from None
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if body := message.get("body", b""):
            yield body
        if not message.get("more_body", False):
            return


async def first_done(*coros: Coroutine[Any, Any, object]) -> None:
    """Run the coroutines until one ends, cancel the others, raise the first one's error (if any)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    next(iter(done)).result()


async def forward_http(
    scope: Scope, receive: Receive, send: Send, client: httpx.AsyncClient, url: str, headers: Headers
) -> None:
    """One HTTP request: the body streams up, the response (status, headers, body) streams down."""
    has_body = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
    content: bytes | AsyncIterator[bytes] = _request_body(receive) if has_body else b""
    try:
        response = await _dial(
            client, lambda: httpx.Request(scope["method"], url, headers=headers, content=content)
        )
    except _ClientGone:
        return
    except httpx.HTTPError as exc:
        await _bad_gateway(scope, send, url, exc)
        return

    async def pump() -> None:
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": _downstream_headers(response)})  # fmt: skip
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await first_done(pump(), client_gone())
    except httpx.HTTPError as exc:  # the response is under way: all that is left is to cut it short
        log.warning("upstream failed mid-response", extra={"url": url, "error": repr(exc)})
    finally:
        await response.aclose()


async def forward_websocket(
    scope: Scope, receive: Receive, send: Send, client: httpx.AsyncClient, url: str, headers: Headers
) -> None:
    """One WebSocket: the upstream handshake first (its refusal is passed on as the HTTP answer), then
    text and binary messages both ways until either side closes; the close code is passed on."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = [
        *headers, (b"connection", b"upgrade"), (b"upgrade", b"websocket"),
        (b"sec-websocket-version", b"13"), (b"sec-websocket-key", base64.b64encode(secrets.token_bytes(16))),
    ]  # fmt: skip
    if scope.get("subprotocols"):
        headers.append((b"sec-websocket-protocol", ", ".join(scope["subprotocols"]).encode()))
    try:
        response = await _dial(client, lambda: httpx.Request("GET", url, headers=headers))
    except httpx.HTTPError as exc:
        await _bad_gateway(scope, send, url, exc)
        return
    try:
        if response.status_code != 101:
            await _refuse(scope, send, response)
            return
        async with AsyncWebSocketSession(
            response.extensions["network_stream"], response=response
        ) as upstream:
            try:
                await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
                await first_done(_up(receive, upstream), _down(send, upstream))
            except OSError:  # the client went away
                pass
    finally:
        await response.aclose()


async def _bad_gateway(scope: Scope, send: Send, url: str, exc: Exception) -> None:
    """502: the upstream failed before it answered. What failed is logged, never told to the client (it
    names internal addresses and libraries)."""
    log.warning("upstream failed", extra={"url": url, "error": repr(exc)})
    await send_error(scope, send, 502, "bad_gateway", "the upstream failed before it answered")


async def _refuse(scope: Scope, send: Send, response: httpx.Response) -> None:
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.http.response.start", "status": response.status_code,
                "headers": _downstream_headers(response)})  # fmt: skip
    async for chunk in response.aiter_raw():
        await send({"type": "websocket.http.response.body", "body": chunk, "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"", "more_body": False})


def _close_code(code: int) -> int:
    """A close code that may be sent on the wire (1005, 1006 and 1015 are only ever reported)."""
    return code if 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015) else 1000


async def _up(receive: Receive, upstream: AsyncWebSocketSession) -> None:
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(_close_code(message.get("code", 1000)), message.get("reason") or None)
                return
            if message.get("text") is not None:
                await upstream.send_text(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send_bytes(message["bytes"])
    except (HTTPXWSException, wsproto.utilities.LocalProtocolError):
        await asyncio.sleep(5)  # the upstream is closing: give `_down` the time to pass its close on


async def _down(send: Send, upstream: AsyncWebSocketSession) -> None:
    while True:
        try:
            event = await upstream.receive()
        except WebSocketDisconnect as exc:
            await send({"type": "websocket.close", "code": _close_code(exc.code), "reason": exc.reason})
            return
        except HTTPXWSException:
            await send({"type": "websocket.close", "code": 1011, "reason": "the upstream connection failed"})
            return
        if isinstance(event, wsproto.events.TextMessage):
            await send({"type": "websocket.send", "text": event.data})
        elif isinstance(event, wsproto.events.BytesMessage):
            await send({"type": "websocket.send", "bytes": bytes(event.data)})
