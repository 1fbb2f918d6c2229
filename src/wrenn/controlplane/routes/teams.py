"""Teams and their members, user search for inviting, and the team's audit log.

`/v1/teams/{team_id}...` is decided by the caller's membership of *that* team, re-read from the database on
every request (not by the team in the token): a team the caller is not a member of, or a deleted one, is
404 whether or not it exists. Roles: `owner` (one per team, the creator) > `admin` > `member`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._deps import Audit, Db, Principal, UserCaller, audit_fields
from .._ids import new_id, new_slug
from .._time import Timestamp
from ..db import ApiKey, Membership, Team, User, as_utc, utcnow
from ..service import audit, quotas
from ..service import teams as team_service
from ..service.audit import AuditPage

router = APIRouter(tags=["teams"])
MANAGERS = ("owner", "admin")
_ROLE_ORDER = {"owner": 0, "admin": 1, "member": 2}
#: Results of /v1/users/search, at most.
SEARCH_LIMIT = 10

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class TeamBody(BaseModel):
    name: Name


class TeamOut(BaseModel):
    id: str
    name: str
    slug: str
    created_at: Timestamp
    #: The caller's role in this team.
    role: str


class MemberOut(BaseModel):
    user_id: str
    name: str
    email: str
    role: str


class TeamDetail(BaseModel):
    team: TeamOut
    members: list[MemberOut]


class MemberAdd(BaseModel):
    email: str = Field(min_length=1, max_length=320)


class RoleBody(BaseModel):
    role: Literal["admin", "member"]


class UserHit(BaseModel):
    user_id: str
    email: str


def _team_out(team: Team, role: str) -> TeamOut:
    return TeamOut(id=team.id, name=team.name, slug=team.slug, created_at=as_utc(team.created_at), role=role)


def _user_id(caller: Principal) -> str:
    assert caller.user_id is not None  # UserCaller: always a user
    return caller.user_id


async def _membership(session: AsyncSession, caller: Principal, team_id: str) -> tuple[Team, Membership]:
    """The live team and the caller's membership of it, else 404 (existence is not revealed)."""
    found = (
        await session.execute(
            select(Team, Membership)
            .join(Membership, Membership.team_id == Team.id)
            .where(Team.id == team_id, Team.deleted_at.is_(None), Membership.user_id == _user_id(caller))
        )
    ).first()
    if found is None:
        raise _errors.not_found(f"team {team_id}")
    return found[0], found[1]


def _require(member: Membership, roles: tuple[str, ...], doing: str) -> None:
    if member.role not in roles:
        raise _errors.forbidden(f"only a team {' or '.join(roles)} can {doing}")


async def _other_teams(session: AsyncSession, user_id: str, team_id: str) -> int:
    """How many live teams the user belongs to besides `team_id`."""
    count = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user_id, Membership.team_id != team_id, Team.deleted_at.is_(None))
    )
    return int(count or 0)


async def _members(session: AsyncSession, team_id: str) -> list[MemberOut]:
    rows = await session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.team_id == team_id)
    )
    members = [MemberOut(user_id=u.id, name=u.name, email=u.email, role=m.role) for m, u in rows.all()]
    return sorted(members, key=lambda m: (_ROLE_ORDER.get(m.role, 9), m.email))


def _record_member(
    session: AsyncSession, caller: Principal, team_id: str, user_id: str, action: str, **metadata: Any
) -> None:
    fields = audit_fields(caller) | {"team_id": team_id}
    _audit.record(session, **fields, resource_type="member", resource_id=user_id, action=action, **metadata)


async def _revoke_keys_of(session: AsyncSession, caller: Principal, team_id: str, user_id: str) -> None:
    """A member who leaves takes the team's API keys they created with them: a key never outlives its
    creator's membership."""
    theirs = (ApiKey.team_id == team_id, ApiKey.created_by == user_id)
    keys = (await session.execute(select(ApiKey.id).where(*theirs))).scalars()
    fields = audit_fields(caller) | {"team_id": team_id}
    for key_id in list(keys):
        _audit.record(
            session, **fields, resource_type="api_key", resource_id=key_id, action="revoke",
            reason="creator_left", status="warning",
        )  # fmt: skip
    await session.execute(delete(ApiKey).where(*theirs))


