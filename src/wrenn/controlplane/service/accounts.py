"""Accounts: creating a user with their default team, and the platform's first admin.

No sign-up makes an admin. While the platform has none, the control plane keeps a one-time **bootstrap
token**: its SHA-256 in the database, the token itself in `<data dir>/bootstrap-token` (mode 0600, root's
to read) of the control plane that made it. `POST /v1/admin/bootstrap` with that token creates the first
admin, once: the token is consumed by a conditional DELETE, so two racing requests (or control planes)
cannot both win. `wrenn up` reads the file and does it for you.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn._shared.private import write_private

from .. import _errors
from .._ids import new_id, new_slug, new_token
from .._security import hash_password
from ..db import BootstrapToken, Membership, Team, User, utcnow

log = logging.getLogger("wrenn.controlplane.accounts")

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: Where the bootstrap token is written, under the control plane's data directory.
BOOTSTRAP_FILE = "bootstrap-token"
_BOOTSTRAP_ROW = "platform"


def spent_token_file(data_dir: Path) -> Path:
    """Where this control plane keeps the bootstrap token (removed once it made the admin)."""
    return data_dir / BOOTSTRAP_FILE


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_user_with_team(
    session: AsyncSession, email: str, password: str, name: str, *, admin: bool = False
) -> tuple[User, Team]:
    """A new active account (a platform admin only when `admin`) owning a new default team (flushed,
    not committed)."""
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


async def has_admin(session: AsyncSession) -> bool:
    return (await session.scalar(select(User.id).where(User.is_admin.is_(True)).limit(1))) is not None


async def prepare_bootstrap(session: AsyncSession, data_dir: Path) -> Path | None:
    """At start: while there is no admin, make sure a bootstrap token exists whose plaintext this control
    plane holds (a new one replaces one this data directory does not hold); the file's path, or None once
    an admin exists (a leftover token is then removed)."""
    path = spent_token_file(data_dir)
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
