"""Team stats and usage (`/v1/capsules/stats`, `/v1/capsules/usage`, from the samples `service.usage`
keeps), and the seed's event stream, which Wrenn does not serve yet: it answers 501 `not_implemented` with
a sentence saying so, which the seed SDK raises as its `WrennError`. Registered before the capsule routes
(`/v1/capsules/stats` would otherwise fall to `/v1/capsules/{id}`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from .. import _errors
from .._deps import Caller, Capsules
from ..service import usage

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
async def event_stream(caller: Caller) -> None:
    raise _errors.ApiError(
        501, "not_implemented", "the event stream (/v1/events/stream) is not served yet by this Wrenn server"
    )
