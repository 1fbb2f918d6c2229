"""The traffic proxy: a request for `{port}-{capsule_id}.{domain}`, or one carrying the E2B SDK's
`E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, reaches that port inside the capsule through its host
agent (`/proxy/{capsule_id}/{port}/{path}`). Every other request goes to the REST app untouched.

As E2B's proxy does: a capsule that is not there (never was, destroyed, failed) is answered 502 "The
sandbox was not found" (which E2B's SDK reads as "not running"); a private capsule's ports want its
traffic token, but envd's port does not (envd's own access token guards it).

With `Settings.sandbox_domain` set, only `{port}-{capsule_id}.{sandbox_domain}` is routed by its Host (the
dashboard and API keep their own origin); a guest's `Set-Cookie` naming a `Domain` other than the host the
client asked for is dropped, so no capsule sets a cookie for a parent domain the dashboard lies under
(docs/security.md, "The dashboard's origin").

It is an ASGI middleware of the FastAPI app, so whoever serves the app serves the proxy too."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State

from wrenn._shared.asgiproxy import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    Unreachable,
    forward,
    path_problem,
    send_error,
    send_sandbox_not_found,
)

from . import _errors
from ._agents import AgentPool, Traffic
from ._limits import TokenBuckets, client_address, retry_after
from ._security import KEY_PREFIXES, Tokens
from ._settings import Settings
from .db import Capsule, Host, HostStatus, as_utc, states, utcnow
from .db import CapsuleStatus as S
from .service import CapsuleService

log = logging.getLogger("wrenn.controlplane.proxy")

#: `{port}-{capsule_id}.{anything}`, the port optional after the host.
_HOST = re.compile(r"^(\d{1,5})-(cl-[0-9a-z]{1,60})\.([^:]+)(:\d+)?$")
_SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
TOKEN_HEADERS = (b"x-traffic-access-token", b"e2b-traffic-access-token")
#: Wrenn's own credentials: never forwarded into a guest (the application's own headers pass).
WRENN_HEADERS = frozenset({b"x-api-key", b"x-host-token", b"x-wrenn-agent-token", *TOKEN_HEADERS})
#: envd's port in every capsule: guarded by envd's access token, never by the traffic token. Its
#: `/files` URLs may be signed (E2B's signed URLs).
ENVD_PORT = 49983
#: A capsule's `last_active_at` is bumped by proxied requests at most this often.
TOUCH_INTERVAL = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Target:
    capsule_id: str
    port: int


def target(headers: list[tuple[bytes, bytes]], domain: str = "") -> Target | None:
    """The capsule port a request is for, from its Host (under `domain`, when given) or its E2B headers;
    None: not proxy traffic."""
    found = {k.lower(): v.decode("latin-1") for k, v in headers}
    if (m := _HOST.match(found.get(b"host", "").lower())) and (not domain or m.group(3) == domain):
        return Target(m.group(2), int(m.group(1)))
    capsule_id, port = found.get(b"e2b-sandbox-id", ""), found.get(b"e2b-sandbox-port", "")
    if _SANDBOX_ID.match(capsule_id) and port.isdigit() and len(port) <= 5:
        return Target(capsule_id, int(port))
    return None


def _wrenn_cookie(pair: bytes) -> bool:
    """Whether a `name=value` of a Cookie header is Wrenn's: the dashboard's session (`__Host-wrenn_session`)
    or any cookie named `wrenn*` (with or without a `__Host-`/`__Secure-` prefix)."""
    name = pair.split(b"=", 1)[0].strip().lower()
    for prefix in (b"__host-", b"__secure-"):
        name = name.removeprefix(prefix)
    return name.startswith(b"wrenn")


def _cookie_stays(value: bytes, host: str) -> bool:
    """Whether a guest's `Set-Cookie` may reach the client: host-only (no `Domain`) or for exactly the host
    the client asked for. A `Domain` naming a parent (`example.com` from `8000-cl-x.example.com`) would
    reach every host under it, the dashboard's too, and is dropped."""
    for attribute in value.decode("latin-1").split(";")[1:]:
        name, _, domain = attribute.partition("=")
        if name.strip().lower() == "domain" and domain.strip().lstrip(".").lower() != host:
            return False
    return True


