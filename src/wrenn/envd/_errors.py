"""Mapping filesystem and lookup failures to Connect codes and HTTP statuses, with clear messages."""

from __future__ import annotations

import errno
from http import HTTPStatus

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from ._paths import BadPathError
from ._users import UnknownUserError

_ERRNO_CODES: dict[int, tuple[Code, HTTPStatus]] = {
    errno.ENOENT: (Code.NOT_FOUND, HTTPStatus.NOT_FOUND),
    errno.ENOTDIR: (Code.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST),
    errno.EISDIR: (Code.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST),
    errno.EEXIST: (Code.ALREADY_EXISTS, HTTPStatus.CONFLICT),
    errno.ENOTEMPTY: (Code.FAILED_PRECONDITION, HTTPStatus.CONFLICT),
    errno.EACCES: (Code.PERMISSION_DENIED, HTTPStatus.FORBIDDEN),
    errno.EPERM: (Code.PERMISSION_DENIED, HTTPStatus.FORBIDDEN),
    errno.EROFS: (Code.PERMISSION_DENIED, HTTPStatus.FORBIDDEN),
    errno.ENOSPC: (Code.RESOURCE_EXHAUSTED, HTTPStatus.INSUFFICIENT_STORAGE),
    errno.EDQUOT: (Code.RESOURCE_EXHAUSTED, HTTPStatus.INSUFFICIENT_STORAGE),
    errno.ENAMETOOLONG: (Code.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST),
    errno.ELOOP: (Code.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST),
    errno.EXDEV: (Code.FAILED_PRECONDITION, HTTPStatus.CONFLICT),
    errno.EINVAL: (Code.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST),
}


def _describe(exc: OSError, path: str | None) -> str:
    reason = exc.strerror or str(exc)
    where = path or exc.filename
    return f"{where}: {reason.lower()}" if where else reason.lower()


def classify(exc: BaseException, path: str | None = None) -> tuple[Code, HTTPStatus, str]:
    """The Connect code, HTTP status and message for a failure while handling `path`."""
    if isinstance(exc, BadPathError):
        return Code.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST, str(exc)
    if isinstance(exc, UnknownUserError):
        return Code.UNAUTHENTICATED, HTTPStatus.UNAUTHORIZED, str(exc)
    if isinstance(exc, OSError):
        code, status = _ERRNO_CODES.get(exc.errno or 0, (Code.INTERNAL, HTTPStatus.INTERNAL_SERVER_ERROR))
        return code, status, _describe(exc, path)
    return Code.INTERNAL, HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {exc}"


def to_connect(exc: BaseException, path: str | None = None) -> ConnectError:
    code, _, message = classify(exc, path)
    return ConnectError(code, message)
