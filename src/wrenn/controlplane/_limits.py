"""Limits on what one client may send: request bodies (413) and request rates (429 with `Retry-After`).

**Bodies.** Every request body is capped at `max_body_bytes` (1 MiB: JSON bodies are small), checked on
`Content-Length` before anything is read and counted while it streams (chunked bodies). Two routes differ:
`files/write` and a template build's files (its upload URL, the archive of a recipe build) take up to
`max_upload_bytes` (100 MB), and `files/stream/write` is streamed to
the guest and has no cap. The traffic proxy's bodies are the guest's business and are not capped.

**Rates.** Token buckets (a sustained rate per second, and a burst) per API key or user token, per client
address on the API, per client address on the POSTs that need no credential (sign-up, login, the admin
bootstrap, host registration and refresh, activation, password reset; reading or ending a dashboard session
is not one of them) and on identity providers' round trips, and
per client address on the traffic proxy.

The buckets live in each control plane process, by design: they protect the process that holds them from
floods (a request costs the process that serves it), and a shared counter would cost a database write per
request, proxy traffic included. With N control planes behind a load balancer a client gets up to N times
the rate. The limits whose point is security, not load, are kept in the database and shared by every
control plane: failed logins (per email and address, per address, per email), and single-use tokens.

The client address is the connection's peer, or what a trusted proxy in front says (`X-Forwarded-For`
from the addresses in uvicorn's `--forwarded-allow-ips` / `FORWARDED_ALLOW_IPS`, 127.0.0.1 by default).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from wrenn._shared.asgiproxy import ASGIApp, Receive, Scope, Send

from ._session import COOKIE
from ._settings import Settings

#: Routes anyone may call without a credential: rate-limited per address, tighter.
UNAUTHENTICATED = frozenset(
    {
        "/v1/auth/signup",
        "/v1/auth/login",
        "/v1/admin/bootstrap",
        "/v1/dashboard/session",
        "/v1/dashboard/signup",
        "/v1/hosts/register",
        "/v1/hosts/auth/refresh",
        "/v1/auth/activate",
        "/v1/dashboard/activate",
        "/v1/auth/activate/resend",
        "/v1/me/password/reset",
        "/v1/me/password/reset/confirm",
    }
)
#: The identity providers' round trips (start and callback), likewise.
_OAUTH = re.compile(r"^/v1/auth/oauth/[^/]+(/callback)?/?$")
_STREAM_WRITE = re.compile(r"^/v1/capsules/[^/]+/files/stream/write/?$")
_FILE_WRITE = re.compile(r"^/v1/capsules/[^/]+/files/write/?$")
#: A template build's files: E2B's signed upload URL, and the multipart builds of /v1 (recipe + archive).
_BUILD_FILES = re.compile(r"^(/templates/[^/]+/files/[^/]+/upload|/v1/admin/builds|/v1/templates/builds)/?$")
#: Room for a multipart body's boundaries and headers around `max_upload_bytes` of file.
MULTIPART_SLACK = 64 * 1024


class TokenBuckets:
    """Token buckets by key, in memory, at most `max_keys` of them (the least recently used go first: a
    bucket left alone for long is full anyway)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`: 0 if there was one, else the seconds until there is."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _credential(scope: Scope) -> str | None:
    """A digest of the request's credential (API key, bearer token, host token or the dashboard's session
    cookie), if any."""
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered in (b"x-api-key", b"x-host-token") or (
            lowered == b"authorization" and value[:7].lower() == b"bearer "
        ):
            return hashlib.sha256(value).hexdigest()[:32]
    session = HTTPConnection(scope).cookies.get(COOKIE)
    return hashlib.sha256(session.encode()).hexdigest()[:32] if session else None


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


@dataclass(frozen=True, slots=True)
class Limited:
    """A refusal the middleware answers itself (the app never sees the request)."""

    status: int
    code: str
    message: str
    headers: dict[str, str]


#: Writes an error answer in the right dialect for a path: (scope, send, Limited) -> None.
Responder = Callable[[Scope, Send, Limited], Any]


class RequestLimits:
    """The ASGI middleware in front of the REST API (behind the traffic proxy, which has its own rate)."""

    def __init__(self, app: ASGIApp, settings: Settings, respond: Responder) -> None:
        self.app = app
        self.settings = settings
        self.respond = respond
        self.per_key = TokenBuckets(settings.rate_per_key, settings.burst_per_key)
        self.per_address = TokenBuckets(settings.rate_per_address, settings.burst_per_address)
        self.unauthenticated = TokenBuckets(settings.rate_unauthenticated, settings.burst_unauthenticated)

    def _rate(self, scope: Scope) -> float:
        """0 when the request may go on, else the seconds to wait."""
        address = client_address(scope)
        waits = [self.per_address.take(address)]
        path = scope["path"]
        if (scope.get("method") == "POST" and path.rstrip("/") in UNAUTHENTICATED) or _OAUTH.match(path):
            waits.append(self.unauthenticated.take(address))
        credential = _credential(scope)
        if credential is not None:
            waits.append(self.per_key.take(credential))
        return max(waits)

    def body_limit(self, path: str) -> int | None:
        """The most bytes a request body to `path` may have (None: no limit)."""
        if _STREAM_WRITE.match(path):
            return None
        if _FILE_WRITE.match(path) or _BUILD_FILES.match(path):
            return self.settings.max_upload_bytes + MULTIPART_SLACK
        return self.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        wait = self._rate(scope)
        if wait > 0:
            await self.respond(
                scope, send,
                Limited(429, "rate_limited", "too many requests: slow down",
                        {"Retry-After": retry_after(wait)}),
            )  # fmt: skip
            return
        limit = self.body_limit(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > limit):
            too_large = f"the request body is over the limit of {limit} bytes"
            await self.respond(scope, send, Limited(413, "too_large", too_large, {"Connection": "close"}))
            return
        await self.app(scope, _capped(receive, limit), send)


def _capped(receive: Receive, limit: int) -> Receive:
    """`receive`, failing with 413 once the body it delivers goes over `limit` bytes."""
    seen = 0

    async def capped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"the request body is over the limit of {limit} bytes")
        return message

    return capped
