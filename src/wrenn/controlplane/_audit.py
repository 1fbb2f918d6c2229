"""The audit log: who did what to which resource."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ._ids import new_id
from .db import AuditLog


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
