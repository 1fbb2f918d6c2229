"""An httpx transport whose connections are opened by a network backend of the caller's: the hook where a
client decides, at connect time, which address a name may reach (a host agent's pinned identity, or a
guard that refuses private addresses). Whatever the backend dials, TLS still verifies the URL's name."""

from __future__ import annotations

import ssl
from typing import Any

import httpcore
import httpx


class Dialer(httpcore.AsyncNetworkBackend):
    """A network backend that decides where a name's connection goes: `address(host)` returns the address
    to connect to, or raises `httpcore.ConnectError` to refuse."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def address(self, host: str, port: int) -> str:
        raise NotImplementedError

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        target = await self.address(host, port)
        return await self._inner.connect_tcp(target, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("this client opens no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def transport(
    network_backend: httpcore.AsyncNetworkBackend,
    verify: ssl.SSLContext | bool = True,
    limits: httpx.Limits | None = None,
) -> httpx.AsyncHTTPTransport:
    """`httpx.AsyncHTTPTransport` with `network_backend` under its pool (no proxies from the
    environment). httpx takes no backend, so the pool it made is replaced by one that has it."""
    limits = limits or httpx.Limits()
    made = httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
    made._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=network_backend,
    )
    return made