@router.get("/v1/teams", response_model=list[TeamOut])
async def list_teams(caller: UserCaller, session: Db) -> list[TeamOut]:
    """The caller's teams, each with the caller's role."""
    rows = await session.execute(
        select(Team, Membership.role)
        .join(Membership, Membership.team_id == Team.id)
        .where(Membership.user_id == _user_id(caller), Team.deleted_at.is_(None))
        .order_by(Team.created_at, Team.id)
    )
    return [_team_out(team, role) for team, role in rows.all()]


@router.post("/v1/teams", status_code=201, response_model=TeamOut)
async def create_team(body: TeamBody, caller: UserCaller, session: Db) -> TeamOut:
    """A new team; the caller becomes its owner (use switch-team to act in it)."""
    team = Team(id=new_id("team"), name=body.name, slug=new_slug(), created_at=utcnow())
    session.add(team)
    await session.flush()
    session.add(Membership(team_id=team.id, user_id=_user_id(caller), role="owner", is_default=False))
    _audit.record(
        session,
        **(audit_fields(caller) | {"team_id": team.id}),
        resource_type="team",
        resource_id=team.id,
        action="create",
        name=team.name,
    )
    await session.commit()
    return _team_out(team, "owner")


@router.get("/v1/teams/{team_id}", response_model=TeamDetail)
async def get_team(team_id: str, caller: UserCaller, session: Db) -> TeamDetail:
    team, me = await _membership(session, caller, team_id)
    return TeamDetail(team=_team_out(team, me.role), members=await _members(session, team.id))


@router.patch("/v1/teams/{team_id}", status_code=204)
async def rename_team(team_id: str, body: TeamBody, caller: UserCaller, session: Db) -> Response:
    team, me = await _membership(session, caller, team_id)
    _require(me, MANAGERS, "rename it")
    old, team.name = team.name, body.name
    _audit.record(
        session,
        **(audit_fields(caller) | {"team_id": team.id}),
        resource_type="team",
        resource_id=team.id,
        action="rename",
        status="info",
        old_name=old,
        new_name=body.name,
    )
    await session.commit()
    return Response(status_code=204)


@router.delete("/v1/teams/{team_id}", status_code=204)
async def delete_team(team_id: str, request: Request, caller: UserCaller, session: Db) -> Response:
    """Soft delete (owner only): destroy the team's capsules on their hosts, then mark the team deleted
    (its slug stays reserved), drop its memberships and API keys. The owner's last team cannot be deleted
    (409), since an account without a team cannot sign in. If a host fails to destroy a capsule, the
    error is returned and the team is kept; capsules already destroyed stay destroyed, so a retry
    finishes the job."""
    team, me = await _membership(session, caller, team_id)
    _require(me, ("owner",), "delete it")
    if await _other_teams(session, _user_id(caller), team.id) == 0:
        raise _errors.conflict("this is your only team: create another team before deleting this one")
    await team_service.delete_team(
        session, request.app.state.agents, request.app.state.settings, team, caller
    )
    return Response(status_code=204)


@router.get("/v1/teams/{team_id}/quotas")
async def team_quotas(team_id: str, request: Request, caller: UserCaller, session: Db) -> dict[str, Any]:
    """The team's quotas in force and its usage (members; a platform admin changes them)."""
    team, _ = await _membership(session, caller, team_id)
    return await quotas.report(session, request.app.state.settings, team.id)


@router.get("/v1/teams/{team_id}/members", response_model=list[MemberOut])
async def list_members(team_id: str, caller: UserCaller, session: Db) -> list[MemberOut]:
    team, _ = await _membership(session, caller, team_id)
    return await _members(session, team.id)


@router.post("/v1/teams/{team_id}/members", status_code=201, response_model=MemberOut)
async def add_member(team_id: str, body: MemberAdd, caller: UserCaller, session: Db) -> MemberOut:
    """Add an existing, active account by email, as a `member` (admin or owner)."""
    team, me = await _membership(session, caller, team_id)
    _require(me, MANAGERS, "add members")
    email = body.email.strip().lower()
    user = (
        await session.execute(select(User).where(User.email == email, User.status == "active"))
    ).scalar_one_or_none()
    if user is None:
        raise _errors.not_found(f"user {email}")
    if await session.get(Membership, (team.id, user.id)) is not None:
        raise _errors.conflict(f"{email} is already a member of this team")
    session.add(Membership(team_id=team.id, user_id=user.id, role="member", is_default=False))
    _record_member(session, caller, team.id, user.id, "add", email=user.email, role="member")
    await session.commit()
    return MemberOut(user_id=user.id, name=user.name, email=user.email, role="member")


