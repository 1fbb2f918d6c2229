"""An httpx transport whose connections are opened by a network backend of the caller's: the hook where a
client decides, at connect time, which address a name may reach (a host agent's pinned identity, or a
guard that refuses private addresses). Whatever the backend dials, TLS still verifies the URL's name."""

from __future__ import annotations

import ssl

import httpcore
import httpx


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
