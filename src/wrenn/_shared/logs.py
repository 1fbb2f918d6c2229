"""Structured logging shared by every Wrenn process (standard library only).

Records are one line each: `time level logger message key=value ...`, where the pairs come from the
`extra=` mapping of the logging call. `--log-format json` gives one JSON object per line instead. A record
made while a request is handled has its `request_id` (below).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<5} {record.name} {record.getMessage()}"
        pairs = " ".join(f"{k}={_quote(v)}" for k, v in _extras(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send the root logger to stderr in the chosen format. Safe to call more than once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# --- the request id ------------------------------------------------------------------------------
# One create carries one id from the client through the control plane, the agent and envd: each process
# takes it from the `X-Request-Id` header (`RequestIdMiddleware`), keeps it in a context variable while it
# handles that request (so every log record made meanwhile has `request_id`: `RequestIdFilter`), and
# sends it on with the calls it makes for that request (`RequestIdInterceptor`, `request_id_headers`).

#: The header a request's id travels in.
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("wrenn_request_id", default="")
_VALID_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id() -> str:
    """The id of the request being handled ('' outside one)."""
    return _REQUEST_ID.get()


@contextlib.contextmanager
def request_id_bound(value: str) -> Iterator[None]:
    """`value` is the request id within the block (work done for a request outside its handler)."""
    token = _REQUEST_ID.set(value)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


def checked_request_id(value: str | None) -> str:
    """`value` if it may be a request id (1 to 128 characters of a URL-safe set: it goes into logs and
    headers verbatim), else ''."""
    return value if value and _VALID_ID.fullmatch(value) else ""


def request_id_headers() -> dict[str, str]:
    """`{X-Request-Id: <id>}` inside a request, else {}: for the calls made on its behalf."""
    found = _REQUEST_ID.get()
    return {REQUEST_ID_HEADER: found} if found else {}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to each record made while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _REQUEST_ID.get()
        if found and not hasattr(record, "request_id"):
            record.request_id = found
        return True


class RequestIdMiddleware:
    """ASGI middleware: the request's `X-Request-Id` (a new one when it has none and `create`) is the
    context's request id while the request is handled, and is sent back with the answer when `echo`."""

    def __init__(self, app: Any, *, create: bool = True, echo: bool = True) -> None:
        self.app = app
        self.create = create
        self.echo = echo

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        found = checked_request_id(given.decode("latin-1")) or (new_request_id() if self.create else "")
        if not found:
            await self.app(scope, receive, send)
            return
        token = _REQUEST_ID.set(found)
        header = (b"x-request-id", found.encode())

        async def answer(message: Any) -> None:
            if self.echo and message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*kept, header]}
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            _REQUEST_ID.reset(token)


class RequestIdInterceptor:
    """A connectrpc metadata interceptor (async clients) that sends the request id of the context."""

    async def on_start(self, ctx: Any) -> None:
        found = _REQUEST_ID.get()
        if found:
            ctx.request_headers[REQUEST_ID_HEADER] = found

    async def on_end(self, token: None, ctx: Any, error: Exception | None) -> None:
        return None


async def add_request_id(request: Any) -> None:
    """An httpx request hook: the context's request id on the request."""
    found = _REQUEST_ID.get()
    if found:
        request.headers[REQUEST_ID_HEADER] = found