async def _target(session: AsyncSession, team_id: str, user_id: str) -> Membership:
    target = await session.get(Membership, (team_id, user_id))
    if target is None:
        raise _errors.not_found(f"member {user_id}")
    return target


@router.patch("/v1/teams/{team_id}/members/{user_id}", status_code=204)
async def set_member_role(
    team_id: str, user_id: str, body: RoleBody, caller: UserCaller, session: Db
) -> Response:
    """Make a member an admin or back (owner only; the owner's own role cannot change)."""
    team, me = await _membership(session, caller, team_id)
    _require(me, ("owner",), "change roles")
    target = await _target(session, team.id, user_id)
    if target.role == "owner":
        raise _errors.forbidden("the team owner's role cannot be changed")
    target.role = body.role
    _record_member(session, caller, team.id, user_id, "role_update", status="info", new_role=body.role)
    await session.commit()
    return Response(status_code=204)


@router.delete("/v1/teams/{team_id}/members/{user_id}", status_code=204)
async def remove_member(team_id: str, user_id: str, caller: UserCaller, session: Db) -> Response:
    """Remove a member (admin or owner; only the owner removes admins; the owner cannot be removed).
    Their tokens for this team stop working at once."""
    team, me = await _membership(session, caller, team_id)
    _require(me, MANAGERS, "remove members")
    target = await _target(session, team.id, user_id)
    if target.role == "owner":
        raise _errors.forbidden("the team owner cannot be removed")
    if target.role == "admin" and me.role != "owner" and user_id != me.user_id:
        raise _errors.forbidden("only the team owner can remove an admin")
    await session.delete(target)
    _record_member(session, caller, team.id, user_id, "remove", status="warning")
    await _revoke_keys_of(session, caller, team.id, user_id)
    await session.commit()
    return Response(status_code=204)


@router.post("/v1/teams/{team_id}/leave", status_code=204)
async def leave_team(team_id: str, caller: UserCaller, session: Db) -> Response:
    """Leave a team. The owner cannot (delete the team instead), nor can anyone leave their last team
    (409), since an account without a team cannot sign in."""
    team, me = await _membership(session, caller, team_id)
    if me.role == "owner":
        raise _errors.forbidden("the team owner cannot leave the team; delete it instead")
    if await _other_teams(session, me.user_id, team.id) == 0:
        raise _errors.conflict("this is your only team: you cannot leave it")
    await session.delete(me)
    _record_member(session, caller, team.id, me.user_id, "leave", status="info")
    await _revoke_keys_of(session, caller, team.id, me.user_id)
    await session.commit()
    return Response(status_code=204)


@router.get("/v1/users/search", tags=["users"], response_model=list[UserHit])
async def search_users(
    caller: UserCaller, session: Db, email: Annotated[str, Query(max_length=320)]
) -> list[UserHit]:
    """Active accounts whose email starts with `email`, for adding members. The prefix must have at
    least 3 characters and contain `@`, so the whole local part has to be known already: the search
    completes a domain, it cannot list a domain's users. At most 10 results."""
    prefix = email.strip().lower()
    if len(prefix) < 3 or "@" not in prefix:
        raise _errors.bad_request("email: the prefix must be at least 3 characters and contain '@'")
    rows = await session.execute(
        select(User.id, User.email)
        .where(User.email.startswith(prefix, autoescape=True), User.status == "active")
        .order_by(User.email)
        .limit(SEARCH_LIMIT)
    )
    return [UserHit(user_id=uid, email=addr) for uid, addr in rows.all()]


@router.get("/v1/audit-logs", tags=["audit"], response_model=AuditPage)
async def audit_logs(caller: UserCaller, session: Db, query: Audit) -> AuditPage:
    """The current team's audit log, newest first. Plain members see `team`-scoped events only (not
    member changes); admins and the owner see all. `limit` above 200 is served as 200."""
    return await audit.page(
        session, team_id=caller.team_id, admin_scope=caller.role in MANAGERS, **query.options()
    )
