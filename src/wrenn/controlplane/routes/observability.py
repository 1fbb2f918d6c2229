"""Team stats and usage (`/v1/capsules/stats`, `/v1/capsules/usage`, from the samples `service.usage`
keeps), and the seed's event stream (`/v1/events/stream`, server-sent events from the outbox:
`service.event_stream`). Registered before the capsule routes (`/v1/capsules/stats` would otherwise fall to
`/v1/capsules/{id}`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from .. import _errors
from .._capsule_view import capsule_out
from .._deps import Caller, Capsules
from ..db import Capsule
from ..service import event_stream, usage

router = APIRouter(tags=["observability"])
#: The longest `/v1/capsules/usage` window, in days.
MAX_USAGE_DAYS = 366


@router.get("/v1/capsules/stats")
async def capsule_stats(
    caller: Caller, capsules: Capsules, range: Literal["5m", "1h", "6h", "24h", "30d"] = Query("1h")
) -> dict[str, Any]:
    """What the team runs now, its peaks over 30 days, and a series over `range` (each bucket's highest
    sample)."""
    return await usage.stats(capsules.session, caller.team_id, range)


@router.get("/v1/capsules/usage")
async def capsule_usage(
    caller: Caller,
    capsules: Capsules,
    from_: Annotated[str | None, Query(alias="from", max_length=10)] = None,
    to: Annotated[str | None, Query(max_length=10)] = None,
) -> dict[str, Any]:
    """CPU-minutes and RAM-MB-minutes per UTC day from `from` (30 days ago) to `to` (today)."""
    end = _day("to", to) or datetime.now(UTC).date()
    start = _day("from", from_) or end - timedelta(days=30)
    if start > end:
        raise _errors.bad_request("from: after to")
    if (end - start).days >= MAX_USAGE_DAYS:
        raise _errors.bad_request(f"from, to: at most {MAX_USAGE_DAYS} days")
    return await usage.usage(capsules.session, caller.team_id, start, end)


def _day(name: str, value: str | None) -> date | None:
    """A `YYYY-MM-DD` date (nothing else: no time, no other form)."""
    if value is None:
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise _errors.bad_request(f"{name}: a date as YYYY-MM-DD") from None


@router.get("/v1/events/stream")
async def event_stream_route(caller: Caller, request: Request) -> StreamingResponse:
    """The team's events as they are committed, as server-sent events (the seed's `SSEEvent`s), until the
    client goes; `Last-Event-ID` resumes after that event."""
    sessions = request.app.state.sessions
    async with sessions() as session:
        cursor = await event_stream.Cursor.start(
            session, caller.team_id, request.headers.get("last-event-id")
        )

    def sandbox(capsule: Capsule) -> dict[str, Any]:
        return capsule_out(capsule).model_dump(mode="json")

    async def frames() -> AsyncIterator[bytes]:
        yield event_stream.connected()
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            async with sessions() as session:
                found = await cursor.next(session, sandbox)
            for one in found:
                yield one
            if found:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= event_stream.KEEPALIVE_S:
                yield event_stream.KEEPALIVE
                quiet_since = time.monotonic()
            await asyncio.sleep(event_stream.POLL_S)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)
