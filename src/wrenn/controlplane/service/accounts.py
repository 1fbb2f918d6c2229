"""Accounts: sign-up, sign-in (rate-limited), switching teams, who the caller is, and the platform's first
admin. `/v1/auth` hands the issued token to the client; the dashboard's routes put it in the session
cookie instead.

No sign-up makes an admin. While the platform has none, the control plane keeps a one-time **bootstrap
token**: its SHA-256 in the database, the token itself in `<data dir>/bootstrap-token` (mode 0600, root's
to read) of the control plane that made it. `POST /v1/admin/bootstrap` with that token creates the first
admin, once: the token is consumed by a conditional DELETE, so two racing requests (or control planes)
cannot both win. `wrenn up` reads the file and does it for you.

Failed logins are counted in the database (shared by every control plane) per email and client address,
per address (password spraying) and per email (a guess spread over addresses).

With `require_activation` a new account is `inactive` until the link in its activation e-mail is followed.
A password reset answers the same whether or not the address has an account (the e-mail goes out after
the answer, and only to an account that may sign in); its link is single-use and expires."""

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
from .._mail import Mail, Mailer
from .._principal import Principal
from .._security import DUMMY_HASH, Claims, Tokens, hash_password, verify_password
from .._settings import Settings
from ..db import BootstrapToken, Identity, LoginFailure, Membership, Team, User, UserStatus, utcnow
from . import email_tokens

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


class ActivateBody(BaseModel):
    token: str = Field(min_length=1, max_length=128)


class EmailBody(BaseModel):
    email: str = Field(max_length=320)


class ResetConfirmBody(BaseModel):
    token: str = Field(min_length=1, max_length=128)
    new_password: str = Field(min_length=8, max_length=256)


class BootstrapBody(SignupBody):
    #: The one-time token in `<data dir>/bootstrap-token` of the control plane that made it.
    token: str = Field(min_length=1, max_length=128)


class AuthResponse(BaseModel):
    """What a sign-in answers: the token and whom it names."""

    token: str
    user_id: str
    team_id: str
    email: str
    name: str


@dataclass(frozen=True, slots=True)
class Issued:
    """A user token for one of the user's teams, and whom it names."""

    token: str
    user_id: str
    team_id: str
    email: str
    name: str


@dataclass(frozen=True, slots=True)
class Pending:
    """A sign-up waiting for its activation e-mail to be followed."""

    user_id: str
    email: str
    message: str = "check your e-mail: follow the link in it to activate your account"


def issue(tokens: Tokens, user: User, team_id: str, role: str) -> Issued:
    """A user token for one of the user's teams, of the user's current token generation."""
    token = tokens.issue(Claims(user.id, team_id, role, user.email, generation=user.token_generation))
    return Issued(token=token, user_id=user.id, team_id=team_id, email=user.email, name=user.name)


async def default_membership(session: AsyncSession, user_id: str) -> Membership:
    """The user's default team's membership (else any), or 403 `no_team`."""
    member = (
        (
            await session.execute(
                select(Membership).where(Membership.user_id == user_id).order_by(Membership.is_default.desc())
            )
        )
        .scalars()
        .first()
    )
    if member is None:
        raise _errors.ApiError(403, "no_team", "this account belongs to no team")
    return member


def refuse_unless_active(user: User) -> None:
    """403 with the reason an account that is not active cannot sign in."""
    if user.status == UserStatus.INACTIVE:
        raise _errors.ApiError(
            403, "account_not_activated", "this account is not activated yet: follow the link in its e-mail"
        )
    if user.status != UserStatus.ACTIVE:
        raise _errors.ApiError(403, "account_disabled", "this account is disabled")


def record_user(
    session: AsyncSession,
    user: User,
    team_id: str | None,
    action: str,
    status: str = "success",
    **metadata: Any,
) -> None:
    """An audit entry about an account, by itself (`team_id` None: the platform's log only)."""
    _audit.record(
        session, team_id=team_id, actor_type="user", actor_id=user.id, actor_name=user.email,
        resource_type="user", resource_id=user.id, action=action, status=status, **metadata,
    )  # fmt: skip


def link(settings: Settings, page: str, token: str) -> str:
    return f"{settings.public_url}/{page}?token={token}"


