"""What the agent's RPC handlers share: agent and envd failures as Connect errors, timestamps, and a
running sandbox's envd with the headers to call it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from ._envd import EnvdClient, EnvdUnavailable, FileTransferError
from ._errors import SandboxError
from ._manager import SandboxManager

_T = TypeVar("_T")
#: Seconds of silence after which agent streams send a keepalive.
KEEPALIVE_S = 30


def ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def connect_error(exc: BaseException) -> ConnectError:
    if isinstance(exc, ConnectError):
        if exc.code is Code.UNAUTHENTICATED:  # envd: unknown user
            return ConnectError(Code.INVALID_ARGUMENT, exc.message)
        return exc
    if isinstance(exc, SandboxError):
        return ConnectError(Code[exc.code.upper()], exc.message)
    if isinstance(exc, FileTransferError):
        code = {
            400: Code.INVALID_ARGUMENT,
            401: Code.INVALID_ARGUMENT,
            403: Code.PERMISSION_DENIED,
            404: Code.NOT_FOUND,
            413: Code.RESOURCE_EXHAUSTED,
            507: Code.RESOURCE_EXHAUSTED,
        }.get(exc.status, Code.INTERNAL)
        return ConnectError(code, exc.message)
    if isinstance(exc, (httpx.TransportError, OSError)):
        return ConnectError(Code.UNAVAILABLE, f"envd in the sandbox does not answer: {exc}")
    if isinstance(exc, EnvdUnavailable):  # it answered, but not as envd would
        return ConnectError(Code.UNAVAILABLE, f"envd in the sandbox: {exc}")
    return ConnectError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")


async def call(awaitable: Awaitable[_T]) -> _T:
    try:
        return await awaitable
    except (
        ConnectError,
        SandboxError,
        FileTransferError,
        EnvdUnavailable,
        httpx.TransportError,
        OSError,
    ) as exc:
        raise connect_error(exc) from None


async def quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - best effort: the process may already be gone
        return


class EnvdRPCs:
    """Base of the RPC handlers that go through a sandbox's envd (processes, terminals, files)."""

    m: SandboxManager

    def _envd(self, sandbox_id: str, user: str = "") -> tuple[EnvdClient, dict[str, str]]:
        try:
            sandbox = self.m.running(sandbox_id)
        except SandboxError as exc:
            raise connect_error(exc) from None
        assert sandbox.envd is not None
        return sandbox.envd, {
            **sandbox.envd.headers(user or None),
            "Keepalive-Ping-Interval": str(KEEPALIVE_S),
        }
