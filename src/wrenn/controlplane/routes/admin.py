"""Platform administration (platform admins only, re-checked on every request): teams' quotas. The first
admin comes from the bootstrap token (`POST /v1/admin/bootstrap`, in `routes/auth.py`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .. import _audit, _errors
from .._deps import AdminCaller, Db, audit_fields
from ..db import Team
from ..service import quotas

router = APIRouter(tags=["admin"])

Amount = Annotated[int | None, Field(ge=0, le=1 << 30)]


class Resources(BaseModel):
    capsules: int
    vcpus: int
    memory_mb: int
    disk_mb: int


class OwnQuotas(BaseModel):
    capsules: int | None
    vcpus: int | None
    memory_mb: int | None
    disk_mb: int | None


class QuotaReport(BaseModel):
    team_id: str
    #: In force: the team's own where set, else the defaults.
    quotas: Resources
    own: OwnQuotas
    defaults: Resources
    usage: Resources


class QuotaUpdate(BaseModel):
    """Each field given sets the team's own quota; null puts it back to the default; absent: unchanged."""

    model_config = ConfigDict(extra="forbid")
    capsules: Amount = None
    vcpus: Amount = None
    memory_mb: Amount = None
    disk_mb: Amount = None


async def _team(session: Db, team_id: str) -> Team:
    team = await session.get(Team, team_id)
    if team is None or team.deleted_at is not None:
        raise _errors.not_found(f"team {team_id}")
    return team


@router.get("/v1/admin/teams/{team_id}/quotas", response_model=QuotaReport)
async def get_quotas(team_id: str, request: Request, caller: AdminCaller, session: Db) -> Any:
    team = await _team(session, team_id)
    return await quotas.report(session, request.app.state.settings, team.id)


@router.put("/v1/admin/teams/{team_id}/quotas", response_model=QuotaReport)
async def set_quotas(
    team_id: str, body: QuotaUpdate, request: Request, caller: AdminCaller, session: Db
) -> Any:
    """Set the team's own quotas. Lowering one below the team's usage refuses new work, and ends none."""
    team = await _team(session, team_id)
    changed = body.model_dump(exclude_unset=True)
    await quotas.set_own(session, team, changed)
    _audit.record(
        session,
        **(audit_fields(caller) | {"team_id": team.id}),
        resource_type="quota",
        resource_id=team.id,
        action="update",
        **{k: v for k, v in changed.items()},
    )
    await session.commit()
    return await quotas.report(session, request.app.state.settings, team.id)
