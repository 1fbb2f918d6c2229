"""The traffic proxy end to end: a client talks to the control plane with `Host: {port}-{id}.wrenn.local`
(or the E2B SDK's headers); the control plane forwards to the real host agent's `/proxy/`, which reaches a
server running inside a real VM. Also: the control plane's mutual-TLS client for registered hosts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_ws import WebSocketDisconnect, connect_ws

from tests.conftest import free_port
from wrenn import Capsule
from wrenn._shared.asgiproxy import new_client
from wrenn.controlplane._agents import AgentPool
from wrenn.controlplane._ca import CertificateAuthority

MEMORY = 256
PORT = 8000
MiB = 1 << 20

#: The guest has python3 and its standard library only: files from /tmp/www, POST answers the hash of
#: its body, `/ws` is a WebSocket echo (text, binary, ping, close code) written by hand.
GUEST_SERVER = r"""
import base64, functools, hashlib, http.server, json, struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        left, digest = int(self.headers["Content-Length"]), hashlib.sha256()
        size = left
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        self.reply({"sha256": digest.hexdigest(), "size": size - left})

    def do_GET(self):
        if self.path == "/ws":
            return self.websocket()
        if self.path == "/whoami":
            return self.reply({k.lower(): v for k, v in self.headers.items()})
        return super().do_GET()

    def reply(self, data):
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def frame(self, first, payload):
        n = len(payload)
        head = bytes([first, n]) if n < 126 else (
            bytes([first, 126]) + struct.pack("!H", n) if n < 65536 else bytes([first, 127]) + struct.pack("!Q", n))
        self.wfile.write(head + payload)
        self.wfile.flush()

    def websocket(self):
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            b0, b1 = self.rfile.read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(self.rfile.read(n)))
            opcode = b0 & 0x0F
            if opcode == 0x8:  # close: answer with the same code
                self.frame(0x88, payload[:2])
                return
            if opcode == 0x9:  # ping -> pong
                self.frame(0x8A, payload)
                continue
            if payload == b"close-me":
                self.frame(0x88, struct.pack("!H", 4003) + b"done")
                return
            self.frame(b0, payload)  # text, binary or continuation: echoed as it came


