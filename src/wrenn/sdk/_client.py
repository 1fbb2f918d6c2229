"""`WrennClient` and `AsyncWrennClient`: the REST API one resource at a time, as the seed SDK's
`wrenn.client` offers it (`.capsules`, `.snapshots`, `.events`, `.http`), over the same calls as
`Capsule` (`_api`).

`capsules.stats`, `capsules.usage` and `events.stream` reach routes that a Wrenn server answers 501 until
it serves them (they raise `WrennError` saying so)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterator
from datetime import date
from types import TracebackType
from typing import Any

import httpx

from . import _api
from ._config import Config
from ._exceptions import aerror_from_response, error_from_response
from ._models import CapsuleInfo, Template
from ._sse import SSEParser, sse_events
from ._transport import run_async, run_sync

__all__ = ["AsyncWrennClient", "WrennClient"]


def _usage_params(from_: date | str | None, to: date | str | None) -> dict[str, str]:
    return {k: str(v) for k, v in (("from", from_), ("to", to)) if v is not None}


class CapsulesResource:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def create(
        self,
        template: str | None = None,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        timeout_sec: int | None = None,
    ) -> CapsuleInfo:
        return run_sync(self._http, _api.create_capsule(template, vcpus, memory_mb, timeout_sec))

    def list(self) -> builtins.list[CapsuleInfo]:
        return run_sync(self._http, _api.list_capsules())

    def get(self, id: str) -> CapsuleInfo:
        return run_sync(self._http, _api.get_capsule(id))

    def destroy(self, id: str) -> None:
        run_sync(self._http, _api.destroy_capsule(id))

    def pause(self, id: str) -> CapsuleInfo:
        return run_sync(self._http, _api.pause_capsule(id))

    def resume(self, id: str) -> CapsuleInfo:
        return run_sync(self._http, _api.resume_capsule(id))

    def ping(self, id: str) -> None:
        run_sync(self._http, _api.ping_capsule(id))

    def fork(self, id: str, count: int = 1) -> builtins.list[CapsuleInfo]:
        return run_sync(self._http, _api.fork_capsule(id, count))

    def metrics(self, id: str, range: str | None = None) -> dict[str, Any]:
        return run_sync(self._http, _api.capsule_metrics(id, range))

    def stats(self, range: str | None = None) -> dict[str, Any]:
        return run_sync(self._http, _api.team_get("/v1/capsules/stats", {"range": range} if range else None))

    def usage(self, from_: date | str | None = None, to: date | str | None = None) -> dict[str, Any]:
        return run_sync(self._http, _api.team_get("/v1/capsules/usage", _usage_params(from_, to)))


class SnapshotsResource:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def create(self, capsule_id: str, name: str | None = None, overwrite: bool = False) -> Template:
        return run_sync(self._http, _api.create_snapshot(capsule_id, name, overwrite))

    def list(self, type: str | None = None) -> builtins.list[Template]:
        return run_sync(self._http, _api.list_snapshots(type))

    def delete(self, name: str) -> None:
        run_sync(self._http, _api.delete_snapshot(name))


class EventsResource:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def stream(self, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The team's lifecycle events as they happen (the seed's `SSEEvent` bodies: a `connected` one
        first), until the caller stops iterating; `last_event_id` (an event's `id`) resumes after it."""
        with self._http.stream("GET", "/v1/events/stream", headers=_resume(last_event_id), timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                raise error_from_response(r)
            yield from sse_events(r.iter_lines())


class WrennClient:
    """The REST API by resource; `with WrennClient() as wrenn: wrenn.capsules.list()`."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._http = httpx.Client(**Config.resolve(api_key, base_url).client_kwargs())
        self.capsules = CapsulesResource(self._http)
        self.snapshots = SnapshotsResource(self._http)
        self.events = EventsResource(self._http)

    @property
    def http(self) -> httpx.Client:
        return self._http

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WrennClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncCapsulesResource:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def create(
        self,
        template: str | None = None,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        timeout_sec: int | None = None,
    ) -> CapsuleInfo:
        return await run_async(self._http, _api.create_capsule(template, vcpus, memory_mb, timeout_sec))

    async def list(self) -> builtins.list[CapsuleInfo]:
        return await run_async(self._http, _api.list_capsules())

    async def get(self, id: str) -> CapsuleInfo:
        return await run_async(self._http, _api.get_capsule(id))

    async def destroy(self, id: str) -> None:
        await run_async(self._http, _api.destroy_capsule(id))

    async def pause(self, id: str) -> CapsuleInfo:
        return await run_async(self._http, _api.pause_capsule(id))

    async def resume(self, id: str) -> CapsuleInfo:
        return await run_async(self._http, _api.resume_capsule(id))

    async def ping(self, id: str) -> None:
        await run_async(self._http, _api.ping_capsule(id))

    async def fork(self, id: str, count: int = 1) -> builtins.list[CapsuleInfo]:
        return await run_async(self._http, _api.fork_capsule(id, count))

    async def metrics(self, id: str, range: str | None = None) -> dict[str, Any]:
        return await run_async(self._http, _api.capsule_metrics(id, range))

    async def stats(self, range: str | None = None) -> dict[str, Any]:
        params = {"range": range} if range else None
        return await run_async(self._http, _api.team_get("/v1/capsules/stats", params))

    async def usage(self, from_: date | str | None = None, to: date | str | None = None) -> dict[str, Any]:
        return await run_async(self._http, _api.team_get("/v1/capsules/usage", _usage_params(from_, to)))


class AsyncSnapshotsResource:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def create(self, capsule_id: str, name: str | None = None, overwrite: bool = False) -> Template:
        return await run_async(self._http, _api.create_snapshot(capsule_id, name, overwrite))

    async def list(self, type: str | None = None) -> builtins.list[Template]:
        return await run_async(self._http, _api.list_snapshots(type))

    async def delete(self, name: str) -> None:
        await run_async(self._http, _api.delete_snapshot(name))


class AsyncEventsResource:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def stream(self, last_event_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """As `EventsResource.stream`."""
        headers = _resume(last_event_id)
        async with self._http.stream("GET", "/v1/events/stream", headers=headers, timeout=None) as r:
            if r.status_code >= 400:
                await r.aread()
                raise await aerror_from_response(r)
            pending = SSEParser()
            async for line in r.aiter_lines():
                if (event := pending.feed(line)) is not None:
                    yield event


def _resume(last_event_id: str | None) -> dict[str, str]:
    return {"Last-Event-ID": last_event_id} if last_event_id else {}


class AsyncWrennClient:
    """`async with AsyncWrennClient() as wrenn: await wrenn.capsules.list()`."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._http = httpx.AsyncClient(**Config.resolve(api_key, base_url).client_kwargs())
        self.capsules = AsyncCapsulesResource(self._http)
        self.snapshots = AsyncSnapshotsResource(self._http)
        self.events = AsyncEventsResource(self._http)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncWrennClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
