"""How a caller proves itself to an unregistered (local, plain HTTP) host agent: the agent's secret in the
`X-Wrenn-Agent-Token` header on every request, to its API and to its traffic listener alike. Registered
agents use mutual TLS instead and need none of this. Part of the wire contract, written by hand.

    client = HostAgentServiceClient(url, interceptors=[TokenInterceptor(token)])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADER = "x-wrenn-agent-token"
#: The file, in the agent's data directory, that holds the secret (mode 0600, root's).
TOKEN_FILE = "agent-api-token"  # noqa: S105 (a file name)


def read_token(path: Path) -> str:
    """The secret in `path` (as the agent wrote it)."""
    return path.read_text().strip()


class TokenInterceptor:
    """A connectrpc metadata interceptor (async clients) that sends the agent's secret."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def on_start(self, ctx: Any) -> None:
        ctx.request_headers[HEADER] = self._token

    async def on_end(self, token: None, ctx: Any, error: Exception | None) -> None:
        return None


class TokenInterceptorSync:
    """The same for sync clients."""

    def __init__(self, token: str) -> None:
        self._token = token

    def on_start_sync(self, ctx: Any) -> None:
        ctx.request_headers[HEADER] = self._token

    def on_end_sync(self, token: None, ctx: Any, error: Exception | None) -> None:
        return None
