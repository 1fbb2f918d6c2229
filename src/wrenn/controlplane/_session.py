"""The dashboard's session: the user JWT in a cookie, and when a request may use it.

The cookie is `__Host-wrenn_session`: `Secure`, `HttpOnly`, `SameSite=Strict`, `Path=/`, no `Domain`, so
page scripts cannot read it and no other host (a capsule's `{port}-{id}.{domain}`) can set or shadow it.
SameSite alone does not stop a capsule's page from sending it: capsule hosts are on the same *site* as
the dashboard. So the cookie counts only for requests a cross-origin page cannot make:

- HTTP: the request carries `X-Wrenn-Dashboard: 1` (a custom header needs a CORS preflight, which this
  server never grants; forms cannot send one), and `Sec-Fetch-Site`, when sent, is `same-origin`.
- WebSocket upgrades (no custom headers there): the `Origin`'s host is the request's own `Host`.
- Downloads (`downloadable`): plain GET navigations, with `Sec-Fetch-Site: same-origin` required.

Everything else ignores the cookie, so API clients see no change.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import Response

COOKIE = "__Host-wrenn_session"
HEADER = "x-wrenn-dashboard"


def _same_origin_fetch(conn: HTTPConnection) -> bool:
    site = conn.headers.get("sec-fetch-site")
    return site is None or site == "same-origin"


def _same_origin_socket(conn: HTTPConnection) -> bool:
    origin, host = conn.headers.get("origin", ""), conn.headers.get("host", "")
    return bool(origin and host) and urlsplit(origin).netloc.lower() == host.lower()


def session_token(conn: HTTPConnection) -> str | None:
    """The session cookie's JWT when this request may use it (see the module's docstring), else None."""
    token = conn.cookies.get(COOKIE)
    if not token:
        return None
    if conn.scope["type"] == "websocket":
        return token if _same_origin_socket(conn) else None
    if conn.headers.get(HEADER) == "1" and _same_origin_fetch(conn):
        return token
    return None


def download_token(conn: HTTPConnection) -> str | None:
    """The session cookie's JWT for a download the dashboard navigated to (no custom header possible)."""
    token = conn.cookies.get(COOKIE)
    return token if token and conn.headers.get("sec-fetch-site") == "same-origin" else None


def set_cookie(response: Response, token: str, max_age_s: int) -> None:
    response.set_cookie(
        COOKIE, token, max_age=max_age_s, path="/", secure=True, httponly=True, samesite="strict"
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
