"""Platform administration across teams (platform admins only, re-checked on every request; everyone else
403): users, teams, capsules, templates and the platform audit log (`service.AdminService`). Every change
is audited."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from .._deps import Admin, Audit, Db
from ..db import UserStatus
from ..service import audit
from ..service.admin import AdminCapsule, AdminTeam, AdminTemplate, AdminUser
from ..service.audit import AuditPage

router = APIRouter(tags=["admin"])
_T = TypeVar("_T")

Page = Annotated[int, Query(ge=1, le=1_000_000)]
PerPage = Annotated[int, Query(ge=1, le=100)]
Search = Annotated[str, Query(max_length=320)]
Id = Annotated[str | None, Query(max_length=64)]


class Paged(BaseModel, Generic[_T]):
    items: list[_T]
    total: int
    page: int
    per_page: int


class ActiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    active: bool


class AdminBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admin: bool


class ByocBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: true or false; null: the platform's default.
    enabled: bool | None


class Disabled(AdminUser):
    #: Capsules of the teams it owns that could not be destroyed (their hosts failed); retry the disable.
    capsules_not_destroyed: list[str] = []


@router.get("/v1/admin/users", response_model=Paged[AdminUser])
async def list_users(
    admin: Admin, q: Search = "", status: UserStatus | None = None, page: Page = 1, per_page: PerPage = 50
) -> Any:
    """Every account, oldest first; `q` searches e-mails and names (substring), `status` filters."""
    items, total = await admin.users(q, status, page, per_page)
    return Paged[AdminUser](items=items, total=total, page=page, per_page=per_page)


@router.get("/v1/admin/users/{user_id}", response_model=AdminUser)
async def get_user(user_id: str, admin: Admin) -> Any:
    return await admin.user_out(await admin.user(user_id))


@router.put("/v1/admin/users/{user_id}/active", response_model=Disabled)
async def set_active(user_id: str, body: ActiveBody, admin: Admin) -> Any:
    """Enable (also: restore a deleted account within its grace period, activate an inactive one) or
    disable an account. Disabled: its tokens and API keys stop at once, and the capsules of the teams it
    owns are destroyed. 409 for your own account."""
    user, failed = await admin.set_active(user_id, body.active)
    return Disabled(**(await admin.user_out(user)).model_dump(), capsules_not_destroyed=failed)


@router.put("/v1/admin/users/{user_id}/admin", response_model=AdminUser)
async def set_admin(user_id: str, body: AdminBody, admin: Admin) -> Any:
    """Make an active account a platform admin, or take it back. 409 for your own account."""
    return await admin.user_out(await admin.set_admin(user_id, body.admin))


@router.get("/v1/admin/teams", response_model=Paged[AdminTeam])
async def list_teams(
    admin: Admin, q: Search = "", deleted: bool = False, page: Page = 1, per_page: PerPage = 50
) -> Any:
    """Every team, oldest first, with its owner and counts; `q` searches names and slugs; `deleted`
    includes deleted teams."""
    items, total = await admin.teams(q, deleted, page, per_page)
    return Paged[AdminTeam](items=items, total=total, page=page, per_page=per_page)


@router.put("/v1/admin/teams/{team_id}/byoc", response_model=AdminTeam)
async def set_byoc(team_id: str, body: ByocBody, admin: Admin) -> Any:
    """Whether the team's owner may add its own hosts (BYOC); null: the platform's default."""
    return await admin.team_out(await admin.set_byoc(team_id, body.enabled))


@router.delete("/v1/admin/teams/{team_id}", status_code=204)
async def delete_team(team_id: str, admin: Admin) -> Response:
    """Delete a team as its owner would (its capsules destroyed on their hosts; an error of a host is
    returned and the team kept). Its members for whom it was the last team get 403 `no_team` at login."""
    await admin.delete_team(team_id)
    return Response(status_code=204)


@router.get("/v1/admin/capsules", response_model=Paged[AdminCapsule])
async def list_capsules(
    admin: Admin,
    team_id: Id = None,
    status: Annotated[list[str] | None, Query()] = None,
    page: Page = 1,
    per_page: PerPage = 50,
) -> Any:
    """Capsules of every team, newest first; by default those that have not ended. `status` (repeatable
    or comma-separated) and `team_id` filter."""
    items, total = await admin.capsules(team_id, audit.multi(status), page, per_page)
    return Paged[AdminCapsule](items=items, total=total, page=page, per_page=per_page)


@router.delete("/v1/admin/capsules/{capsule_id}", status_code=204)
async def destroy_capsule(capsule_id: str, admin: Admin) -> Response:
    """Destroy any team's capsule (audited in that team's log too)."""
    await admin.destroy_capsule(capsule_id)
    return Response(status_code=204)


@router.get("/v1/admin/templates", response_model=Paged[AdminTemplate])
async def list_templates(admin: Admin, team_id: Id = None, page: Page = 1, per_page: PerPage = 50) -> Any:
    """Templates of every team, newest first (the base images are in `/v1/snapshots?type=base`)."""
    items, total = await admin.templates(team_id, page, per_page)
    return Paged[AdminTemplate](items=items, total=total, page=page, per_page=per_page)


@router.delete("/v1/admin/templates/{template_id}", status_code=204)
async def delete_template(template_id: str, admin: Admin) -> Response:
    """Delete any team's template (by its id, `tpl-...`); 409 `template_in_use` while capsules stand on
    it."""
    await admin.delete_template(template_id)
    return Response(status_code=204)


@router.get("/v1/admin/audit-logs", response_model=AuditPage)
async def audit_logs(
    admin: Admin, session: Db, query: Audit, team_id: Id = None, actor_id: Id = None
) -> AuditPage:
    """The platform's audit log: every team's events and the platform's own (accounts, admin actions),
    newest first, paged as `/v1/audit-logs`; `team_id` and `actor_id` filter."""
    return await audit.page(session, team_id=team_id, all_teams=True, actor_id=actor_id, **query.options())
