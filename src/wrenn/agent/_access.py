"""Who may call the agent. A registered agent serves both of its listeners over mutual TLS and accepts
only the control plane's certificate. A local agent (`--local-agent` on the control plane, `wrenn up`)
serves plain HTTP on loopback, so anyone on the host could dial it: it requires a secret instead, sent
in `X-Wrenn-Agent-Token` and compared in constant time. The secret lives in a root-only file (0600,
created with that mode) that the control plane reads; local users who cannot read it get 401.

The token travels in a header of its own, never `Authorization`, so that the traffic listener can strip it
and leave the application's own `Authorization` header alone.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from wrenn._shared.asgiproxy import ASGIApp, Receive, Scope, Send, send_error
from wrenn.proto.hostagent.v1.auth import HEADER as _HEADER

log = logging.getLogger("wrenn.agent.access")

HEADER = _HEADER.encode()


def load_or_create_token(path: Path) -> str:
    """The secret in `path`, created (0600, 32 random bytes) when missing. A file readable by others is
    refused: the secret would not be one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _existing(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created the agent's API token", extra={"path": str(path)})
    return token


def _existing(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by other users (mode {oct(mode & 0o777)}): chmod 600 it")
    token = path.read_text().strip()
    if len(token) < 32:
        raise ValueError(f"{path} holds no usable token (32 characters at least)")
    return token


class RequireToken:
    """ASGI middleware: HTTP and WebSocket requests without the token get 401; the header is removed
    before the request goes on. Lifespan passes."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = b""
        headers = []
        for key, value in scope["headers"]:
            if key.lower() == HEADER:
                given = value
            else:
                headers.append((key, value))
        if not hmac.compare_digest(given, self._token):
            await send_error(scope, send, 401, "unauthorized", "this agent needs its API token")
            return
        await self.app({**scope, "headers": headers}, receive, send)
