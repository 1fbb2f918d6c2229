"""wrenn._shared.asgiproxy between real servers on loopback: a client, a uvicorn serving a tiny app that forwards
with the module, and an upstream uvicorn (or a bare socket). No part is simulated."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, connect_ws

from wrenn._shared import asgiproxy
from wrenn._shared.asgiproxy import Receive, Scope, Send

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pattern(n: int) -> Iterator[bytes]:
    """`n` deterministic bytes in 64 KiB chunks."""
    block = bytes(range(256)) * 256
    while n > 0:
        yield block[: min(n, len(block))]
        n -= len(block)


@dataclass
class Upstream:
    """The upstream app and what it saw; `gate` and `got_first` make streaming observable."""

    gate: threading.Event = field(default_factory=threading.Event)
    got_first: threading.Event = field(default_factory=threading.Event)
    close_codes: list[int] = field(default_factory=list)
    endless_ended: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        path = scope["path"]
        if path == "/stream":  # first chunk, then nothing until the client has seen it
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            seen = await asyncio.to_thread(self.gate.wait, 10)
            await send({"type": "http.response.body", "body": b"second" if seen else b"timeout"})
        elif path == "/endless":  # chunks until the connection goes away
            await send({"type": "http.response.start", "status": 200, "headers": []})

            async def gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass

            watcher = asyncio.ensure_future(gone())
            while not watcher.done():
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.05)
            self.endless_ended.set()
        elif path == "/upload":  # hash the body; say when the first chunk arrived
            digest, size = hashlib.sha256(), 0
            while True:
                message = await receive()
                digest.update(message.get("body", b""))
                size += len(message.get("body", b""))
                if size:
                    self.got_first.set()
                if not message.get("more_body"):
                    break
            await _json(send, 200, {"sha256": digest.hexdigest(), "size": size})
        elif path == "/big":
            n = int(scope["query_string"].decode().removeprefix("n="))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(n).encode())]})  # fmt: skip
            for chunk in _pattern(n):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/headers":
            seen = [[k.decode(), v.decode()] for k, v in scope["headers"]]
            body = json.dumps({"headers": seen, "method": scope["method"]}).encode()
            await send({"type": "http.response.start", "status": 201, "headers": [
                (b"content-type", b"application/json"), (b"set-cookie", b"a=1; Path=/"),
                (b"set-cookie", b"b=2; Path=/"), (b"keep-alive", b"timeout=5"),
                (b"connection", b"x-hop-out"), (b"x-hop-out", b"1"), (b"x-kept", b"yes"),
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
        else:
            await _json(send, 404, {"path": path})

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        if scope["path"] == "/ws-refuse":
            await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no sockets here"})
            return
        offered = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": "chat" if "chat" in offered else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.close_codes.append(message.get("code", 0))
                return
            if message.get("text", "").startswith("close:"):
                await send({"type": "websocket.close", "code": int(message["text"][6:]), "reason": "bye"})
                return
            await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})


async def _json(send: Send, status: int, data: object) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


def proxy_app(client: httpx.AsyncClient) -> asgiproxy.ASGIApp:
    """Forwards `/to/{port}/{rest}` to `http://127.0.0.1:{port}/{rest}`, as the agent and control plane do."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the client lives as long as the server
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        _, _, port, rest = scope["path"].split("/", 3)
        query = scope["query_string"].decode()
        url = f"http://127.0.0.1:{port}/{rest}" + (f"?{query}" if query else "")
        try:
            await asgiproxy.forward(scope, receive, send, client, url)
        except asgiproxy.Unreachable:
            await asgiproxy.send_error(
                scope, send, 502, "port_unreachable", f"nothing listens on port {port}"
            )

    return app


def _serve(app: Any, lifespan: str = "off") -> tuple[uvicorn.Server, int]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan=lifespan, proxy_headers=False
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return server, port


@dataclass
class Setup:
    upstream: Upstream
    upstream_port: int
    proxy: str

    def url(self, path: str, port: int | None = None) -> str:
        return f"{self.proxy}/to/{port or self.upstream_port}{path}"


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    upstream = Upstream()
    up_server, up_port = _serve(upstream)
    proxy_server, proxy_port = _serve(proxy_app(asgiproxy.new_client()), lifespan="on")
    yield Setup(upstream, up_port, f"http://127.0.0.1:{proxy_port}")
    for server in (proxy_server, up_server):
        server.should_exit = True


