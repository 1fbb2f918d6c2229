"""The seed's observability routes that Wrenn does not serve yet (the observability issue builds them):
each answers 501 `not_implemented` with a sentence saying so, which the seed SDK raises as its
`WrennError`, rather than a 404 that reads as "no such capsule" (`/v1/capsules/stats` would otherwise
fall to `/v1/capsules/{id}`). Registered before the capsule routes for that reason."""

from __future__ import annotations

from fastapi import APIRouter

from .. import _errors
from .._deps import Caller

router = APIRouter(tags=["observability"])


def _not_served(what: str) -> _errors.ApiError:
    return _errors.ApiError(501, "not_implemented", f"{what} is not served yet by this Wrenn server")


@router.get("/v1/capsules/stats")
async def capsule_stats(caller: Caller) -> None:
    raise _not_served("capsule stats (/v1/capsules/stats)")


@router.get("/v1/capsules/usage")
async def capsule_usage(caller: Caller) -> None:
    raise _not_served("usage (/v1/capsules/usage)")


@router.get("/v1/events/stream")
async def event_stream(caller: Caller) -> None:
    raise _not_served("the event stream (/v1/events/stream)")
