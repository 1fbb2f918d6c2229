"""What platform admins do across teams: users (list, search, enable, disable, make admin), teams (list,
BYOC, delete), capsules and templates of every team (list, destroy, delete). Every change is audited:
changes to an account in the platform's log (`team_id` null), changes to a team's things in that team's
log too, so its members see what an operator did.

Disabling an account signs it out everywhere, stops its API keys (and so its tokens and keys stop at
once: `_deps` re-reads the account on every request) and destroys the capsules of the teams it owns, as
the seed did: an operator disables an account to stop what it runs. Enabling a soft-deleted account
within its grace period restores it."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._agents import AgentPool
from .._principal import Principal, audit_fields
from .._settings import Settings
from ..db import Capsule, Identity, Membership, Team, Template, User, UserStatus, as_utc, states
from . import teams
from .capsules import CapsuleService
from .profile import revoke_all
from .templates import TemplateService

PER_PAGE_MAX = 100


class AdminUser(BaseModel):
    id: str
    email: str
    name: str
    status: str
    is_admin: bool
    has_password: bool
    providers: list[str]
    teams_joined: int
    teams_owned: int
    created_at: datetime
    deleted_at: datetime | None


class AdminTeam(BaseModel):
    id: str
    name: str
    slug: str
    created_at: datetime
    deleted_at: datetime | None
    #: Whether its owner may add BYOC hosts (in force), and the team's own setting (null: the default).
    byoc_enabled: bool
    byoc_own: bool | None
    members: int
    capsules: int
    owner_id: str | None
    owner_email: str | None


class AdminCapsule(BaseModel):
    id: str
    team_id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    host_id: str | None
    created_at: datetime
    last_active_at: datetime | None


class AdminTemplate(BaseModel):
    id: str
    team_id: str
    name: str
    type: str
    vcpus: int
    memory_mb: int
    size_bytes: int
    host_id: str | None
    created_at: datetime


def _like(value: str) -> str:
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _contains(column: Any, value: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = func.lower(column).like(_like(value), escape="\\")
    return condition


async def _paged(
    session: AsyncSession, query: Select[Any], page: int, per_page: int
) -> tuple[list[Any], int]:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    per_page = max(1, min(per_page, PER_PAGE_MAX))
    rows = await session.execute(query.offset((max(page, 1) - 1) * per_page).limit(per_page))
    return list(rows.scalars()), int(total or 0)


class AdminService:
    def __init__(
        self, session: AsyncSession, agents: AgentPool, settings: Settings, caller: Principal
    ) -> None:
        self.session = session
        self.agents = agents
        self.settings = settings
        self.caller = caller

    def _record(self, team_id: str | None, resource_type: str, resource_id: str, action: str,
                status: str = "success", **metadata: Any) -> None:  # fmt: skip
        _audit.record(
            self.session, **(audit_fields(self.caller) | {"team_id": team_id}), resource_type=resource_type,
            resource_id=resource_id, action=action, status=status, platform_admin=True, **metadata,
        )  # fmt: skip

    # --- users --------------------------------------------------------------------------------------

    async def user_out(self, user: User) -> AdminUser:
        counts = (
            await self.session.execute(
                select(
                    func.count(Membership.team_id),
                    func.count(Membership.team_id).filter(Membership.role == "owner"),
                ).where(Membership.user_id == user.id)
            )
        ).one()
        providers = await self.session.execute(select(Identity.provider).where(Identity.user_id == user.id))
        return AdminUser(
            id=user.id, email=user.email, name=user.name, status=user.status, is_admin=user.is_admin,
            has_password=bool(user.password_hash), providers=sorted(set(providers.scalars())),
            teams_joined=int(counts[0]), teams_owned=int(counts[1]), created_at=as_utc(user.created_at),
            deleted_at=as_utc(user.deleted_at) if user.deleted_at else None,
        )  # fmt: skip

    async def users(
        self, q: str, status: str | None, page: int, per_page: int
    ) -> tuple[list[AdminUser], int]:
        query = select(User).order_by(User.created_at, User.id)
        if q.strip():
            query = query.where(or_(_contains(User.email, q.strip()), _contains(User.name, q.strip())))
        if status:
            query = query.where(User.status == status)
        found, total = await _paged(self.session, query, page, per_page)
        return [await self.user_out(u) for u in found], total

    async def user(self, user_id: str) -> User:
        user = await self.session.get(User, user_id)
        if user is None:
            raise _errors.not_found(f"user {user_id}")
        return user

    async def set_active(self, user_id: str, active: bool) -> tuple[User, list[str]]:
        """Enable or disable an account; with a disable, the capsules of the teams it owns are destroyed:
        the ids that could not be (their hosts failed; the account is disabled all the same)."""
        user = await self.user(user_id)
        if user.id == self.caller.user_id:
            raise _errors.conflict("you cannot enable or disable your own account", "self")
        if active:
            if user.status != UserStatus.ACTIVE:
                was, user.status, user.deleted_at = user.status, UserStatus.ACTIVE, None
                self._record(None, "user", user.id, "enable", status="info", was=was)
                await self.session.commit()
            return user, []
        if user.status in (UserStatus.ACTIVE, UserStatus.INACTIVE):
            user.status = UserStatus.DISABLED
        revoke_all(user)
        self._record(None, "user", user.id, "disable", status="warning")
        await self.session.commit()
        return user, await self._destroy_capsules_of_teams_owned(user.id)

    async def _destroy_capsules_of_teams_owned(self, user_id: str) -> list[str]:
        owned = select(Membership.team_id).where(Membership.user_id == user_id, Membership.role == "owner")
        capsules = list(
            (
                await self.session.execute(
                    select(Capsule).where(Capsule.team_id.in_(owned), Capsule.status.not_in(states.ENDED))
                )
            ).scalars()
        )
        service = CapsuleService(self.session, self.agents, self.settings)
        failed: list[str] = []
        for capsule in capsules:
            capsule_id = capsule.id
            try:
                await service.destroy(capsule, self.caller, reason="owner_disabled")
            except _errors.ApiError:
                await self.session.rollback()
                failed.append(capsule_id)
        return failed

    async def set_admin(self, user_id: str, admin: bool) -> User:
        user = await self.user(user_id)
        if user.id == self.caller.user_id:
            raise _errors.conflict("you cannot change your own admin rights (ask another admin)", "self")
        if admin and user.status != UserStatus.ACTIVE:
            raise _errors.invalid_state(
                f"user {user_id} is {user.status}: only an active account becomes admin"
            )
        if user.is_admin != admin:
            user.is_admin = admin
            self._record(None, "user", user.id, "grant_admin" if admin else "revoke_admin", status="warning")
            await self.session.commit()
        return user

    # --- teams --------------------------------------------------------------------------------------

    async def team_out(self, team: Team) -> AdminTeam:
        members = await self.session.scalar(
            select(func.count()).select_from(Membership).where(Membership.team_id == team.id)
        )
        capsules = await self.session.scalar(
            select(func.count())
            .select_from(Capsule)
            .where(Capsule.team_id == team.id, Capsule.status.in_(states.VISIBLE))
        )
        owner = (
            await self.session.execute(
                select(User.id, User.email)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.team_id == team.id, Membership.role == "owner")
            )
        ).first()
        byoc = self.settings.byoc_default if team.byoc_enabled is None else bool(team.byoc_enabled)
        return AdminTeam(
            id=team.id, name=team.name, slug=team.slug, created_at=as_utc(team.created_at),
            deleted_at=as_utc(team.deleted_at) if team.deleted_at else None, byoc_enabled=byoc,
            byoc_own=team.byoc_enabled, members=int(members or 0), capsules=int(capsules or 0),
            owner_id=owner[0] if owner else None, owner_email=owner[1] if owner else None,
        )  # fmt: skip

    async def teams(self, q: str, deleted: bool, page: int, per_page: int) -> tuple[list[AdminTeam], int]:
        query = select(Team).order_by(Team.created_at, Team.id)
        if q.strip():
            query = query.where(or_(_contains(Team.name, q.strip()), _contains(Team.slug, q.strip())))
        if not deleted:
            query = query.where(Team.deleted_at.is_(None))
        found, total = await _paged(self.session, query, page, per_page)
        return [await self.team_out(t) for t in found], total

    async def team(self, team_id: str) -> Team:
        team = await self.session.get(Team, team_id)
        if team is None or team.deleted_at is not None:
            raise _errors.not_found(f"team {team_id}")
        return team

    async def set_byoc(self, team_id: str, enabled: bool | None) -> Team:
        team = await self.team(team_id)
        team.byoc_enabled = enabled
        self._record(team.id, "team", team.id, "byoc", status="info", enabled=enabled)
        await self.session.commit()
        return team

    # --- capsules and templates ---------------------------------------------------------------------

    async def capsules(
        self, team_id: str | None, status: list[str], page: int, per_page: int
    ) -> tuple[list[AdminCapsule], int]:
        query = select(Capsule).order_by(Capsule.created_at.desc(), Capsule.id)
        if team_id:
            query = query.where(Capsule.team_id == team_id)
        query = query.where(Capsule.status.in_(status or [str(s) for s in states.VISIBLE]))
        found, total = await _paged(self.session, query, page, per_page)
        items = [
            AdminCapsule(
                id=c.id,
                team_id=c.team_id,
                status=c.status,
                template=c.template,
                vcpus=c.vcpus,
                memory_mb=c.memory_mb,
                disk_size_mb=c.disk_size_mb,
                host_id=c.host_id,
                created_at=as_utc(c.created_at),
                last_active_at=as_utc(c.last_active_at) if c.last_active_at else None,
            )
            for c in found
        ]
        return items, total

    async def destroy_capsule(self, capsule_id: str) -> None:
        capsule = await self.session.get(Capsule, capsule_id)
        if capsule is None:
            raise _errors.not_found(f"capsule {capsule_id}")
        service = CapsuleService(self.session, self.agents, self.settings)
        await service.destroy(capsule, self.caller, platform_admin=True)

    async def templates(
        self, team_id: str | None, page: int, per_page: int
    ) -> tuple[list[AdminTemplate], int]:
        query = select(Template).order_by(Template.created_at.desc(), Template.id)
        if team_id:
            query = query.where(Template.team_id == team_id)
        found, total = await _paged(self.session, query, page, per_page)
        items = [
            AdminTemplate(
                id=t.id,
                team_id=t.team_id,
                name=t.name,
                type=t.type,
                vcpus=t.vcpus,
                memory_mb=t.memory_mb,
                size_bytes=t.size_bytes,
                host_id=t.host_id,
                created_at=as_utc(t.created_at),
            )
            for t in found
        ]
        return items, total

    async def delete_template(self, template_id: str) -> None:
        """Delete a team's template (its files on its host too), as its team would; 409 `template_in_use`
        while capsules stand on it."""
        template = await self.session.get(Template, template_id)
        if template is None:
            raise _errors.not_found(f"template {template_id}")
        as_team = dataclasses.replace(self.caller, team_id=template.team_id)
        await TemplateService(CapsuleService(self.session, self.agents, self.settings)).delete(
            as_team, template.name
        )

    async def delete_team(self, team_id: str) -> None:
        team = await self.team(team_id)
        await teams.delete_team(self.session, self.agents, self.settings, team, self.caller)
