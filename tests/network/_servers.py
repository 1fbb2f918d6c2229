"""The test's "internet", run inside its network namespace: HTTP (80, 8080) and HTTPS (443) servers on
every test address, an SMTP greeter (25) and a DNS server (UDP 53, dnspython) that answers the test's
names. Started by `_internet.Internet` as `python _servers.py CONFIG.json`; it writes one JSON line per
HTTP request to `requests.jsonl` beside the config (method, host, path, headers, the address it came to).
Nothing here reaches outside the namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.message
import dns.rcode
import dns.rrset


def _answer(names: dict[str, str], wire: bytes) -> bytes:
    query = dns.message.from_wire(wire)
    reply = dns.message.make_response(query)
    question = query.question[0]
    name = question.name.to_text().rstrip(".").lower()
    if name in names and question.rdtype == 1:  # A
        reply.answer.append(dns.rrset.from_text(question.name, 5, "IN", "A", names[name]))
    elif name not in names:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    return bytes(reply.to_wire())


class _Dns(asyncio.DatagramProtocol):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(Exception):  # a malformed query: no answer
            self.transport.sendto(_answer(self.names, data), addr)  # type: ignore[attr-defined]


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: Path, where: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length") or 0)
            if length:
                await reader.readexactly(length)
            with log.open("a") as f:
                f.write(
                    json.dumps({"method": method, "target": target, "headers": headers, "at": where}) + "\n"
                )
            url = urlsplit(target)
            status, extra, body = "200 OK", "", f"hello from {headers.get('host', '')} at {where}\n"
            if url.path == "/redirect":
                status, extra, body = "302 Found", f"location: {parse_qs(url.query)['to'][0]}\r\n", ""
            elif url.path.startswith("/bytes/"):
                body = "x" * int(url.path.rsplit("/", 1)[1])
            elif url.path.startswith("/slow/"):  # N bytes, 1 KiB every 10 ms: a download that lasts
                total = int(url.path.rsplit("/", 1)[1])
                writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n".encode())
                for sent in range(0, total, 1024):
                    writer.write(b"x" * min(1024, total - sent))
                    await writer.drain()
                    await asyncio.sleep(0.01)
                continue
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-length: {len(data)}\r\n{extra}content-type: text/plain\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 test smtp\r\n")
    await writer.drain()
    writer.close()


async def main(config_path: Path) -> None:
    config: dict[str, Any] = json.loads(config_path.read_text())
    log = config_path.with_name("requests.jsonl")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(config["cert"], config["key"])
    loop = asyncio.get_running_loop()
    servers = []
    for address in config["addresses"]:
        for port, ctx in ((80, None), (8080, None), (443, tls)):
            where = f"{address}:{port}"
            servers.append(await asyncio.start_server(
                lambda r, w, where=where: _http(r, w, log, where), address, port, ssl=ctx
            ))  # fmt: skip
        servers.append(await asyncio.start_server(_smtp, address, 25))
    await loop.create_datagram_endpoint(lambda: _Dns(config["names"]), local_addr=(config["dns"], 53))
    config_path.with_name("ready").write_text("ok")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