handler = functools.partial(Handler, directory="/tmp/www")
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), handler).serve_forever()
"""


@pytest.fixture(scope="module")
def big_sha256(capsule: Capsule) -> str:
    """The hash of a 4 MiB random file the guest serves as /big.bin."""
    big = capsule.commands.run(
        "head -c 4194304 /dev/urandom > /tmp/www/big.bin && sha256sum /tmp/www/big.bin"
    )
    return big.stdout.split()[0]


@pytest.fixture(scope="module")
def capsule(wrenn_server: tuple[str, str]) -> Iterator[Capsule]:
    """One capsule running GUEST_SERVER on PORT."""
    base_url, api_key = wrenn_server
    with Capsule(memory_mb=MEMORY, wait=True, api_key=api_key, base_url=base_url) as c:
        c.files.write("/tmp/server.py", GUEST_SERVER)
        c.files.write("/tmp/www/hello.txt", "hello from the guest\n")
        c.commands.run("python3 /tmp/server.py", background=True, tag="proxy-test-server")
        ready = c.commands.run(
            "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))'"
            " 2>/dev/null && exit 0; sleep 0.2; done; exit 1",
            timeout=60,
        )
        assert ready.exit_code == 0, "the guest server did not start"
        yield c


@pytest.fixture(scope="module")
def client(wrenn_server: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=wrenn_server[0], timeout=60) as c:
        yield c


def _host(capsule_id: str, port: int = PORT) -> dict[str, str]:
    return {"Host": f"{port}-{capsule_id}.wrenn.local"}


@pytest.mark.vm
def test_http_get_post_and_large_bodies(capsule: Capsule, client: httpx.Client, big_sha256: str) -> None:
    r = client.get("/hello.txt", headers=_host(capsule.capsule_id))
    assert (r.status_code, r.text) == (200, "hello from the guest\n")

    seen = client.get("/whoami", headers=_host(capsule.capsule_id)).json()
    assert seen["host"] == f"{PORT}-{capsule.capsule_id}.wrenn.local"  # the guest sees the public name
    assert seen["x-forwarded-host"] == seen["host"] and seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"].startswith("127.0.0.1")

    size, digest = 8 * MiB, hashlib.sha256()

    def body() -> Iterator[bytes]:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            digest.update(block)
            yield block

    headers = {**_host(capsule.capsule_id), "Content-Length": str(size)}
    up = client.post("/upload", content=body(), headers=headers)
    assert up.status_code == 200, up.text
    assert up.json() == {"sha256": digest.hexdigest(), "size": size}

    down = hashlib.sha256()
    with client.stream("GET", "/big.bin", headers=_host(capsule.capsule_id)) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            down.update(chunk)
    assert down.hexdigest() == big_sha256


@pytest.mark.vm
def test_e2b_headers_route_too(capsule: Capsule, client: httpx.Client) -> None:
    headers = {"E2b-Sandbox-Id": capsule.capsule_id, "E2b-Sandbox-Port": str(PORT)}
    r = client.get("/hello.txt", headers=headers)
    assert (r.status_code, r.text) == (200, "hello from the guest\n")
    assert client.get("/health").json()["status"] == "ok"  # without them: the REST API, untouched


@pytest.mark.vm
def test_websocket_echo(capsule: Capsule, client: httpx.Client) -> None:
    with connect_ws("/ws", client, headers=_host(capsule.capsule_id)) as ws:
        ws.send_text("hello, socket")
        assert ws.receive_text() == "hello, socket"
        blob = os.urandom(200_000)
        ws.send_bytes(blob)
        assert ws.receive_bytes() == blob
        ws.send_text("close-me")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert (closed.value.code, closed.value.reason) == (4003, "done")  # the guest's close code


@pytest.mark.vm
def test_errors(capsule: Capsule, client: httpx.Client) -> None:
    r = client.get("/", headers=_host(capsule.capsule_id, 8001))
    assert r.status_code == 502
    assert r.json()["error"] == {
        "code": "port_unreachable",
        "message": f"nothing listens on port 8001 in capsule {capsule.capsule_id}",
    }
    assert r.json()["message"] == "The sandbox is running but port is not open"  # E2B's proxy's words
    r = client.get("/", headers=_host("cl-doesnotexist0000000000000"))  # E2B's proxy's answer, and ours
    assert (r.status_code, r.json()["error"]["code"], r.json()["message"]) == (
        502,
        "not_found",
        "The sandbox was not found",
    )
    r = client.post("/init", json={}, headers=_host(capsule.capsule_id, 49983))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    r = client.post("/snapshot/prepare/", headers=_host(capsule.capsule_id, 49983))
    assert r.status_code == 403
    r = client.post("/snapshot//prepare/", headers=_host(capsule.capsule_id, 49983))
    assert r.status_code == 400  # an empty segment: refused before it is looked at
    assert client.get("/health", headers=_host(capsule.capsule_id, 49983)).status_code in (200, 204)  # envd
    r = client.get("/", headers=_host(capsule.capsule_id, 70000))
    assert r.status_code == 400


@pytest.mark.vm
def test_traffic_counts_as_activity(capsule: Capsule, client: httpx.Client) -> None:
    before = capsule.get_info().last_active_at
    assert before is not None
    time.sleep(6)  # longer than the proxy's bump interval
    assert client.get("/hello.txt", headers=_host(capsule.capsule_id)).status_code == 200
    after = capsule.get_info().last_active_at
    assert after is not None and (after - before).total_seconds() >= 5


@pytest.mark.vm
def test_private_capsule_needs_its_token(wrenn_server: tuple[str, str], capsule: Capsule) -> None:
    base_url, api_key = wrenn_server
    assert capsule.info.traffic_access_token is None  # public by default
    private = Capsule(
        memory_mb=MEMORY, wait=True, allow_public_traffic=False, api_key=api_key, base_url=base_url
    )
    try:
        token = private.info.traffic_access_token
        assert token
        assert private.get_info().traffic_access_token == token
        with httpx.Client(base_url=base_url, timeout=60) as client:
            port = _host(private.capsule_id, 49983 - 1)  # any port but envd's: nothing listens, it is refused
            r = client.get("/health", headers=port)
            assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
            assert (
                client.get("/health", headers={**port, "X-Traffic-Access-Token": "wrong"}).status_code == 403
            )
            let_in = client.get("/", headers={**port, "X-Traffic-Access-Token": token})
            assert let_in.json()["error"]["code"] == "port_unreachable"  # let in: nothing listens there
            e2b = {"E2b-Sandbox-Id": private.capsule_id, "E2b-Sandbox-Port": str(PORT)}
            assert client.get("/", headers={**e2b, "E2b-Traffic-Access-Token": "wrong"}).status_code == 403
            # envd's port wants envd's access token, not the traffic token (as with E2B)
            envd = _host(private.capsule_id, 49983)
            assert client.get("/health", headers=envd).status_code < 300
            assert client.get("/envs", headers=envd).status_code == 401  # envd's own token guards the rest
            private.destroy()
            r = client.get("/health", headers={**envd, "X-Traffic-Access-Token": token})
            assert (r.status_code, r.json()["error"]["code"]) == (502, "not_found")  # stopped
    finally:
        Capsule.destroy(private.capsule_id, api_key=api_key, base_url=base_url)
        private.close()


@pytest.mark.vm
def test_traffic_to_a_paused_capsule_resumes_it(capsule: Capsule, client: httpx.Client) -> None:
    assert capsule.pause().status == "paused"
    r = client.get("/hello.txt", headers=_host(capsule.capsule_id))  # the guest's server survived too
    assert (r.status_code, r.text) == (200, "hello from the guest\n")
    assert capsule.get_info().status == "running"  # in a new network slot: the proxy followed its host_ip


@pytest.mark.vm
def test_an_auto_paused_capsule_is_resumed_by_traffic(
    wrenn_server: tuple[str, str], client: httpx.Client
) -> None:
    """The idle timeout pauses a capsule on its host, the reconciler tells the database, and proxied
    traffic wakes it."""
    base_url, api_key = wrenn_server
    # idle for 15 s: long enough that a busy host does not pause it between the steps that set it up
    with Capsule(memory_mb=MEMORY, timeout=15, wait=True, api_key=api_key, base_url=base_url) as c:
        c.files.write("/tmp/www/hello.txt", "still serving\n")
        c.commands.run("cd /tmp/www && python3 -m http.server 8000", background=True)
        ready = c.commands.run(
            "for i in $(seq 100); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8000))'"
            " 2>/dev/null && exit 0; sleep 0.2; done; exit 1",
            timeout=60,
        )
        assert ready.exit_code == 0
        deadline = time.monotonic() + 90
        while c.get_info().status != "paused":  # the host paused it; the reconciler told the database
            assert time.monotonic() < deadline, "the idle capsule was not paused"
            time.sleep(1)
        r = client.get("/hello.txt", headers=_host(c.capsule_id))
        assert (r.status_code, r.text) == (200, "still serving\n")
        assert c.get_info().status == "running"


def test_registered_hosts_are_reached_over_mutual_tls(tmp_path: Path) -> None:
    """An agent that requires a client certificate from the CA (as a registered one does) answers the
    pool's traffic client when dialled as its own host id, refuses a client that trusts it but has no
    certificate, and is no host but itself: dialled as another host's id, the handshake fails."""
    ca = CertificateAuthority.generate()
    port = free_port()
    issued = ca.issue_host("host-tls")
    for name, pem in (("cert.pem", issued.cert_pem), ("key.pem", issued.key_pem), ("ca.pem", ca.cert_pem)):
        (tmp_path / name).write_text(pem)

    async def agent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    config = uvicorn.Config(
        agent, host="127.0.0.1", port=port, log_config=None, lifespan="off",
        ssl_certfile=str(tmp_path / "cert.pem"), ssl_keyfile=str(tmp_path / "key.pem"),
        ssl_ca_certs=str(tmp_path / "ca.pem"), ssl_cert_reqs=ssl.CERT_REQUIRED,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    async def check() -> None:
        pool = AgentPool(ca)
        address = f"https://127.0.0.1:{port}"
        traffic = pool.traffic(address, port, host_id="host-tls")
        assert traffic.base_url == f"https://host-tls.hosts.wrenn.internal:{port}"  # dialled as its id
        client = traffic.client
        assert pool.traffic(address, port, host_id="host-tls").client is client  # one client, reused
        assert pool.traffic("http://127.0.0.1:1", 2, host_id="h").client is not client  # local: plain HTTP
        r = await client.get(f"{traffic.base_url}/proxy/cl-x/8000/")
        assert (r.status_code, r.text) == (200, "/proxy/cl-x/8000/")
        # Another host registered at this address reaches nothing: the agent there is host-tls.
        impostor = pool.traffic(address, port, host_id="host-byoc")
        with pytest.raises(httpx.ConnectError, match=r"(?i)certificate"):
            await impostor.client.get(f"{impostor.base_url}/proxy/cl-x/8000/")
        async with new_client(verify=ssl.create_default_context(cadata=ca.cert_pem)) as bare:
            with pytest.raises(httpx.TransportError):
                await bare.get(f"{address}/")
        await pool.close()
        assert client.is_closed

    try:
        asyncio.run(check())
    finally:
        server.should_exit = True
        thread.join(10)
