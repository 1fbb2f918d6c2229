"""Talking to host agents: one Connect client per host, agent errors mapped to API errors."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

from ._errors import ApiError

_T = TypeVar("_T")

#: Agent codes as the API answers them (the seed's mapping, with unreachable hosts made explicit).
_STATUS = {
    Code.NOT_FOUND: (404, "not_found"),
    Code.INVALID_ARGUMENT: (400, "invalid_request"),
    Code.FAILED_PRECONDITION: (409, "invalid_state"),
    Code.ALREADY_EXISTS: (409, "conflict"),
    Code.PERMISSION_DENIED: (403, "forbidden"),
    Code.RESOURCE_EXHAUSTED: (503, "no_hosts_available"),
    Code.UNAVAILABLE: (503, "host_unavailable"),
    Code.UNIMPLEMENTED: (501, "not_implemented"),
    Code.DEADLINE_EXCEEDED: (504, "timeout"),
}


def agent_error(exc: ConnectError, host_id: str) -> ApiError:
    status, code = _STATUS.get(exc.code, (502, "agent_error"))
    if exc.code is Code.UNAVAILABLE and "does not answer" not in exc.message:
        return ApiError(503, "host_unavailable", f"host {host_id} is unreachable: {exc.message}")
    return ApiError(status, code, exc.message)


class AgentPool:
    def __init__(self) -> None:
        self._clients: dict[str, HostAgentServiceClient] = {}

    def client(self, address: str) -> HostAgentServiceClient:
        found = self._clients.get(address)
        if found is None:
            found = self._clients[address] = HostAgentServiceClient(address)
        return found

    async def call(self, host_id: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except ConnectError as exc:
            raise agent_error(exc, host_id) from None
        except OSError as exc:
            raise ApiError(503, "host_unavailable", f"host {host_id} is unreachable: {exc}") from None

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
