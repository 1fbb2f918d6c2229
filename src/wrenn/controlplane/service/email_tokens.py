"""Single-use tokens sent by e-mail (account activation, password reset).

A token is 32 random bytes (64 hex); the database keeps its SHA-256 only, so a read of the table gives
no working link. It is spent by a conditional `DELETE` (a second use, or a racing one, finds nothing) and
refused after its expiry. Using one removes the user's other tokens of the same purpose."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .._ids import new_token
from ..db import EmailToken, as_utc, utcnow

ACTIVATE = "activate"
RESET = "reset"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def issue(session: AsyncSession, user_id: str, purpose: str, ttl_s: int) -> str:
    """A new token for `user_id` (added to the session; the caller commits): the one to send."""
    token = new_token(32)
    now = utcnow()
    session.add(
        EmailToken(
            token_hash=token_hash(token),
            purpose=purpose,
            user_id=user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    return token


async def spend(session: AsyncSession, token: str, purpose: str) -> str | None:
    """The user id of a valid, unexpired token of `purpose`, which is spent (with the user's other tokens
    of that purpose); None for any other token. The caller commits."""
    if not token or len(token) > 128:
        return None
    digest = token_hash(token)
    row = await session.get(EmailToken, digest)
    if row is None or row.purpose != purpose:
        return None
    user_id, expires_at = row.user_id, as_utc(row.expires_at)
    spent = await session.execute(
        delete(EmailToken)
        .where(EmailToken.token_hash == digest, EmailToken.purpose == purpose)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1 or expires_at <= utcnow():
        return None
    await session.execute(
        delete(EmailToken)
        .where(EmailToken.user_id == user_id, EmailToken.purpose == purpose)
        .execution_options(synchronize_session=False)
    )
    return user_id


async def recent(session: AsyncSession, user_id: str, purpose: str, window_s: int) -> int:
    """How many tokens of `purpose` were sent to the user within the last `window_s` seconds."""
    since = utcnow() - timedelta(seconds=window_s)
    count = await session.scalar(
        select(func.count())
        .select_from(EmailToken)
        .where(EmailToken.user_id == user_id, EmailToken.purpose == purpose, EmailToken.created_at > since)
    )
    return int(count or 0)
