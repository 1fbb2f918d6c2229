"""Talking to host agents: one Connect client per host, agent errors mapped to API errors.

Registered hosts answer over https with mutual TLS: the pool dials them with the control plane's client
certificate from the internal CA and trusts only that CA. Local agents (`--local-agent http://...`) are
plain HTTP and require their secret (`X-Wrenn-Agent-Token`, from a root-only file). The traffic proxy
gets an httpx client per kind of host, with the same credentials, and dials each agent's traffic listener
(`proxy_url`), never its API."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyqwest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from wrenn._shared.asgiproxy import new_client
from wrenn.proto.hostagent.v1.auth import HEADER as TOKEN_HEADER
from wrenn.proto.hostagent.v1.auth import TokenInterceptor
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

from ._ca import CLIENT_CERT_TTL, CertificateAuthority, Issued
from ._errors import ApiError
from .db import Host

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


def agent_error(exc: ConnectError, host_id: str) -> ApiError:
    status, code = _STATUS.get(exc.code, (502, "agent_error"))
    if exc.code is Code.UNAVAILABLE and "does not answer" not in exc.message:
        return ApiError(503, "host_unavailable", f"host {host_id} is unreachable: {exc.message}")
    return ApiError(status, code, exc.message)


def proxy_url(host: Host) -> str | None:
    """The base URL of the host's traffic listener (same scheme and address as its API, its own port);
    None while the port is not known."""
    if not host.proxy_port or "://" not in host.address:
        return None
    scheme, rest = host.address.split("://", 1)
    name = rest.split("/", 1)[0].rsplit(":", 1)[0]
    return f"{scheme}://{name}:{host.proxy_port}"


class AgentPool:
    def __init__(self, ca: CertificateAuthority | None = None, local_token: str | None = None) -> None:
        self._ca = ca
        #: The secret of local (plain HTTP) agents.
        self._local_token = local_token
        self._clients: dict[str, HostAgentServiceClient] = {}
        self._transport: pyqwest.HTTPTransport | None = None
        self._client_cert: Issued | None = None
        self._retired: list[Any] = []
        self._plain_http: httpx.AsyncClient | None = None
        self._tls_http: httpx.AsyncClient | None = None
        self._tls_http_cert: Issued | None = None

    def _tls_client(self) -> pyqwest.Client:
        """An HTTP client presenting the control plane's certificate, renewed at half its lifetime."""
        assert self._ca is not None
        now = datetime.now(UTC)
        cert = self._client_cert
        if cert is None or self._transport is None or (cert.not_after - now) < CLIENT_CERT_TTL / 2:
            if self._transport is not None:  # renew: new connections use the new certificate
                self._retired.append(self._transport)
                self._clients = {a: c for a, c in self._clients.items() if not a.startswith("https:")}
            cert = self._client_cert = self._ca.issue_client()
            self._transport = pyqwest.HTTPTransport(
                tls_ca_cert=self._ca.cert_pem.encode(),
                tls_cert=cert.cert_pem.encode(),
                tls_key=cert.key_pem.encode(),
                http_version=pyqwest.HTTPVersion.HTTP1,
            )
            log.info(
                "issued the control plane's client certificate", extra={"not_after": str(cert.not_after)}
            )
        return pyqwest.Client(self._transport)

    def client(self, address: str) -> HostAgentServiceClient:
        if address.startswith("https:") and self._ca is not None:
            self._tls_client()  # may renew the certificate (and drop the clients using the old one)
        found = self._clients.get(address)
        if found is None:
            if address.startswith("https:"):
                if self._ca is None:
                    raise ApiError(503, "host_unavailable", "no CA configured to reach a TLS host")
                found = HostAgentServiceClient(address, http_client=self._tls_client())
            else:
                interceptors = [TokenInterceptor(self._local_token)] if self._local_token else []
                found = HostAgentServiceClient(address, interceptors=interceptors)
            self._clients[address] = found
        return found

    def http_client(self, address: str) -> httpx.AsyncClient:
        """The client that forwards proxied traffic to the agent at `address`: mutual TLS for https hosts
        (its certificate renewed at half its lifetime, like the Connect clients'), plain HTTP otherwise."""
        if not address.startswith("https:"):
            if self._plain_http is None:
                self._plain_http = new_client()
            return self._plain_http
        if self._ca is None:
            raise ApiError(503, "host_unavailable", "no CA configured to reach a TLS host")
        cert = self._tls_http_cert
        if (
            self._tls_http is None
            or cert is None
            or (cert.not_after - datetime.now(UTC)) < CLIENT_CERT_TTL / 2
        ):
            if self._tls_http is not None:  # in-flight streams finish on the old one; it closes with the pool
                self._retired.append(self._tls_http)
            cert = self._tls_http_cert = self._ca.issue_client()
            self._tls_http = new_client(verify=_mtls_context(self._ca.cert_pem, cert))
        return self._tls_http

    def proxy_headers(self, address: str) -> list[tuple[bytes, bytes]]:
        """What a forwarded request carries to prove itself to the agent at `address` (its secret, for
        a plain HTTP one; mutual TLS speaks for the others)."""
        if address.startswith("https:") or not self._local_token:
            return []
        return [(TOKEN_HEADER.encode(), self._local_token.encode())]

    def forget(self, address: str) -> None:
        """Drop the client of a host (deleted, or re-registered at another address)."""
        self._clients.pop(address, None)

    async def call(self, host_id: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except ConnectError as exc:
            raise agent_error(exc, host_id) from None
        except OSError as exc:
            raise ApiError(503, "host_unavailable", f"host {host_id} is unreachable: {exc}") from None

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        for transport in [*self._retired, self._transport]:
            if transport is not None:
                with contextlib.suppress(Exception):
                    await transport.aclose()
        for http in (self._plain_http, self._tls_http):
            if http is not None:
                await http.aclose()
        self._retired.clear()
        self._transport = None
        self._plain_http = self._tls_http = None


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
