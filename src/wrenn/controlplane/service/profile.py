"""A signed-in user's own account: name, password, sessions, linked identity providers, deletion.

- Changing the password needs the current one (an account without one, made by an identity provider,
  sets a first password without); it signs out every session (the token generation moves on) and hands
  the caller a new token. Wrong current passwords count as failed logins.
- Signing out revokes the caller's token (its `jti`, kept until it would have expired), or with
  `everywhere` every token of the account.
- Deleting the account is soft: it is `deleted` at once (no token or API key of it works, no sign-in),
  and the janitor deletes it for good after the grace period (`_janitor.py`). An owner of a team with
  other members must hand the team over or delete it first; the platform's last admin cannot leave.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _errors
from .._mail import Mail, Mailer
from .._principal import Principal
from .._security import Tokens, hash_password, verify_password
from .._settings import Settings
from ..db import Identity, LoginFailure, Membership, RevokedToken, Team, User, UserStatus, utcnow
from .accounts import Issued, issue, password_changed_mail, record_user

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ProfileUpdate(BaseModel):
    name: Name


class PasswordChange(BaseModel):
    #: Required when the account has a password.
    current_password: str | None = Field(default=None, max_length=256)
    new_password: str = Field(min_length=8, max_length=256)


class AccountDelete(BaseModel):
    #: The account's e-mail address, typed again.
    confirmation: str = Field(max_length=320)


class SignOut(BaseModel):
    #: Every session of the account, not only this one.
    everywhere: bool = False


async def is_last_admin(session: AsyncSession, user: User) -> bool:
    if not user.is_admin:
        return False
    others = await session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.is_admin.is_(True), User.status == UserStatus.ACTIVE, User.id != user.id)
    )
    return not others


async def shared_teams_owned(session: AsyncSession, user_id: str) -> list[str]:
    """Live teams the user owns that have other members."""
    owned = select(Membership.team_id).where(Membership.user_id == user_id, Membership.role == "owner")
    rows = await session.execute(
        select(Membership.team_id)
        .join(Team, Team.id == Membership.team_id)
        .where(Membership.team_id.in_(owned), Membership.user_id != user_id, Team.deleted_at.is_(None))
        .distinct()
    )
    return sorted(rows.scalars())


def revoke_all(user: User) -> None:
    """Every token of the user issued so far stops working (the caller commits)."""
    user.token_generation += 1


class ProfileService:
    def __init__(self, session: AsyncSession, tokens: Tokens, settings: Settings, mailer: Mailer) -> None:
        self.session = session
        self.tokens = tokens
        self.settings = settings
        self.mailer = mailer

    async def _user(self, caller: Principal) -> User:
        user = await self.session.get(User, caller.user_id)
        assert user is not None  # a UserCaller's account exists and is active
        return user

    async def rename(self, caller: Principal, body: ProfileUpdate) -> None:
        user = await self._user(caller)
        old, user.name = user.name, body.name
        record_user(self.session, user, None, "rename", status="info", old_name=old, new_name=body.name)
        await self.session.commit()

    async def change_password(self, caller: Principal, body: PasswordChange) -> Issued:
        """Set a new password (the current one required if there is one): every session is signed out,
        the caller gets a new token, a notice is e-mailed. 403 for a wrong current password, 429 after too
        many wrong ones (counted as failed logins)."""
        user = await self._user(caller)
        if user.password_hash:
            since = utcnow() - timedelta(seconds=self.settings.login_window_s)
            failures = await self.session.scalar(
                select(func.count())
                .select_from(LoginFailure)
                .where(LoginFailure.email == user.email, LoginFailure.at > since)
            )
            if (failures or 0) >= self.settings.login_attempts:
                raise _errors.ApiError(
                    429, "rate_limited", "too many wrong passwords: try again in a few minutes"
                ).with_headers({"Retry-After": str(self.settings.login_window_s)})
            if not body.current_password or not verify_password(user.password_hash, body.current_password):
                self.session.add(LoginFailure(email=user.email, address="password-change"))
                await self.session.commit()
                raise _errors.ApiError(403, "wrong_password", "the current password is wrong")
        first = not user.password_hash
        user.password_hash = hash_password(body.new_password)
        revoke_all(user)
        record_user(
            self.session, user, None, "password_set" if first else "password_change", status="warning"
        )
        await self.session.commit()
        self.mailer.send_later(password_changed_mail(user))
        member = await self.session.get(Membership, (caller.team_id, user.id))
        assert member is not None
        return issue(self.tokens, user, member.team_id, member.role)

    async def sign_out(self, caller: Principal, everywhere: bool) -> None:
        user = await self._user(caller)
        if everywhere or not caller.token_id:
            revoke_all(user)
        else:
            expires = datetime.fromtimestamp(caller.token_expires, UTC)
            if await self.session.get(RevokedToken, caller.token_id) is None:
                self.session.add(RevokedToken(jti=caller.token_id, expires_at=expires))
        record_user(self.session, user, None, "sign_out", status="info", everywhere=everywhere)
        await self.session.commit()

    async def delete(self, caller: Principal, body: AccountDelete) -> datetime:
        """Soft-delete the account; when it will be deleted for good."""
        user = await self._user(caller)
        if body.confirmation.strip().lower() != user.email:
            raise _errors.bad_request("confirmation: type the account's e-mail address to delete it")
        shared = await shared_teams_owned(self.session, user.id)
        if shared:
            raise _errors.conflict(
                f"you own teams with other members ({', '.join(shared)}): delete them or leave them to "
                "someone else first", "owns_shared_team",
            )  # fmt: skip
        if await is_last_admin(self.session, user):
            raise _errors.conflict(
                "you are the platform's last admin: make another admin first", "last_admin"
            )
        user.status, user.deleted_at = UserStatus.DELETED, utcnow()
        revoke_all(user)
        purge_at = user.deleted_at + timedelta(days=self.settings.account_grace_days)
        record_user(self.session, user, None, "delete", status="warning", purge_at=purge_at.isoformat())
        await self.session.commit()
        self.mailer.send_later(
            Mail(
                to=user.email,
                subject="Your Wrenn account was deleted",
                paragraphs=(
                    f"Hello {user.name},",
                    "Your Wrenn account was deleted: it can no longer sign in, and its API keys stopped "
                    f"working. It and its teams' capsules and templates are removed for good on "
                    f"{purge_at:%Y-%m-%d}.",
                    "If you did not ask for this, tell your Wrenn operator before then: they can restore it.",
                ),
            )
        )
        return purge_at

    async def unlink(self, caller: Principal, provider: str) -> None:
        """Remove a linked identity provider; 409 if it is the account's last way to sign in."""
        user = await self._user(caller)
        linked = list(
            (await self.session.execute(select(Identity).where(Identity.user_id == user.id))).scalars()
        )
        mine = [i for i in linked if i.provider == provider]
        if not mine:
            raise _errors.not_found(f"linked provider {provider}")
        if not user.password_hash and len(linked) == len(mine):
            raise _errors.conflict(
                "this is your only way to sign in: set a password or link another provider first",
                "last_sign_in_method",
            )
        for identity in mine:
            await self.session.delete(identity)
        record_user(self.session, user, None, "unlink_provider", status="info", provider=provider)
        await self.session.commit()
