"""Talking to host agents: one Connect client per host, agent errors mapped to API errors.

Registered hosts answer over https with mutual TLS: the pool dials them with the control plane's client
certificate from the internal CA, trusts only that CA, and **verifies each host's identity, not its
address**: it dials the address the host registered, but as `https://<host id>.hosts.wrenn.internal`
(the name resolved to that address inside the client, never through DNS), so the TLS handshake succeeds
only if the certificate names that host id. A host registered with another host's address (a BYOC owner
pointing Wrenn at a platform agent) gets answers from nobody: the agent there holds its own id's
certificate. Clients are per host, so no connection verified for one host is reused for another.

Local agents (`--local-agent http://...`) are plain HTTP and require their secret (`X-Wrenn-Agent-Token`,
from a root-only file). The traffic proxy gets an httpx client per kind of host, with the same
credentials and the same identity check, and dials each agent's traffic listener, never its API."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import pyqwest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from wrenn._shared import dial
from wrenn._shared.asgiproxy import new_client
from wrenn._shared.logs import RequestIdInterceptor
from wrenn.proto.hostagent.v1.auth import HEADER as TOKEN_HEADER
from wrenn.proto.hostagent.v1.auth import TokenInterceptor
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

from ._ca import CLIENT_CERT_TTL, CertificateAuthority, Issued, host_name, split_address
from ._errors import ApiError
from ._inflight import InFlight

log = logging.getLogger("wrenn.controlplane.agents")
_T = TypeVar("_T")

#: Agent codes as the API answers them (the seed's mapping, with unreachable hosts made explicit).
_STATUS = {
    Code.NOT_FOUND: (404, "not_found"),
    Code.INVALID_ARGUMENT: (400, "invalid_request"),
    Code.FAILED_PRECONDITION: (409, "invalid_state"),
    Code.ALREADY_EXISTS: (409, "conflict"),
    Code.PERMISSION_DENIED: (403, "forbidden"),
    Code.RESOURCE_EXHAUSTED: (503, "no_hosts_available"),
    Code.UNAVAILABLE: (503, "host_unavailable"),
    Code.UNIMPLEMENTED: (501, "not_implemented"),
    Code.DEADLINE_EXCEEDED: (504, "timeout"),
    Code.DATA_LOSS: (500, "snapshot_unusable"),
}
#: Words of a TLS failure that means "the peer is not the host it should be" (rustls, OpenSSL).
_IDENTITY_FAILURES = ("certificate", "notvalidforname", "unknownissuer", "hostname mismatch")


def unreachable(host_id: str, error: object) -> ApiError:
    """503 for a host that cannot be reached, or that did not prove its identity. The cause is logged; the
    client learns which of the two it was, not the addresses or libraries involved."""
    text = str(error)
    log.warning("host agent call failed", extra={"host": host_id, "error": text[:500]})
    if any(word in text.lower() for word in _IDENTITY_FAILURES):
        message = f"host {host_id} did not prove its identity: the agent at its address is not host {host_id}"
    else:
        message = f"host {host_id} is unreachable"
    return ApiError(503, "host_unavailable", message)


def agent_error(exc: ConnectError, host_id: str) -> ApiError:
    if exc.code is Code.UNAVAILABLE and "does not answer" not in exc.message:
        return unreachable(host_id, exc.message)
    status, code = _STATUS.get(exc.code, (502, "agent_error"))
    if code == "agent_error":  # the agent's own failure: its words (paths, commands) stay in the log
        log.warning("host agent failed", extra={"host": host_id, "code": exc.code.name, "error": exc.message})
        return ApiError(status, code, f"host {host_id} failed to do it ({exc.code.name.lower()})")
    return ApiError(status, code, exc.message)


@dataclass(frozen=True, slots=True)
class Traffic:
    """How the traffic proxy reaches one host's traffic listener."""

    client: httpx.AsyncClient
    #: `scheme://name:port` of the listener (for a registered host, the name its certificate must carry).
    base_url: str
    #: What each forwarded request carries to prove itself (a local agent's secret).
    headers: list[tuple[bytes, bytes]]


def _resolve(name: str) -> list[str]:
    """The IP addresses of a registered address's host part (an IP literal is itself)."""
    try:
        return [str(ipaddress.ip_address(name))]
    except ValueError:
        pass
    found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _target(address: str) -> tuple[str, int]:
    """(host part, port) of `https://host:port`."""
    name, port = split_address(address.split("://", 1)[-1].split("/", 1)[0])
    return name, port or 443


