"""The egress proxy: where a sandbox's TCP to ports 80 and 443 lands when its policy matches names or
sets headers (the netns redirects it here; see `_egress_rules`).

One proxy per agent, with two listeners inside each sandbox's netns (so the original destination comes
from that netns's conntrack, `SO_ORIGINAL_DST`). For each connection it peeks at the first bytes without
consuming them, takes the name (the `Host` header on 80, the TLS SNI on 443) and decides:

* a name the policy allows: dial one of the addresses the agent's resolvers give for that name (the
  guest's chosen address when it is one of them), so a guest cannot claim an allowed name to reach
  another address;
* otherwise the address rule: allow beats deny, default allow;
* never an always-blocked address (checked here, and again by the netns's output chain).

A refused connection is answered at once (HTTP 403 on port 80, a TCP reset on 443) and recorded in the
sandbox's network events. An allowed one is spliced byte for byte from inside the netns, except HTTPS to
a domain with a rule: that one is intercepted with a certificate from the sandbox's CA, each request's
`Host` must equal the SNI (else 421), the rule's headers are set, and the request goes on over TLS
verified against the system's trust store (or `upstream_ca`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
import h11

from ._egress_rules import HTTP_LISTEN, HTTPS_LISTEN, PROXY_MARK
from ._firewall import BLOCKED_NETWORKS
from ._mint import LeafMinter
from ._names import NEED_MORE, http_host, tls_sni
from ._nsock import NetnsSockets
from ._policy import OPEN, EgressPolicy, Rule, normalize_name

log = logging.getLogger("wrenn.agent.network")

_SO_ORIGINAL_DST = 80
_PEEK_TIMEOUT_S = 10.0
_DIAL_TIMEOUT_S = 10.0
_CHUNK = 256 * 1024
_EVENTS = 200
_DNS_TTL_S = 30.0


@dataclass
class _Sandbox:
    sandbox_id: str
    netns: str
    gateway: str
    policy: EgressPolicy = OPEN
    listeners: list[socket.socket] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class NetworkEvent:
    at: float
    action: str  # "refused" or "intercepted"
    destination: str
    port: int
    name: str
    reason: str


class EgressProxy:
    def __init__(
        self,
        resolvers: Iterable[str],
        *,
        scratch: Path,
        upstream_ca: Path | None = None,
        host_addresses: Callable[[], Iterable[ipaddress.IPv4Address]] = lambda: (),
    ) -> None:
        self._sockets = NetnsSockets()
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = list(resolvers)
        self._resolver.lifetime = 5.0
        self._dns_cache: dict[str, tuple[float, list[ipaddress.IPv4Address]]] = {}
        self._minter = LeafMinter(scratch)
        self._upstream = ssl.create_default_context(cafile=str(upstream_ca) if upstream_ca else None)
        self._upstream.set_alpn_protocols(["http/1.1"])
        self._host_addresses = host_addresses
        self._by_netns: dict[str, _Sandbox] = {}
        self._events: dict[str, deque[NetworkEvent]] = {}

    # --- sandboxes ----------------------------------------------------------------------------------

    async def attach(self, sandbox_id: str, netns: str, gateway: str, policy: EgressPolicy) -> None:
        """Listen in `netns` for the sandbox (once) and apply `policy` to its new connections."""
        state = self._by_netns.get(netns)
        if state is None or state.sandbox_id != sandbox_id:
            if state is not None:
                await self.detach(netns)
            state = _Sandbox(sandbox_id, netns, gateway)
            try:
                for port, tls in ((HTTP_LISTEN, False), (HTTPS_LISTEN, True)):
                    sock = await self._sockets.listener(netns, gateway, port)
                    state.listeners.append(sock)
                    self._spawn(state, self._serve(state, sock, tls))
            except BaseException:
                await self._close(state)
                raise
            self._by_netns[netns] = state
        if state.policy.ca_cert_pem and state.policy.ca_cert_pem != policy.ca_cert_pem:
            self._minter.forget(state.policy.ca_cert_pem)
        state.policy = policy
        self._events.setdefault(sandbox_id, deque(maxlen=_EVENTS))

    async def detach(self, netns: str) -> None:
        """Stop listening in `netns` and cut its connections (the sandbox's network is going away)."""
        state = self._by_netns.pop(netns, None)
        if state is not None:
            await self._close(state)

    def forget(self, sandbox_id: str) -> None:
        self._events.pop(sandbox_id, None)

    def attached(self, netns: str) -> bool:
        return netns in self._by_netns

    def events(self, sandbox_id: str) -> list[NetworkEvent]:
        return list(self._events.get(sandbox_id, ()))

    async def close(self) -> None:
        for netns in list(self._by_netns):
            await self.detach(netns)
        self._sockets.close()

    async def _close(self, state: _Sandbox) -> None:
        for sock in state.listeners:
            sock.close()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        if state.policy.ca_cert_pem:
            self._minter.forget(state.policy.ca_cert_pem)

    def _spawn(self, state: _Sandbox, coro: Any) -> None:
        task = asyncio.create_task(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    # --- connections --------------------------------------------------------------------------------

    async def _serve(self, state: _Sandbox, listener: socket.socket, tls: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay on relayed bytes
            except OSError as exc:
                log.warning("egress proxy accept failed", extra={"netns": state.netns, "error": str(exc)})
                await asyncio.sleep(0.1)
                continue
            self._spawn(state, self._handle(state, conn, tls))

    async def _handle(self, state: _Sandbox, conn: socket.socket, tls: bool) -> None:
        upstream: socket.socket | None = None
        streams: list[asyncio.StreamWriter] = []  # once a socket has a transport, it closes the socket
        try:
            raw = conn.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            original = ipaddress.IPv4Address(raw[4:8])
            name = await _peek(conn, tls_sni if tls else http_host)
            policy = state.policy  # this connection's policy, even if it changes meanwhile
            target, reason = await self._decide(policy, name, original)
            if target is None:
                self._record(state, "refused", original, port, name, reason)
                await _refuse(conn, tls, reason)
                return
            upstream = await self._sockets.connect(
                state.netns, str(target), port, _DIAL_TIMEOUT_S, mark=PROXY_MARK
            )
            rule = policy.rule_for(name) if tls and name and policy.intercepts else None
            if rule is not None and name:
                self._record(state, "intercepted", target, port, name, f"headers of rule {rule.domain}")
                await self._intercept(state, conn, upstream, name, rule, policy, target, streams)
            else:
                await _splice(conn, upstream, streams)
        except (OSError, ssl.SSLError, h11.ProtocolError, TimeoutError, ValueError) as exc:
            log.debug("egress connection ended", extra={"netns": state.netns, "error": repr(exc)})
        finally:
            for writer in streams:
                writer.close()
            for writer in streams:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if not streams:
                conn.close()
                if upstream is not None:
                    upstream.close()

    async def _decide(
        self, policy: EgressPolicy, name: str | None, original: ipaddress.IPv4Address
    ) -> tuple[ipaddress.IPv4Address | None, str]:
        """Where to dial (None: refused) and why."""
        if name and policy.allows_name(name):
            addresses = await self._resolve(name)
            allowed = [a for a in addresses if not self._blocked(a)]
            if not allowed:
                return None, f"{name} resolves to no address the sandbox may reach"
            return (original if original in allowed else allowed[0]), ""
        if self._blocked(original):
            return None, f"{original} is never reachable from a sandbox"
        if policy.allows_address(original):
            return original, ""
        named = f" ({name})" if name else ""
        return None, f"{original}{named} is not allowed by the capsule's network policy"

    def _blocked(self, address: ipaddress.IPv4Address) -> bool:
        return any(address in n for n in BLOCKED_NETWORKS) or address in set(self._host_addresses())

    async def _resolve(self, name: str) -> list[ipaddress.IPv4Address]:
        now = time.monotonic()
        cached = self._dns_cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self._resolver.resolve(name, "A")
            addresses = [ipaddress.IPv4Address(r.address) for r in answer]
        except (dns.exception.DNSException, dns.resolver.NoAnswer):
            addresses = []
        self._dns_cache[name] = (now + _DNS_TTL_S, addresses)
        if len(self._dns_cache) > 4096:
            self._dns_cache = {k: v for k, v in self._dns_cache.items() if v[0] > now}
        return addresses

    def _record(
        self, state: _Sandbox, action: str, address: ipaddress.IPv4Address, port: int, name: str | None,
        reason: str,
    ) -> None:  # fmt: skip
        event = NetworkEvent(time.time(), action, str(address), port, name or "", reason)
        self._events.setdefault(state.sandbox_id, deque(maxlen=_EVENTS)).append(event)
        level = logging.INFO if action == "refused" else logging.DEBUG
        log.log(
            level,
            f"egress {action}",
            extra={"sandbox": state.sandbox_id, "destination": f"{address}:{port}", "server_name": name or "",
                   "reason": reason},
        )  # fmt: skip

    # --- interception -------------------------------------------------------------------------------

    async def _intercept(
        self, state: _Sandbox, conn: socket.socket, upstream: socket.socket, name: str, rule: Rule,
        policy: EgressPolicy, target: ipaddress.IPv4Address, streams: list[asyncio.StreamWriter],
    ) -> None:  # fmt: skip
        server_ctx = await asyncio.to_thread(
            self._minter.context, policy.ca_cert_pem, policy.ca_key_pem, name
        )
        loop = asyncio.get_running_loop()
        g_reader = asyncio.StreamReader(limit=_CHUNK)
        protocol = asyncio.StreamReaderProtocol(g_reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=server_ctx)
        g_writer = asyncio.StreamWriter(transport, protocol, g_reader, loop)
        streams.append(g_writer)
        try:
            u_reader, u_writer = await asyncio.open_connection(
                sock=upstream, ssl=self._upstream, server_hostname=name
            )
        except BaseException:
            upstream.close()
            raise
        streams.append(u_writer)
        relay = _Relay(g_reader, g_writer, u_reader, u_writer, name, rule)
        refusal = await relay.run()
        if refusal:
            self._record(state, "refused", target, 443, name, refusal)


# --- helpers ----------------------------------------------------------------------------------------


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _peek(conn: socket.socket, parse: Callable[[bytes], str | None]) -> str | None:
    """The name in the connection's first bytes, read without consuming them; None when there is none
    (or the guest sends nothing within the timeout: then the address decides)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PEEK_TIMEOUT_S
    seen = -1
    while loop.time() < deadline:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _settle, ready)
        try:
            await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(conn.fileno())
        try:
            data = conn.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not data:
            return None
        found = parse(data)
        if found != NEED_MORE:
            return found
        if len(data) == seen:
            await asyncio.sleep(0.005)  # the rest of the ClientHello or headers is on its way
        seen = len(data)
    return None


async def _refuse(conn: socket.socket, tls: bool, reason: str) -> None:
    if not tls:
        body = f"blocked by the capsule's network policy: {reason}\n".encode()
        head = (
            f"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\nx-wrenn-egress: refused\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            conn.recv(65536)  # what was only peeked: closing with unread bytes would reset the answer
            await asyncio.get_running_loop().sock_sendall(conn, head + body)
            conn.shutdown(socket.SHUT_WR)
        return
    # A TLS client gets a reset at once: no certificate we could show would be honest.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _splice(a: socket.socket, b: socket.socket, streams: list[asyncio.StreamWriter]) -> None:
    a_reader, a_writer = await asyncio.open_connection(sock=a, limit=_CHUNK)
    streams.append(a_writer)
    b_reader, b_writer = await asyncio.open_connection(sock=b, limit=_CHUNK)
    streams.append(b_writer)

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass

    await asyncio.gather(pump(a_reader, b_writer), pump(b_reader, a_writer))


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_CHUNK))
            continue
        return event


def _host_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    hosts = [v for k, v in headers if k == b"host"]
    if len(hosts) != 1:
        return None
    value = hosts[0].decode("ascii", "replace")
    return normalize_name(value.rsplit(":", 1)[0] if ":" in value else value)


class _Relay:
    """HTTP/1.1 requests from the guest to the upstream, one at a time, with the rule's headers set."""

    def __init__(
        self, g_reader: asyncio.StreamReader, g_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader, u_writer: asyncio.StreamWriter, name: str, rule: Rule,
    ) -> None:  # fmt: skip
        self.g_reader, self.g_writer, self.u_reader, self.u_writer = g_reader, g_writer, u_reader, u_writer
        self.name = name
        self.guest, self.up = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
        self.replaced = {k.lower().encode() for k, _ in rule.headers}
        self.added = [(k.encode(), v.encode()) for k, v in rule.headers]

    async def run(self) -> str:
        """Relay until either side is done; the reason when a request was refused, else ""."""
        guest, up = self.guest, self.up
        while True:
            request = await _next(guest, self.g_reader)
            if not isinstance(request, h11.Request):
                return ""
            headers = list(request.headers)
            host = _host_of(headers)
            if host != self.name:
                reason = f"the request's Host ({host or 'none'}) is not its TLS server name ({self.name})"
                await self._answer(421, f"refused by the capsule's network policy: {reason}\n")
                return reason
            headers = [(k, v) for k, v in headers if k not in self.replaced] + self.added
            self.u_writer.write(
                up.send(h11.Request(method=request.method, target=request.target, headers=headers))
            )
            if not await self._pump(guest, self.g_reader, up, self.u_writer):
                return ""
            response = await _next(up, self.u_reader)
            while isinstance(response, h11.InformationalResponse):
                self.g_writer.write(guest.send(response))
                response = await _next(up, self.u_reader)
            if not isinstance(response, h11.Response):
                return ""
            self.g_writer.write(guest.send(h11.Response(
                status_code=response.status_code, headers=list(response.headers), reason=response.reason
            )))  # fmt: skip
            if not await self._pump(up, self.u_reader, guest, self.g_writer):
                return ""
            if h11.MUST_CLOSE in (guest.our_state, guest.their_state, up.our_state, up.their_state):
                return ""
            try:
                guest.start_next_cycle()
                up.start_next_cycle()
            except h11.LocalProtocolError:
                return ""

    async def _pump(
        self,
        src: h11.Connection,
        reader: asyncio.StreamReader,
        dst: h11.Connection,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """One message body from `src` to `dst`; False when `src` ended before the message did."""
        while True:
            event = await _next(src, reader)
            if isinstance(event, h11.Data):
                writer.write(dst.send(h11.Data(data=event.data)))
                await writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                writer.write(dst.send(h11.EndOfMessage()))
                await writer.drain()
                return True
            else:
                return False

    async def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        headers = [
            ("content-type", "text/plain"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        self.g_writer.write(self.guest.send(h11.Response(status_code=status, headers=headers)))
        self.g_writer.write(self.guest.send(h11.Data(data=body)) + self.guest.send(h11.EndOfMessage()))
        await self.g_writer.drain()
