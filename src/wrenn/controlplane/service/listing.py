"""Lists that page: a team's sandboxes (filtered by state, labels, start time and template, in start-time
order either way) and its templates (by name and source sandbox), cut into pages by an opaque token.

A page token names the last item handed out by its sort key (start time and id, or creation time and
name), not by its position: a page asked for later starts right after that item, whatever was created,
paused, resumed or ended meanwhile, so paging over running and paused sandboxes together neither repeats
nor skips one that stayed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _errors
from ..db import Capsule, Template, as_utc, states

_T = TypeVar("_T")
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SandboxQuery:
    """What E2B's `GET /v2/sandboxes` asks: states ("running", "paused"), labels that must all match,
    sandboxes started after a time, of some templates, oldest (asc) or newest (desc) first."""

    states: frozenset[str] = frozenset({"running", "paused"})
    labels: dict[str, str] = field(default_factory=dict)
    started_after: datetime | None = None
    templates: frozenset[str] = frozenset()
    descending: bool = False


def state_of(capsule: Capsule) -> str:
    """The E2B state a capsule shows: paused while it sleeps anywhere, running otherwise."""
    return "paused" if capsule.status in states.ASLEEP else "running"


def started(capsule: Capsule) -> datetime:
    return as_utc(capsule.started_at or capsule.created_at)


def sandbox_key(capsule: Capsule) -> Key:
    return (started(capsule).isoformat(timespec="microseconds"), capsule.id)


async def sandboxes(session: AsyncSession, team_id: str, query: SandboxQuery) -> list[Capsule]:
    """The team's sandboxes that match `query`, in its order (by start time, then id)."""
    statuses = [s for s in states.VISIBLE if ("paused" if s in states.ASLEEP else "running") in query.states]
    start = func.coalesce(Capsule.started_at, Capsule.created_at)
    select_ = select(Capsule).where(Capsule.team_id == team_id, Capsule.status.in_(statuses))
    if query.started_after is not None:
        select_ = select_.where(start > query.started_after)
    if query.templates:
        select_ = select_.where(Capsule.template.in_(sorted(query.templates)))
    order = (start.desc(), Capsule.id.desc()) if query.descending else (start, Capsule.id)
    rows = (await session.execute(select_.order_by(*order))).scalars()
    return [c for c in rows if all((c.labels or {}).get(k) == v for k, v in query.labels.items())]


async def templates(
    session: AsyncSession, team_id: str, name: str | None = None, source: str | None = None
) -> list[Template]:
    """The team's templates, oldest first; only the one called `name`, only those made from `source`."""
    select_ = select(Template).where(Template.team_id == team_id)
    if name:
        select_ = select_.where(Template.name == name)
    if source:
        select_ = select_.where(Template.source_capsule_id == source)
    rows = await session.execute(select_.order_by(Template.created_at, Template.name))
    return list(rows.scalars())


def template_key(template: Template) -> Key:
    return (as_utc(template.created_at).isoformat(timespec="microseconds"), template.name)


def page(
    items: Sequence[_T], limit: int, token: str | None, key: Callable[[_T], Key], descending: bool = False
) -> tuple[list[_T], str | None]:
    """The `limit` items after the one `token` names (in the items' order), and the token of the page
    after it (None: this is the last)."""
    rest = list(items)
    if token:
        after = _decode(token)
        rest = [i for i in rest if (key(i) < after if descending else key(i) > after)]
    chosen = rest[:limit]
    more = len(rest) > limit
    return chosen, _encode(key(chosen[-1])) if more and chosen else None


def _encode(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode(token: str) -> Key:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raw = None
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, str) for v in raw)):
        raise _errors.bad_request("nextToken is not one this server handed out")
    return raw[0], raw[1]
