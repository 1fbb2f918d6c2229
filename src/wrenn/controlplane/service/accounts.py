"""Accounts: sign-up, sign-in (rate-limited), switching teams, and who the caller is. `/v1/auth` hands
the issued token to the client; the dashboard's routes put it in the session cookie instead."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._ids import new_id, new_slug
from .._principal import Principal
from .._security import DUMMY_HASH, Claims, Tokens, hash_password, verify_password
from .._settings import Settings
from ..db import LoginFailure, Membership, Team, User, utcnow

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class SignupBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(min_length=8, max_length=256)
    name: str = Field(default="", max_length=200)


class LoginBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=256)


class SwitchTeamBody(BaseModel):
    team_id: str


@dataclass(frozen=True, slots=True)
class Issued:
    """A user token for one of the user's teams, and whom it names."""

    token: str
    user_id: str
    team_id: str
    email: str
    name: str


class AccountService:
    def __init__(self, session: AsyncSession, tokens: Tokens, settings: Settings) -> None:
        self.session = session
        self.tokens = tokens
        self.settings = settings

    def _issue(self, user: User, team_id: str, role: str) -> Issued:
        token = self.tokens.issue(Claims(user.id, team_id, role, user.email))
        return Issued(token=token, user_id=user.id, team_id=team_id, email=user.email, name=user.name)

    async def _create_user_with_team(self, email: str, password: str, name: str) -> tuple[User, Team]:
        session = self.session
        email = email.strip().lower()
        if not EMAIL.match(email):
            raise _errors.bad_request("email is not a valid address")
        if (await session.execute(select(User).where(User.email == email))).scalar_one_or_none() is not None:
            raise _errors.conflict("an account with this email already exists")
        user = User(
            id=new_id("usr"),
            email=email,
            name=name or email.split("@")[0],
            password_hash=hash_password(password),
        )
        # The platform's first account administers it (regular hosts, ...).
        user.is_admin = not await session.scalar(select(func.count()).select_from(User))
        team = Team(id=new_id("team"), name=f"{user.name}'s team", slug=new_slug())
        session.add_all([user, team])
        await session.flush()
        session.add(Membership(team_id=team.id, user_id=user.id, role="owner", is_default=True))
        return user, team

    async def signup(self, body: SignupBody) -> Issued:
        """An account and its default team. Self-hosted: active at once (no email round trip)."""
        user, team = await self._create_user_with_team(body.email, body.password, body.name)
        _audit.record(
            self.session,
            team_id=team.id,
            actor_type="user",
            actor_id=user.id,
            actor_name=user.email,
            resource_type="user",
            resource_id=user.id,
            action="signup",
        )
        await self.session.commit()
        return self._issue(user, team.id, "owner")

    async def login(self, body: LoginBody) -> Issued:
        """A token for the user's default team; after `login_attempts` failures within `login_window_s`
        for one email, 429."""
        session, settings = self.session, self.settings
        email = body.email.strip().lower()
        since = utcnow() - timedelta(seconds=settings.login_window_s)
        failures = await session.scalar(
            select(func.count())
            .select_from(LoginFailure)
            .where(LoginFailure.email == email, LoginFailure.at > since)
        )
        if (failures or 0) >= settings.login_attempts:
            raise _errors.ApiError(429, "rate_limited", "too many failed logins: try again in a few minutes")
        user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
        if not verify_password(user.password_hash if user else DUMMY_HASH, body.password) or user is None:
            session.add(LoginFailure(email=email))
            await session.commit()
            raise _errors.unauthorized("wrong email or password")
        if user.status != "active":
            raise _errors.ApiError(403, "account_disabled", "this account is disabled")
        await session.execute(delete(LoginFailure).where(LoginFailure.email == email))
        member = (
            (
                await session.execute(
                    select(Membership)
                    .where(Membership.user_id == user.id)
                    .order_by(Membership.is_default.desc())
                )
            )
            .scalars()
            .first()
        )
        if member is None:
            raise _errors.ApiError(403, "no_team", "this account belongs to no team")
        await session.commit()
        return self._issue(user, member.team_id, member.role)

    async def switch_team(self, caller: Principal, team_id: str) -> Issued:
        """A token for another team of the caller's (404 unless a member)."""
        assert caller.user_id is not None
        member = await self.session.get(Membership, (team_id, caller.user_id))
        if member is None:
            raise _errors.not_found(f"team {team_id}")
        user = await self.session.get(User, caller.user_id)
        assert user is not None
        return self._issue(user, member.team_id, member.role)

    async def me(self, caller: Principal) -> dict[str, Any]:
        user = await self.session.get(User, caller.user_id)
        assert user is not None
        return {
            "user_id": user.id,
            "name": user.name,
            "email": user.email,
            "has_password": True,
            "providers": [],
            "team_id": caller.team_id,
            "role": caller.role,
            "is_admin": user.is_admin,
        }
