"""Where the SDK talks to and how: credentials, base URL, timeouts, the proxy URL of a port."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

#: Wrenn is self-hosted: `wrenn up` serves the control plane here. (The hosted seed SDK defaulted to
#: `https://app.wrenn.dev/api`; set `WRENN_BASE_URL` or `base_url=` for any other deployment.)
DEFAULT_BASE_URL = "http://localhost:8080"
ENV_API_KEY = "WRENN_API_KEY"
ENV_BASE_URL = "WRENN_BASE_URL"

#: Every request unless said otherwise.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: Pause, resume and snapshot: the VM's memory is written out or read back.
LONG_TIMEOUT = 60.0
#: Create boots a VM; under emulation (no KVM) that can take well over a minute.
CREATE_TIMEOUT = 300.0
#: A foreground command gets its own timeout plus this much for the round trip.
RUN_GRACE = 10.0
#: The server's default command timeout when `timeout=None` is passed to `commands.run`.
SERVER_RUN_TIMEOUT = 30
#: WebSocket messages carry command output; allow large ones.
WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _version() -> str:
    from wrenn import __version__

    return __version__


@dataclass(frozen=True)
class Config:
    """Resolved connection settings. Precedence: the argument, then the environment variable, then
    the default (there is no default API key)."""

    api_key: str
    base_url: str

    @classmethod
    def resolve(cls, api_key: str | None = None, base_url: str | None = None) -> Config:
        key = api_key or os.environ.get(ENV_API_KEY)
        if not key:
            raise ValueError(f"no API key: pass api_key= or set the {ENV_API_KEY} environment variable")
        url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        return cls(api_key=key, base_url=url.rstrip("/"))

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for `httpx.Client`/`httpx.AsyncClient`: requests go to `{base_url}/v1/...`."""
        return {
            "base_url": self.base_url,
            "headers": {"X-API-Key": self.api_key, "User-Agent": f"wrenn-python/{_version()}"},
            "timeout": DEFAULT_TIMEOUT,
        }


def proxy_url(base_url: str, capsule_id: str, port: int) -> str:
    """The URL that reaches `port` inside a capsule through the control plane's host-based proxy:
    `ws://{port}-{capsule_id}.{host[:port]}` for an `http` base URL, `wss://...` otherwise. The base
    URL's path (say `/api` behind a reverse proxy) is not part of it: the proxy routes on the host."""
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    url = httpx.URL(base_url)
    host = url.host
    if url.port:
        host = f"{host}:{url.port}"
    scheme = "ws" if url.scheme == "http" else "wss"
    return f"{scheme}://{port}-{capsule_id}.{host}"
