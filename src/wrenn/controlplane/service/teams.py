"""Deleting a team: by its owner (`DELETE /v1/teams/{id}`) or a platform admin (`DELETE
/v1/admin/teams/{id}`)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._agents import AgentPool
from .._principal import Principal, audit_fields
from .._settings import Settings
from ..db import ApiKey, Capsule, CapsuleStatus, Membership, Team, utcnow
from .capsules import CapsuleService


async def delete_team(
    session: AsyncSession, agents: AgentPool, settings: Settings, team: Team, caller: Principal | None
) -> None:
    """Destroy every capsule of the team on its host, one at a time (each committed: what is gone on its
    host is recorded as gone), then mark the team deleted (its slug stays reserved) and drop its
    memberships and API keys. If a host fails to destroy a capsule, its error is raised and the team is
    kept; a retry finishes the job. `caller` None: the system (the janitor)."""
    capsules = (
        await session.execute(
            select(Capsule)
            .where(Capsule.team_id == team.id, Capsule.status != CapsuleStatus.STOPPED)
            .order_by(Capsule.created_at)
        )
    ).scalars()
    service = CapsuleService(session, agents, settings)
    for capsule in list(capsules):
        capsule_id = capsule.id  # read before a rollback expires it
        try:
            await service.destroy(capsule, caller, commit=False, reason="team_deleted")
        except _errors.ApiError as exc:
            await session.rollback()
            raise _errors.ApiError(
                exc.status,
                exc.code,
                f"team not deleted: capsule {capsule_id} could not be destroyed: {exc.message}",
            ) from None
        await session.commit()
    team.deleted_at = utcnow()
    await session.execute(delete(Membership).where(Membership.team_id == team.id))
    await session.execute(delete(ApiKey).where(ApiKey.team_id == team.id))
    fields = (
        audit_fields(caller)
        if caller is not None
        else {"actor_type": "system", "actor_id": "janitor", "actor_name": "account janitor"}
    )
    _audit.record(
        session, **(fields | {"team_id": team.id}), resource_type="team", resource_id=team.id,
        action="delete", status="warning",
    )  # fmt: skip
    await session.commit()
