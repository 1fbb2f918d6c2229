"""SDK exceptions and the mapping from the control plane's `{"error": {"code", "message"}}` bodies."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx

__all__ = [
    "WrennAgentError",
    "WrennAuthenticationError",
    "WrennConflictError",
    "WrennError",
    "WrennForbiddenError",
    "WrennHostHasCapsulesError",
    "WrennHostUnavailableError",
    "WrennInternalError",
    "WrennNotFoundError",
    "WrennRateLimitError",
    "WrennTooLargeError",
    "WrennValidationError",
    "error_from_body",
    "error_from_response",
    "raise_for_response",
]


class WrennError(Exception):
    """Base of every error the SDK raises for an API failure.

    Attributes:
        code: the machine-readable code of the API (`"not_found"`, `"invalid_state"`, ...).
        message: the human-readable message.
        status_code: the HTTP status of the response (0 when the error came inside a WebSocket).
    """

    def __init__(self, code: str, message: str, status_code: int) -> None:
        self.code = code
        self.message = message
        self.status_code = status_code
        super().__init__(message)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code!r}, message={self.message!r}, status_code={self.status_code})"


class WrennValidationError(WrennError):
    """400: the request is invalid (`invalid_request`, `name_reserved`)."""


class WrennAuthenticationError(WrennError):
    """401: missing or invalid credentials."""


class WrennForbiddenError(WrennError):
    """403: authenticated but not allowed."""


class WrennNotFoundError(WrennError):
    """404: no such capsule, file, process or template."""


class WrennConflictError(WrennError):
    """409: the resource is in the wrong state (`invalid_state`) or already exists (`conflict`,
    `template_name_taken`)."""


class WrennHostHasCapsulesError(WrennConflictError):
    """409 `has_active_sandboxes`: a host still runs capsules.

    Attributes:
        capsule_ids: the capsules still on the host (the server's `sandbox_ids`).
    """

    def __init__(self, code: str, message: str, status_code: int, capsule_ids: list[str]) -> None:
        super().__init__(code, message, status_code)
        self.capsule_ids = capsule_ids

    @property
    def sandbox_ids(self) -> list[str]:
        """Deprecated name of `capsule_ids`."""
        return self.capsule_ids


class WrennTooLargeError(WrennError):
    """413 `too_large`: an upload over the limit (use `files.upload_stream`)."""


class WrennRateLimitError(WrennError):
    """429: too many requests (for instance login attempts)."""


class WrennHostUnavailableError(WrennError):
    """503: the capsule's host is unreachable (`host_unavailable`) or no host can take a new capsule
    (`no_hosts_available`)."""


class WrennAgentError(WrennError):
    """502: the host agent failed the operation (`agent_error`)."""


class WrennInternalError(WrennError):
    """500, or a response that is not the API's error JSON."""


_BY_CODE: dict[str, type[WrennError]] = {
    "invalid_request": WrennValidationError,
    "name_reserved": WrennValidationError,
    "unauthorized": WrennAuthenticationError,
    "forbidden": WrennForbiddenError,
    "account_deactivated": WrennForbiddenError,
    "account_disabled": WrennForbiddenError,
    "account_not_activated": WrennForbiddenError,
    "no_team": WrennForbiddenError,
    "not_found": WrennNotFoundError,
    "provider_not_found": WrennNotFoundError,
    "invalid_state": WrennConflictError,
    "conflict": WrennConflictError,
    "already_activated": WrennConflictError,
    "template_name_taken": WrennConflictError,
    "has_active_sandboxes": WrennHostHasCapsulesError,
    "host_has_sandboxes": WrennHostHasCapsulesError,  # the seed SDK's names; kept for old servers
    "host_has_capsules": WrennHostHasCapsulesError,
    "too_large": WrennTooLargeError,
    "signup_cooldown": WrennRateLimitError,
    "rate_limited": WrennRateLimitError,
    "host_unavailable": WrennHostUnavailableError,
    "no_hosts_available": WrennHostUnavailableError,
    "agent_error": WrennAgentError,
    "internal_error": WrennInternalError,
    "db_error": WrennInternalError,
}

# Codes the SDK has never heard of fall back on the HTTP status.
_BY_STATUS: dict[int, type[WrennError]] = {
    400: WrennValidationError,
    401: WrennAuthenticationError,
    403: WrennForbiddenError,
    404: WrennNotFoundError,
    409: WrennConflictError,
    413: WrennTooLargeError,
    422: WrennValidationError,
    429: WrennRateLimitError,
    500: WrennInternalError,
    502: WrennAgentError,
    503: WrennHostUnavailableError,
}


def error_from_body(status_code: int, body: Any, fallback_message: str = "") -> WrennError:
    """The exception for an error body `{"error": {"code", "message", ...}}` and its HTTP status.

    Unknown codes map by status (so a new 404 code is still a `WrennNotFoundError`), and anything
    else is a plain `WrennError`. A body that is not the API's error JSON gives `WrennInternalError`
    with code `internal_error`, or the status class when the status is a known one.
    """
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        message = fallback_message or f"HTTP {status_code}"
        return _BY_STATUS.get(status_code, WrennInternalError)("internal_error", message, status_code)
    code = str(err.get("code") or "internal_error")
    message = str(err.get("message") or fallback_message or code)
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status_code, WrennError)
    if cls is WrennHostHasCapsulesError:
        # The server puts the IDs inside "error"; the seed SDK looked at the top level. Accept both.
        ids = err.get("sandbox_ids") or err.get("capsule_ids") or body.get("sandbox_ids") or []
        return WrennHostHasCapsulesError(code, message, status_code, [str(i) for i in ids])
    return cls(code, message, status_code)


def error_from_response(response: httpx.Response) -> WrennError:
    """The exception for a failed response (status >= 400). Reads the body if it was streamed."""
    try:
        raw = response.read()
    except httpx.StreamError:  # already consumed or closed: use what is there
        raw = b""
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    return error_from_body(response.status_code, body, text.strip()[:2000])


async def aerror_from_response(response: httpx.Response) -> WrennError:
    """`error_from_response` for a streamed response of an `httpx.AsyncClient`."""
    with contextlib.suppress(httpx.StreamError):
        await response.aread()
    return error_from_response(response)


def raise_for_response(response: httpx.Response) -> None:
    """Raise the mapped `WrennError` if the response failed."""
    if response.status_code >= 400:
        raise error_from_response(response)
