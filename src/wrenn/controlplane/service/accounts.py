"""Accounts: sign-up, sign-in (rate-limited), switching teams, who the caller is, and the platform's first
admin. `/v1/auth` hands the issued token to the client; the dashboard's routes put it in the session
cookie instead.

No sign-up makes an admin. While the platform has none, the control plane keeps a one-time **bootstrap
token**: its SHA-256 in the database, the token itself in `<data dir>/bootstrap-token` (mode 0600, root's
to read) of the control plane that made it. `POST /v1/admin/bootstrap` with that token creates the first
admin, once: the token is consumed by a conditional DELETE, so two racing requests (or control planes)
cannot both win. `wrenn up` reads the file and does it for you.

Failed logins are counted in the database (shared by every control plane) per email and client address,
per address (password spraying) and per email (a guess spread over addresses)."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn._shared.private import write_private

from .. import _audit, _errors
from .._ids import new_id, new_slug, new_token
from .._principal import Principal
from .._security import DUMMY_HASH, Claims, Tokens, hash_password, verify_password
from .._settings import Settings
from ..db import BootstrapToken, LoginFailure, Membership, Team, User, utcnow

log = logging.getLogger("wrenn.controlplane.accounts")

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: Where the bootstrap token is written, under the control plane's data directory.
BOOTSTRAP_FILE = "bootstrap-token"
_BOOTSTRAP_ROW = "platform"


class SignupBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(min_length=8, max_length=256)
    name: str = Field(default="", max_length=200)


class LoginBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=256)


class SwitchTeamBody(BaseModel):
    team_id: str


class BootstrapBody(SignupBody):
    #: The one-time token in `<data dir>/bootstrap-token` of the control plane that made it.
    token: str = Field(min_length=1, max_length=128)


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

    async def _create_user_with_team(
        self, email: str, password: str, name: str, admin: bool = False
    ) -> tuple[User, Team]:
        """A new active account (a platform admin only when `admin`) owning a new default team (flushed,
        not committed)."""
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
            is_admin=admin,
        )
        team = Team(id=new_id("team"), name=f"{user.name}'s team", slug=new_slug())
        session.add_all([user, team])
        await session.flush()
        session.add(Membership(team_id=team.id, user_id=user.id, role="owner", is_default=True))
        return user, team

    async def signup(self, body: SignupBody) -> Issued:
        """An account and its default team. Self-hosted: active at once (no email round trip). Never an
        admin."""
        return await self._new_account(body, admin=False)

    async def bootstrap(self, body: BootstrapBody) -> Issued:
        """The platform's first admin, with the one-time bootstrap token (401 for any other); the token's
        file is removed once spent."""
        await consume_bootstrap(self.session, body.token)
        issued = await self._new_account(body, admin=True)
        bootstrap_file(self.settings.data_dir).unlink(missing_ok=True)
        return issued

    async def _new_account(self, body: SignupBody, admin: bool) -> Issued:
        user, team = await self._create_user_with_team(body.email, body.password, body.name, admin=admin)
        _audit.record(
            self.session,
            team_id=team.id,
            actor_type="user",
            actor_id=user.id,
            actor_name=user.email,
            resource_type="user",
            resource_id=user.id,
            action="bootstrap_admin" if admin else "signup",
        )
        await self.session.commit()
        return self._issue(user, team.id, "owner")

    async def _throttled(self, email: str, address: str) -> bool:
        """Whether failed logins went over a limit: for this email from this address, from this address
        (any emails: spraying), or for this email from everywhere (a guess spread over addresses)."""
        settings = self.settings
        since = utcnow() - timedelta(seconds=settings.login_window_s)
        for where, allowed in (
            ((LoginFailure.email == email, LoginFailure.address == address), settings.login_attempts),
            ((LoginFailure.address == address,), settings.login_attempts_per_address),
            ((LoginFailure.email == email,), settings.login_attempts_per_email),
        ):
            failures = await self.session.scalar(
                select(func.count()).select_from(LoginFailure).where(LoginFailure.at > since, *where)
            )
            if (failures or 0) >= allowed:
                return True
        return False

    async def login(self, body: LoginBody, address: str) -> Issued:
        """A token for the user's default team; 429 (with `Retry-After`) once failed logins from `address`
        (the client's) or for the email went over the settings' limits."""
        session, settings = self.session, self.settings
        email, address = body.email.strip().lower(), address[:64]
        if await self._throttled(email, address):
            raise _errors.ApiError(
                429, "rate_limited", "too many failed logins: try again in a few minutes"
            ).with_headers({"Retry-After": str(settings.login_window_s)})
        user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
        if not verify_password(user.password_hash if user else DUMMY_HASH, body.password) or user is None:
            session.add(LoginFailure(email=email, address=address))
            await session.commit()
            raise _errors.unauthorized("wrong email or password")
        if user.status != "active":
            raise _errors.ApiError(403, "account_disabled", "this account is disabled")
        await session.execute(
            delete(LoginFailure).where(LoginFailure.email == email, LoginFailure.address == address)
        )
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


def bootstrap_file(data_dir: Path) -> Path:
    """Where this control plane keeps the bootstrap token (removed once it made the admin)."""
    return data_dir / BOOTSTRAP_FILE


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def has_admin(session: AsyncSession) -> bool:
    return (await session.scalar(select(User.id).where(User.is_admin.is_(True)).limit(1))) is not None


async def prepare_bootstrap(session: AsyncSession, data_dir: Path) -> Path | None:
    """At start: while there is no admin, make sure a bootstrap token exists whose plaintext this control
    plane holds (a new one replaces one this data directory does not hold); the file's path, or None once
    an admin exists (a leftover token is then removed)."""
    path = bootstrap_file(data_dir)
    if await has_admin(session):
        await session.execute(delete(BootstrapToken))
        await session.commit()
        path.unlink(missing_ok=True)
        return None
    row = await session.get(BootstrapToken, _BOOTSTRAP_ROW)
    try:
        held = path.read_text().strip()
    except FileNotFoundError:
        held = ""
    if row is not None and held and row.token_hash == _hash(held):
        return path
    token = new_token(32)
    if row is None:
        session.add(BootstrapToken(id=_BOOTSTRAP_ROW, token_hash=_hash(token)))
    else:
        row.token_hash, row.created_at = _hash(token), utcnow()
    try:
        await session.commit()
    except IntegrityError:  # another control plane made one at the same moment: its file is the one
        await session.rollback()
        return None
    write_private(path, token + "\n")
    log.warning(
        "the platform has no admin yet: create one with the bootstrap token in this file "
        "(POST /v1/admin/bootstrap; `wrenn up` does it)",
        extra={"path": str(path)},
    )
    return path


async def consume_bootstrap(session: AsyncSession, token: str) -> None:
    """Spend the bootstrap token (the caller commits, with the admin it creates); 401 unless it is the
    current one."""
    spent = await session.execute(
        delete(BootstrapToken)
        .where(BootstrapToken.id == _BOOTSTRAP_ROW, BootstrapToken.token_hash == _hash(token.strip()))
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise _errors.unauthorized("unknown or already used bootstrap token")