async def create_user_with_team(
    session: AsyncSession,
    email: str,
    password: str | None,
    name: str,
    admin: bool = False,
    status: str = UserStatus.ACTIVE,
) -> tuple[User, Team]:
    """A new account (a platform admin only when `admin`; no password: it signs in with an identity
    provider) owning a new default team (flushed, not committed)."""
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise _errors.bad_request("email is not a valid address")
    if (await session.execute(select(User).where(User.email == email))).scalar_one_or_none() is not None:
        raise _errors.conflict("an account with this email already exists")
    user = User(
        id=new_id("usr"),
        email=email,
        name=name or email.split("@")[0],
        password_hash=hash_password(password) if password is not None else None,
        is_admin=admin,
        status=status,
    )
    team = Team(id=new_id("team"), name=f"{user.name}'s team", slug=new_slug())
    session.add_all([user, team])
    await session.flush()
    session.add(Membership(team_id=team.id, user_id=user.id, role="owner", is_default=True))
    return user, team


class AccountService:
    def __init__(self, session: AsyncSession, tokens: Tokens, settings: Settings, mailer: Mailer) -> None:
        self.session = session
        self.tokens = tokens
        self.settings = settings
        self.mailer = mailer

    def _issue(self, user: User, team_id: str, role: str) -> Issued:
        return issue(self.tokens, user, team_id, role)

    async def _create_user_with_team(
        self, email: str, password: str, name: str, admin: bool = False
    ) -> tuple[User, Team]:
        """A new active account (a platform admin only when `admin`) owning a new default team (flushed,
        not committed)."""
        return await create_user_with_team(self.session, email, password, name, admin=admin)

    async def signup(self, body: SignupBody) -> Issued | Pending:
        """An account and its default team, never an admin: active at once, or (with `require_activation`)
        `inactive` until the link in the activation e-mail is followed."""
        if not self.settings.require_activation:
            return await self._new_account(body, admin=False)
        user, team = await create_user_with_team(
            self.session, body.email, body.password, body.name, status=UserStatus.INACTIVE
        )
        record_user(self.session, user, team.id, "signup", activated=False)
        token = email_tokens.issue(
            self.session, user.id, email_tokens.ACTIVATE, self.settings.activation_ttl_s
        )
        await self.session.commit()
        self.mailer.send_later(self._activation_mail(user, token))
        return Pending(user_id=user.id, email=user.email)

    def _activation_mail(self, user: User, token: str) -> Mail:
        hours = max(1, self.settings.activation_ttl_s // 3600)
        return Mail(
            to=user.email,
            subject="Activate your Wrenn account",
            paragraphs=(
                f"Hello {user.name},",
                f"Welcome to Wrenn. Follow this link within {hours} hours to activate your account.",
                "If you did not sign up, ignore this e-mail: no account is activated without it.",
            ),
            button=("Activate my account", link(self.settings, "activate", token)),
        )

    async def activate(self, token: str) -> Issued:
        """Follow an activation link: the account becomes active and gets a token (401 for an unknown,
        used or expired link)."""
        user_id = await email_tokens.spend(self.session, token, email_tokens.ACTIVATE)
        user = await self.session.get(User, user_id) if user_id else None
        if user is None or user.status != UserStatus.INACTIVE:
            await self.session.commit()  # an expired token found is removed all the same
            raise _errors.unauthorized("this activation link is unknown, used or expired")
        user.status = UserStatus.ACTIVE
        member = await default_membership(self.session, user.id)
        record_user(self.session, user, member.team_id, "activate")
        await self.session.commit()
        return self._issue(user, member.team_id, member.role)

    async def resend_activation(self, email: str) -> None:
        """Send the activation e-mail again to an inactive account; the same answer for any address."""
        self.mailer.require("activation")
        user = await self._by_email(email)
        if user is None or user.status != UserStatus.INACTIVE:
            return
        if await self._mail_budget_spent(user.id, email_tokens.ACTIVATE):
            return
        token = email_tokens.issue(
            self.session, user.id, email_tokens.ACTIVATE, self.settings.activation_ttl_s
        )
        await self.session.commit()
        self.mailer.send_later(self._activation_mail(user, token))

    async def _by_email(self, email: str) -> User | None:
        email = email.strip().lower()
        if not EMAIL.match(email):
            return None
        return (await self.session.execute(select(User).where(User.email == email))).scalar_one_or_none()

    async def _mail_budget_spent(self, user_id: str, purpose: str) -> bool:
        sent = await email_tokens.recent(self.session, user_id, purpose, 3600)
        return sent >= self.settings.reset_mails_per_hour

    async def request_reset(self, email: str) -> None:
        """E-mail a password reset link to the account with this address, if it may sign in; the same
        answer, at once, for any address (503 `email_disabled` without SMTP, whatever the address). At
        most `reset_mails_per_hour` links an hour per account."""
        self.mailer.require("password reset")
        user = await self._by_email(email)
        if user is None or user.status not in (UserStatus.ACTIVE, UserStatus.INACTIVE):
            return
        if await self._mail_budget_spent(user.id, email_tokens.RESET):
            return
        token = email_tokens.issue(self.session, user.id, email_tokens.RESET, self.settings.reset_ttl_s)
        await self.session.commit()
        minutes = max(1, self.settings.reset_ttl_s // 60)
        self.mailer.send_later(
            Mail(
                to=user.email,
                subject="Reset your Wrenn password",
                paragraphs=(
                    f"Hello {user.name},",
                    f"Someone asked to reset the password of your Wrenn account. Follow this link within "
                    f"{minutes} minutes to choose a new one; it works once.",
                    "If it was not you, ignore this e-mail: your password stays as it is.",
                ),
                button=("Choose a new password", link(self.settings, "reset-password", token)),
            )
        )

    async def confirm_reset(self, body: ResetConfirmBody) -> None:
        """Set a new password with a reset link's token (401 for an unknown, used or expired one). Every
        session of the account is signed out; a notice is e-mailed. Following a reset link also proves
        the address, so an inactive account becomes active."""
        user_id = await email_tokens.spend(self.session, body.token, email_tokens.RESET)
        user = await self.session.get(User, user_id) if user_id else None
        if user is None or user.status not in (UserStatus.ACTIVE, UserStatus.INACTIVE):
            await self.session.commit()
            raise _errors.unauthorized("this reset link is unknown, used or expired")
        user.password_hash = hash_password(body.new_password)
        user.status = UserStatus.ACTIVE
        user.token_generation += 1
        record_user(self.session, user, None, "password_reset", status="warning")
        await self.session.commit()
        self.mailer.send_later(password_changed_mail(user))

    async def bootstrap(self, body: BootstrapBody) -> Issued:
        """The platform's first admin, with the one-time bootstrap token (401 for any other); the token's
        file is removed once spent."""
        await consume_bootstrap(self.session, body.token)
        issued = await self._new_account(body, admin=True)
        bootstrap_file(self.settings.data_dir).unlink(missing_ok=True)
        return issued

    async def _new_account(self, body: SignupBody, admin: bool) -> Issued:
        user, team = await self._create_user_with_team(body.email, body.password, body.name, admin=admin)
        record_user(self.session, user, team.id, "bootstrap_admin" if admin else "signup")
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
        stored = (user.password_hash if user else None) or DUMMY_HASH
        if not verify_password(stored, body.password) or user is None or not user.password_hash:
            session.add(LoginFailure(email=email, address=address))
            await session.commit()
            raise _errors.unauthorized("wrong email or password")
        refuse_unless_active(user)
        await session.execute(
            delete(LoginFailure).where(LoginFailure.email == email, LoginFailure.address == address)
        )
        member = await default_membership(session, user.id)
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
        linked = await self.session.execute(select(Identity.provider).where(Identity.user_id == user.id))
        return {
            "user_id": user.id,
            "name": user.name,
            "email": user.email,
            "has_password": bool(user.password_hash),
            "providers": sorted(set(linked.scalars())),
            "team_id": caller.team_id,
            "role": caller.role,
            "is_admin": user.is_admin,
        }


def password_changed_mail(user: User) -> Mail:
    return Mail(
        to=user.email,
        subject="Your Wrenn password was changed",
        paragraphs=(
            f"Hello {user.name},",
            "The password of your Wrenn account was just changed, and every session of the account was "
            "signed out.",
            "If you did not do this, reset your password at once and tell your Wrenn operator.",
        ),
    )


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