class _PinnedBackend(dial.Dialer):
    """Opens connections for `<host id>.hosts.wrenn.internal` to the address that host registered; any other
    name is refused. TLS then verifies the URL's name, i.e. the host id."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, str] = {}

    async def address(self, host: str, port: int) -> str:
        target = self.routes.get(host)
        if target is None:
            raise httpcore.ConnectError(f"no registered host is called {host}")
        return target


class AgentPool:
    def __init__(
        self,
        ca: CertificateAuthority | None = None,
        local_token: str | None = None,
        inflight: InFlight | None = None,
    ) -> None:
        self._ca = ca
        #: The capsule operations (create, resume, thaw) this control plane has in flight on agents.
        self.inflight = inflight or InFlight()
        #: The secret of local (plain HTTP) agents.
        self._local_token = local_token
        #: Clients by (host id, address): a host's identity and where it answers.
        self._clients: dict[tuple[str, str], HostAgentServiceClient] = {}
        self._transports: dict[tuple[str, str], pyqwest.HTTPTransport] = {}
        self._client_cert: Issued | None = None
        self._retired: list[Any] = []
        self._plain_http: httpx.AsyncClient | None = None
        self._tls_http: httpx.AsyncClient | None = None
        self._tls_http_cert: Issued | None = None
        self._routes = _PinnedBackend()

    def _renewed(self, cert: Issued | None) -> bool:
        return cert is None or (cert.not_after - datetime.now(UTC)) < CLIENT_CERT_TTL / 2

    def _client_certificate(self) -> Issued:
        """The control plane's client certificate, renewed at half its lifetime (the clients using the old
        one are dropped; new connections present the new one)."""
        assert self._ca is not None
        if self._client_cert is None or self._renewed(self._client_cert):
            self._retired.extend(self._transports.values())
            self._transports.clear()
            self._clients = {k: c for k, c in self._clients.items() if not k[1].startswith("https:")}
            self._client_cert = self._ca.issue_client()
            log.info(
                "issued the control plane's client certificate",
                extra={"not_after": str(self._client_cert.not_after)},
            )
        return self._client_cert

    def _pinned_client(self, host_id: str, address: str) -> HostAgentServiceClient:
        if self._ca is None:
            raise ApiError(503, "host_unavailable", "no CA configured to reach a TLS host")
        if not host_id:
            raise ApiError(503, "host_unavailable", "a registered host is reached by its id")
        cert = self._client_certificate()
        name, port = _target(address)
        try:
            ips = _resolve(name)
        except OSError as exc:
            raise unreachable(host_id, exc) from None
        transport = pyqwest.HTTPTransport(
            tls_ca_cert=self._ca.cert_pem.encode(),
            tls_cert=cert.cert_pem.encode(),
            tls_key=cert.key_pem.encode(),
            http_version=pyqwest.HTTPVersion.HTTP1,
            dns_overrides={host_name(host_id): ips},
            follow_redirects=False,
        )
        self._transports[(host_id, address)] = transport
        return HostAgentServiceClient(
            f"https://{host_name(host_id)}:{port}", http_client=pyqwest.Client(transport),
            interceptors=[RequestIdInterceptor()],
        )  # fmt: skip

    def client(self, address: str, *, host_id: str) -> HostAgentServiceClient:
        """The Connect client of host `host_id`, which answers at `address`."""
        if address.startswith("https:") and self._ca is not None:
            self._client_certificate()  # may renew the certificate (and drop the clients using the old one)
        key = (host_id, address)
        found = self._clients.get(key)
        if found is None:
            if address.startswith("https:"):
                found = self._pinned_client(host_id, address)
            else:
                interceptors: list[Any] = [RequestIdInterceptor()]
                if self._local_token:
                    interceptors.append(TokenInterceptor(self._local_token))
                found = HostAgentServiceClient(address, interceptors=interceptors)
            self._clients[key] = found
        return found

    def traffic(self, address: str, proxy_port: int, *, host_id: str) -> Traffic:
        """How to reach the traffic listener (port `proxy_port`) of host `host_id` at `address`: mutual TLS
        and the host's identity for https hosts (the client certificate renewed at half its lifetime, like
        the Connect clients'), plain HTTP and the local secret otherwise."""
        name, _ = _target(address)
        if not address.startswith("https:"):
            if self._plain_http is None:
                self._plain_http = new_client()
            host = f"[{name}]" if ":" in name else name
            headers = [(TOKEN_HEADER.encode(), self._local_token.encode())] if self._local_token else []
            return Traffic(self._plain_http, f"http://{host}:{proxy_port}", headers)
        if self._ca is None:
            raise ApiError(503, "host_unavailable", "no CA configured to reach a TLS host")
        if self._tls_http is None or self._renewed(self._tls_http_cert):
            if self._tls_http is not None:  # in-flight streams finish on the old one; it closes with the pool
                self._retired.append(self._tls_http)
            cert = self._tls_http_cert = self._ca.issue_client()
            self._tls_http = new_client(
                verify=_mtls_context(self._ca.cert_pem, cert), network_backend=self._routes
            )
        self._routes.routes[host_name(host_id)] = name
        return Traffic(self._tls_http, f"https://{host_name(host_id)}:{proxy_port}", [])

    def forget(self, host_id: str) -> None:
        """Drop the clients of a host (deleted, or registered again at another address)."""
        for key in [k for k in self._clients if k[0] == host_id]:
            self._clients.pop(key, None)
            transport = self._transports.pop(key, None)
            if transport is not None:
                self._retired.append(transport)
        self._routes.routes.pop(host_name(host_id), None)

    async def call(self, host_id: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except ConnectError as exc:
            raise agent_error(exc, host_id) from None
        except OSError as exc:
            raise unreachable(host_id, exc) from None

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        for transport in [*self._retired, *self._transports.values()]:
            with contextlib.suppress(Exception):
                await transport.aclose()
        self._transports.clear()
        for http in (self._plain_http, self._tls_http):
            if http is not None:
                await http.aclose()
        self._retired.clear()
        self._plain_http = self._tls_http = None
        await self.inflight.close()


def _mtls_context(ca_pem: str, cert: Issued) -> ssl.SSLContext:
    """Trusts only the internal CA and presents `cert`. `load_cert_chain` reads only files: the PEM lives
    in a private directory (0700, the file 0600) for the duration of the call."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory(prefix="wrenn-mtls-") as tmp:
        path = Path(tmp) / "client.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cert.cert_pem + cert.key_pem)
        context.load_cert_chain(path)
    return context
