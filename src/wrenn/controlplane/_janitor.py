"""The account janitor: a background job of every control plane, every `janitor_interval_s` (and once at
start).

1. **Accounts deleted longer than the grace period** (`account_grace_days`) are deleted for good: the
   teams they own are deleted (their capsules destroyed on their hosts), the API keys they created are
   revoked, the account's rows (memberships, linked identities, tokens) go, and the audit log keeps the
   events with the account's name replaced by "deleted user" (its id stays, as a pseudonym).
2. **Expired** reset and activation tokens, sign-ins under way, revoked-token records and old failed
   logins are removed, and so are events and finished deliveries older than `events_retention_days`.
3. **Usage.** Each finished day with team samples and no rolled-up usage is rolled up (CPU-minutes and
   RAM-MB-minutes per team), and capsule samples, team samples and daily usage older than their retention
   (`metrics_retention_days`, `stats_retention_days`, `usage_retention_days`) are removed.

Safe with several control planes on one PostgreSQL database: each account is purged under a
transaction-scoped advisory lock (`pg_try_advisory_xact_lock`, skipped when another control plane holds
it) and re-read under it, so an account restored meanwhile is left alone; the removals of steps 2 and 3 are
idempotent deletes; each day is rolled up under its own advisory lock, and only if no control plane has
rolled it up meanwhile. A purge that fails (a host that cannot destroy a capsule) is retried next round.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import _audit
from ._background import Background, lock_key
from ._errors import ApiError
from .db import (
    ApiKey,
    AuditLog,
    EmailToken,
    Identity,
    LoginFailure,
    Membership,
    OAuthFlow,
    RevokedToken,
    Team,
    User,
    UserStatus,
    as_utc,
    utcnow,
)
from .service import channels, usage
from .service.teams import delete_team

log = logging.getLogger("wrenn.controlplane.janitor")
ANONYMOUS = "deleted user"
_SYSTEM: dict[str, Any] = {"actor_type": "system", "actor_id": "janitor", "actor_name": "account janitor"}


class Janitor(Background):
    task_name = "wrenn-janitor"
    round_name = "janitor round"

    def interval_s(self) -> float:
        return self._settings.janitor_interval_s

    async def tick(self) -> int:
        """One round; how many accounts were deleted for good."""
        purged = 0
        for user_id in await self._due():
            if await self._purge(user_id):
                purged += 1
        await self.prune()
        await self.roll_up()
        return purged

    async def _due(self) -> list[str]:
        cutoff = utcnow() - timedelta(days=self._settings.account_grace_days)
        async with self._sessions() as session:
            found = await session.execute(
                select(User.id).where(User.status == UserStatus.DELETED, User.deleted_at < cutoff)
            )
            return list(found.scalars())

    async def _claim(self, session: AsyncSession, user_id: str) -> User | None:
        """The account, if it is still due and this control plane holds its lock for the transaction."""
        if self._postgres and not await session.scalar(
            select(func.pg_try_advisory_xact_lock(lock_key("user", user_id)))
        ):
            return None  # another control plane is on it
        user = await session.get(User, user_id, populate_existing=True)
        cutoff = utcnow() - timedelta(days=self._settings.account_grace_days)
        if (
            user is None
            or user.status != UserStatus.DELETED
            or user.deleted_at is None
            or as_utc(user.deleted_at) >= cutoff
        ):
            return None  # restored (or purged) meanwhile
        return user

    async def _purge(self, user_id: str) -> bool:
        async with self._sessions() as session:
            user = await self._claim(session, user_id)
            if user is None:
                return False
            owned = (
                await session.execute(
                    select(Team)
                    .join(Membership, Membership.team_id == Team.id)
                    .where(
                        Membership.user_id == user_id, Membership.role == "owner", Team.deleted_at.is_(None)
                    )
                )
            ).scalars()
            for team in list(owned):
                team_id = team.id
                try:
                    await delete_team(session, self._agents, self._settings, team, None)
                except ApiError as exc:
                    log.warning("account not purged yet: a team could not be deleted",
                                extra={"user": user_id, "team": team_id, "error": exc.message})  # fmt: skip
                    return False
            # deleting a team commits (its capsules one at a time), which ends the lock: take it again
            user = await self._claim(session, user_id)
            if user is None:
                return False
            await self._forget(session, user)
            await session.commit()
        log.info("account deleted for good", extra={"user": user_id})
        return True

    async def _forget(self, session: AsyncSession, user: User) -> None:
        """Remove the account and what hangs on it; anonymise its audit trail (the caller commits)."""
        keys = list((await session.execute(select(ApiKey).where(ApiKey.created_by == user.id))).scalars())
        for key in keys:
            _audit.record(
                session, **(_SYSTEM | {"team_id": key.team_id}), resource_type="api_key", resource_id=key.id,
                action="revoke", status="warning", reason="creator_deleted",
            )  # fmt: skip
            await session.delete(key)
        for model in (Membership, Identity, EmailToken, OAuthFlow):
            await session.execute(delete(model).where(model.user_id == user.id))
        await session.execute(
            update(AuditLog)
            .where(AuditLog.actor_id == user.id)
            .values(actor_name=ANONYMOUS)
            .execution_options(synchronize_session=False)
        )
        about = (
            await session.execute(
                select(AuditLog).where(or_(AuditLog.resource_id == user.id, AuditLog.actor_id == user.id))
            )
        ).scalars()
        for entry in about:
            if entry.metadata_ and "email" in entry.metadata_:
                entry.metadata_ = {k: v for k, v in entry.metadata_.items() if k != "email"}
        await session.delete(user)
        _audit.record(
            session, **(_SYSTEM | {"team_id": None}), resource_type="user", resource_id=user.id,
            action="purge", status="warning",
        )  # fmt: skip

    async def prune(self) -> None:
        now = utcnow()
        async with self._sessions() as session:
            for model in (EmailToken, OAuthFlow, RevokedToken):
                await session.execute(delete(model).where(model.expires_at < now))
            window = timedelta(seconds=2 * self._settings.login_window_s)
            await session.execute(delete(LoginFailure).where(LoginFailure.at < now - window))
            await channels.prune(session, now - timedelta(days=self._settings.events_retention_days))
            await session.commit()

    async def roll_up(self) -> int:
        """Roll up the finished days not rolled up yet, then drop what is past its retention; how many
        days."""
        async with self._sessions() as session:
            days = await usage.unrolled_days(session, utcnow().date())
        done = 0
        for day in days:
            done += await self._roll_up_day(day)
        settings = self._settings
        async with self._sessions() as session:
            await usage.prune(
                session, settings.metrics_retention_days, settings.stats_retention_days,
                settings.usage_retention_days,
            )  # fmt: skip
            await session.commit()
        return done

    async def _roll_up_day(self, day: date) -> int:
        async with self._sessions() as session:
            if self._postgres and not await session.scalar(
                select(func.pg_try_advisory_xact_lock(lock_key("usage", day.isoformat())))
            ):
                return 0  # another control plane is rolling it up
            if day not in await usage.unrolled_days(session, day + timedelta(days=1)):
                return 0  # rolled up meanwhile
            teams = await usage.roll_up(session, day)
            await session.commit()
        log.info("usage rolled up", extra={"day": day.isoformat(), "teams": teams})
        return 1
