"""Reading the audit log: a team's (`/v1/audit-logs`) and the platform's (`/v1/admin/audit-logs`), newest
first, paged by a (created_at, id) cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._time import Timestamp
from ..db import AuditLog, as_utc

PAGE_MAX = 200


class AuditEntry(BaseModel):
    id: str
    #: The team the event belongs to (null: the platform's own, e.g. an account's).
    team_id: str | None = None
    actor_type: str
    actor_id: str
    actor_name: str
    resource_type: str
    resource_id: str
    action: str
    scope: Literal["team", "admin"]
    status: str
    metadata: dict[str, Any]
    created_at: Timestamp


class AuditPage(BaseModel):
    items: list[AuditEntry]
    #: Pass both back as `before` and `before_id` for the next (older) page; null on the last page.
    next_before: str | None
    next_before_id: str | None


def _cursor(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # no "+": it would need escaping in a URL


def multi(values: list[str] | None) -> list[str]:
    """`?x=a&x=b` and `?x=a,b` alike; blanks dropped, duplicates removed."""
    seen: dict[str, None] = {}
    for value in values or []:
        for part in value.split(","):
            if part.strip():
                seen[part.strip()] = None
    return list(seen)


async def page(
    session: AsyncSession,
    *,
    team_id: str | None,
    all_teams: bool = False,
    admin_scope: bool = True,
    before: datetime | None = None,
    before_id: str | None = None,
    limit: int = 50,
    resource_type: list[str] | None = None,
    action: list[str] | None = None,
    actor_id: str | None = None,
) -> AuditPage:
    """One page of the log of `team_id` (with `all_teams`: every team's and the platform's, or only
    `team_id`'s when given). Without `admin_scope`, member changes are left out. `limit` above 200 is
    served as 200."""
    query = select(AuditLog)
    if not all_teams or team_id is not None:
        query = query.where(AuditLog.team_id == team_id)
    if not admin_scope:
        query = query.where(AuditLog.resource_type.not_in(_audit.ADMIN_SCOPED))
    if types := multi(resource_type):
        query = query.where(AuditLog.resource_type.in_(types))
    if actions := multi(action):
        query = query.where(AuditLog.action.in_(actions))
    if actor_id:
        query = query.where(AuditLog.actor_id == actor_id)
    if before_id is not None and before is None:
        raise _errors.bad_request("before_id: only valid together with before")
    if before is not None:
        at = as_utc(before)
        query = query.where(
            or_(AuditLog.created_at < at, and_(AuditLog.created_at == at, AuditLog.id < before_id))
            if before_id
            else AuditLog.created_at < at
        )
    limit = min(limit, PAGE_MAX)
    rows = list(
        (
            await session.execute(
                query.order_by(AuditLog.created_at.desc(), AuditLog.id.desc()).limit(limit + 1)
            )
        ).scalars()
    )
    found, more = rows[:limit], len(rows) > limit
    items = [
        AuditEntry(
            id=e.id,
            team_id=e.team_id,
            actor_type=e.actor_type,
            actor_id=e.actor_id,
            actor_name=e.actor_name,
            resource_type=e.resource_type,
            resource_id=e.resource_id,
            action=e.action,
            scope="admin" if _audit.scope_of(e.resource_type) == "admin" else "team",
            status=e.status,
            metadata=e.metadata_ or {},
            created_at=as_utc(e.created_at),
        )
        for e in found
    ]
    last = found[-1] if more else None
    return AuditPage(
        items=items,
        next_before=_cursor(last.created_at) if last else None,
        next_before_id=last.id if last else None,
    )