def _guest_cookies_scoped(send: Send, host: str) -> Send:
    """`send` that drops the response's `Set-Cookie` headers that do not stay on `host`."""

    async def scoped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            kept = [(k, v) for k, v in headers if k.lower() != b"set-cookie" or _cookie_stays(v, host)]
            if len(kept) != len(headers):
                log.info("guest cookie for another domain dropped", extra={"host": host})
                message = {**message, "headers": kept}
        await send(message)

    return scoped


class TrafficProxy:
    """The middleware: `state` is the app's, holding `sessions` and `agents` once it has started."""

    def __init__(self, app: ASGIApp, state: State, settings: Settings) -> None:
        self.app = app
        self.state = state
        self.settings = settings
        self.per_address = TokenBuckets(settings.rate_proxy_per_address, settings.burst_proxy_per_address)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] in ("http", "websocket"):
            found = target(scope["headers"], self.settings.sandbox_domain)
        if found is None:
            await self.app(scope, receive, send)
            return
        outcome = await self._proxy(found, scope, receive, send)
        self.state.metrics.proxy_requests.labels(outcome).inc()

    async def _proxy(self, found: Target, scope: Scope, receive: Receive, send: Send) -> str:
        """Forward the request, or answer why not; the outcome (`forwarded`, or an error code)."""
        if (wait := self.per_address.take(client_address(scope))) > 0:
            retry = {"Retry-After": retry_after(wait)}
            await send_error(scope, send, 429, "rate_limited", "too many requests: slow down", retry)
            return "rate_limited"
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if problem := path_problem(path):  # before any lookup: nothing but a plain path is forwarded
            await send_error(scope, send, 400, "invalid_request", problem)
            return "invalid_request"
        query = scope.get("query_string", b"").decode("latin-1")
        if problem := self._signature_problem(found, path, query):
            await send_error(scope, send, 403, "forbidden", problem)
            return "forbidden"
        try:
            traffic = await self._resolve(found, scope["headers"])
        except _errors.ApiError as exc:
            if exc.code == "not_found":
                await send_sandbox_not_found(scope, send, found.capsule_id, exc.message)
            elif exc.code == "sandbox_paused":  # E2B's fields too: its SDK reads them as "not running"
                extra = {"sandboxId": found.capsule_id, "message": "The sandbox is paused", "code": 502}
                await send_error(scope, send, exc.status, exc.code, exc.message, extra)
            else:
                await send_error(scope, send, exc.status, exc.code, exc.message)
            return exc.code
        url = f"{traffic.base_url}/proxy/{found.capsule_id}/{found.port}{path}" + (
            f"?{query}" if query else ""
        )
        guest_scope = {**scope, "headers": self._guest_headers(scope["headers"])}
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower().rsplit(":", 1)[0]
        counted_receive, counted_send = self._counted(receive, _guest_cookies_scoped(send, host))
        try:
            await forward(
                guest_scope, counted_receive, counted_send, traffic.client, url,
                extra_headers=traffic.headers,
            )  # fmt: skip
        except Unreachable as exc:
            log.warning("host agent unreachable", extra={"capsule": found.capsule_id, "error": str(exc)})
            message = f"the host of capsule {found.capsule_id} is unreachable"
            await send_error(scope, send, 503, "host_unavailable", message)
            return "host_unavailable"
        return "forwarded"

    def _counted(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        """`receive` and `send` that count the body bytes they carry (HTTP bodies, WebSocket frames)."""
        to_guest = self.state.metrics.proxy_bytes.labels("in")
        from_guest = self.state.metrics.proxy_bytes.labels("out")

        async def counted_receive() -> Message:
            message = await receive()
            if size := _body_size(message):
                to_guest.inc(size)
            return message

        async def counted_send(message: Message) -> None:
            if size := _body_size(message):
                from_guest.inc(size)
            await send(message)

        return counted_receive, counted_send

    def _signature_problem(self, found: Target, path: str, query: str) -> str | None:
        """Why a signed envd file URL is refused (an operator's policy may require an expiry), or None."""
        if not self.settings.require_signed_url_expiry or found.port != ENVD_PORT:
            return None
        if not path.startswith("/files"):
            return None
        params = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
        if "signature" in params and "signature_expiration" not in params:
            return "this platform requires signed file URLs to expire (signature_expiration)"
        return None

    def _guest_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The request's headers without Wrenn's credentials: API and host keys, traffic tokens, an
        `Authorization` that carries a Wrenn token or key, and cookies named `wrenn*`. The application's
        own `Authorization` and cookies pass untouched."""
        tokens: Tokens = self.state.tokens
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lowered = name.lower()
            if lowered in WRENN_HEADERS:
                continue
            if lowered == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                credential = credential.strip()
                if scheme.lower() == "bearer" and (
                    credential.startswith(KEY_PREFIXES) or tokens.is_ours(credential)
                ):
                    continue
            if lowered == b"cookie":
                kept = [c for c in value.split(b";") if not _wrenn_cookie(c)]
                if not kept:
                    continue
                value = b";".join(kept).strip()
            out.append((name, value))
        return out

    async def _resolve(self, found: Target, headers: list[tuple[bytes, bytes]]) -> Traffic:
        """How to reach the traffic listener of the capsule's host, once the request may go there."""
        if not 0 < found.port < 65536:
            raise _errors.bad_request(f"port must be 1-65535, not {found.port}")
        sessions: async_sessionmaker[AsyncSession] = self.state.sessions
        async with sessions() as session:
            capsule = await session.get(Capsule, found.capsule_id)
            if capsule is None or capsule.status in (S.STOPPED, S.ERROR):
                raise _errors.not_found(f"capsule {found.capsule_id}")
            if capsule.traffic_access_token is not None and found.port != ENVD_PORT:
                given = next((v for k, v in headers if k.lower() in TOKEN_HEADERS), b"")
                if not hmac.compare_digest(given, capsule.traffic_access_token.encode()):
                    raise _errors.forbidden(f"capsule {capsule.id} needs its X-Traffic-Access-Token")
            await self._ensure_running(session, capsule)
            host = await session.get(Host, capsule.host_id) if capsule.host_id else None
            if host is None or host.status != HostStatus.ONLINE or not host.proxy_port:
                raise _errors.ApiError(
                    503, "host_unavailable", f"the host of capsule {capsule.id} is unavailable"
                )
            now = utcnow()
            if capsule.last_active_at is None or now - as_utc(capsule.last_active_at) > TOUCH_INTERVAL:
                capsule.last_active_at = now
                await session.commit()
            agents: AgentPool = self.state.agents
            return agents.traffic(host.address, host.proxy_port, host_id=host.id)

    async def _ensure_running(self, session: AsyncSession, capsule: Capsule) -> None:
        """Raise unless the capsule runs; traffic to a paused capsule resumes it first when it was created
        with auto-resume (every `/v1` capsule; E2B's only with `autoResume`), else it is answered 502
        `sandbox_paused`, as E2B's proxy answers. (One its host paused at the idle timeout, which the
        database learns only at the next reconcile, is resumed by the agent's own proxy.)"""
        if capsule.status in states.ASLEEP and not capsule.auto_resume:
            message = f"capsule {capsule.id} is paused (it was created without auto-resume): resume it first"
            raise _errors.ApiError(502, "sandbox_paused", message)
        if capsule.status in (S.PAUSED, S.HIBERNATED):
            log.info("traffic resumes a paused capsule", extra={"capsule": capsule.id, "was": capsule.status})
            service = CapsuleService(session, self.state.agents, self.state.settings, self.state.metrics)
            await service.resume(capsule, None)
            return
        if capsule.status == S.MISSING:
            raise _errors.ApiError(
                503, "host_unavailable", f"the host of capsule {capsule.id} is unreachable"
            )
        if capsule.status != S.RUNNING:
            raise _errors.invalid_state(f"capsule {capsule.id} is {capsule.status}")


def _body_size(message: Message) -> int:
    """The payload bytes of an ASGI message: an HTTP body chunk or a WebSocket frame."""
    body = message.get("body") or message.get("bytes") or message.get("text") or b""
    return len(body.encode() if isinstance(body, str) else body)
