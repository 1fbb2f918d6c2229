"""The audit log: who did what to which resource."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ._ids import new_id
from .db import AuditLog

#: Resource types whose events only a team's admins and owner may read (the seed's `admin` scope: member
#: changes). Everything else is `team` scope, readable by every member. Derived from the resource type
#: rather than stored, so the audit_logs table needs no `scope` column.
ADMIN_SCOPED = frozenset({"member"})


def scope_of(resource_type: str) -> str:
    return "admin" if resource_type in ADMIN_SCOPED else "team"


def record(
    session: AsyncSession,
    *,
    team_id: str | None,
    actor_type: str,
    actor_id: str,
    actor_name: str,
    resource_type: str,
    resource_id: str,
    action: str,
    status: str = "success",
    **metadata: Any,
) -> None:
    """Add an entry to the session (committed with the change it records)."""
    session.add(
        AuditLog(
            id=new_id("log"),
            team_id=team_id,
            actor_type=actor_type,
            actor_id=actor_id,
            actor_name=actor_name,
            resource_type=resource_type,
            resource_id=resource_id,
            action=action,
            status=status,
            metadata_=metadata,
        )
    )