def _ws_handshake(client: httpx.Client, url: str) -> httpx.Response:
    """A WebSocket handshake that is expected to be refused: the HTTP answer, body read."""
    headers = {"connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
               "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    return client.get(url, headers=headers)


def test_response_streams_before_it_ends(setup: Setup) -> None:
    setup.upstream.gate.clear()
    with httpx.Client(timeout=10) as client, client.stream("GET", setup.url("/stream")) as r:
        chunks = r.iter_raw()
        assert next(chunks) == b"first"  # a buffering proxy would wait for the end, which waits for us
        setup.upstream.gate.set()
        assert b"".join(chunks) == b"second"


def test_a_client_that_leaves_ends_the_upstream_request(setup: Setup) -> None:
    setup.upstream.endless_ended.clear()
    with httpx.Client(timeout=10) as client, client.stream("GET", setup.url("/endless")) as r:
        assert next(r.iter_raw()).startswith(b"tick")
    assert setup.upstream.endless_ended.wait(5)  # the proxy hung up on the upstream too


def test_request_body_streams_and_large_bodies_pass_both_ways(setup: Setup) -> None:
    setup.upstream.got_first.clear()
    size, digest, waited = 24 * MiB, hashlib.sha256(), []

    def body() -> Iterator[bytes]:
        for i, chunk in enumerate(_pattern(size)):
            if i == 1:  # the upstream has the first chunk before the client sends the second
                waited.append(setup.upstream.got_first.wait(10))
            digest.update(chunk)
            yield chunk

    with httpx.Client(timeout=30) as client:
        r = client.post(setup.url("/upload"), content=body(), headers={"content-length": str(size)})
        assert r.status_code == 200, r.text
        assert waited == [True]
        assert r.json() == {"sha256": digest.hexdigest(), "size": size}

        chunked = client.post(setup.url("/upload"), content=iter([b"a" * 1000, b"b" * 1000]))
        assert chunked.json()["size"] == 2000  # a chunked upload (no Content-Length) too

        down = hashlib.sha256()
        with client.stream("GET", setup.url("/big?n=" + str(size))) as big:
            assert big.headers["content-length"] == str(size)
            for chunk in big.iter_bytes():
                down.update(chunk)
        assert down.hexdigest() == hashlib.sha256(b"".join(_pattern(size))).hexdigest()


def test_headers_hop_by_hop_forwarded_and_cookies(setup: Setup) -> None:
    with httpx.Client(timeout=10) as client:
        r = client.put(
            setup.url("/headers"),
            content=b"x",
            headers={
                "Host": "8000-cl-abc.example.test", "Connection": "keep-alive, X-Hop-In", "X-Hop-In": "1",
                "Keep-Alive": "300", "TE": "trailers", "Proxy-Authorization": "Basic eA==",
                "X-Custom": "kept", "X-Forwarded-For": "203.0.113.7",
            },
        )  # fmt: skip
    assert r.status_code == 201
    seen = dict(r.json()["headers"])
    assert r.json()["method"] == "PUT"
    for hop in ("x-hop-in", "keep-alive", "te", "proxy-authorization"):
        assert hop not in seen, hop
    assert seen["x-custom"] == "kept"
    assert seen["host"] == "8000-cl-abc.example.test"
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-host"] == "8000-cl-abc.example.test"
    assert seen["x-forwarded-proto"] == "http"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert r.headers["x-kept"] == "yes"
    assert "x-hop-out" not in r.headers and "keep-alive" not in r.headers


def test_websocket_text_binary_subprotocol_and_close_codes(setup: Setup) -> None:
    ws_url = setup.url("/ws")
    with httpx.Client(timeout=10) as client:
        with connect_ws(ws_url, client, subprotocols=["other", "chat"]) as ws:
            assert ws.subprotocol == "chat"
            ws.send_text("héllo")
            assert ws.receive_text() == "héllo"
            blob = bytes(range(256)) * 4096  # 1 MiB: more than one read of the upstream stream
            ws.send_bytes(blob)
            assert ws.receive_bytes() == blob
            ws.send_text("close:4001")
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert (closed.value.code, closed.value.reason) == (4001, "bye")

        setup.upstream.close_codes.clear()
        with connect_ws(ws_url, client) as ws:
            assert ws.subprotocol is None
            ws.send_text("ping")
            assert ws.receive_text() == "ping"
            ws.close(4002)
        deadline = time.monotonic() + 5
        while not setup.upstream.close_codes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert setup.upstream.close_codes == [4002]  # the client's close code reached the upstream

        with pytest.raises(WebSocketUpgradeError), connect_ws(setup.url("/ws-refuse"), client):
            pass
        refused = _ws_handshake(client, setup.url("/ws-refuse"))
        assert (refused.status_code, refused.text) == (403, "no sockets here")  # the refusal passes as is


def test_nothing_listening_is_502_port_unreachable(setup: Setup) -> None:
    dead = _free_port()
    with httpx.Client(timeout=10) as client:
        r = client.get(setup.url("/x", port=dead))
        assert r.status_code == 502
        assert r.json() == {
            "error": {"code": "port_unreachable", "message": f"nothing listens on port {dead}"}
        }
        refused = _ws_handshake(client, setup.url("/ws", port=dead))
        assert refused.status_code == 502
        assert refused.json()["error"]["code"] == "port_unreachable"


def test_dial_is_retried_until_the_port_listens(setup: Setup) -> None:
    """The port refuses the first dial and listens 150 ms later: a proxy without retries answers 502."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = sock.getsockname()[1]

    def listen_later() -> None:
        time.sleep(0.15)
        sock.listen()
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate")

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        with httpx.Client(timeout=10) as client:
            r = client.get(setup.url("/", port=port))
        assert (r.status_code, r.text) == (200, "late")
    finally:
        thread.join(5)
        sock.close()


@pytest.mark.parametrize(
    "path",
    ["/..", "/a/../b", "/%2e%2e/x", "/%2E%2e/x", "/%252e%252e/x", "/%25252e%25252e/x", "/a%2fb", "/a%2Fb",
     "/a%5cb", "/a\\b", "//x", "/a//b", "/./x", "/.%2e/x", "/%00", "/a\x00", "relative", "/%2525252e%2525252e"],
)  # fmt: skip
def test_paths_that_climb_are_refused(path: str) -> None:
    assert asgiproxy.path_problem(path) is not None


@pytest.mark.parametrize(
    "path",
    ["/", "/a/b/", "/a.b/..c/c..", "/%20x", "/%e2%82%ac", "/%ff", "/a%3Fb", "/.well-known/x", "/a/b.."],
)
def test_plain_paths_pass(path: str) -> None:
    assert asgiproxy.path_problem(path) is None
