"""Who may see and manage a host, what deleting one would affect, its tags, and whether a team may bring
its own (BYOC) hosts."""

from __future__ import annotations

import re

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _errors
from .._principal import Principal
from .._settings import Settings
from ..db import Capsule, Host, HostTag, Membership, Team, User, states

#: A tag: what schedulers and people filter hosts by (`gpu`, `eu-west`, `tier:fast`).
TAG = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:=-]{0,63}$")
#: Tags per host, at most.
MAX_TAGS = 32


async def is_admin(session: AsyncSession, caller: Principal) -> bool:
    user = await session.get(User, caller.user_id) if caller.user_id else None
    return bool(user and user.is_admin)


async def visible_host(session: AsyncSession, caller: Principal, host_id: str) -> tuple[Host, bool]:
    """The host if the caller may see it (admins: all; others: their team's), and whether they are admin."""
    host = await session.get(Host, host_id)
    admin = await is_admin(session, caller)
    if host is None or not (admin or (host.team_id is not None and host.team_id == caller.team_id)):
        raise _errors.not_found(f"host {host_id}")
    return host, admin


async def may_manage(session: AsyncSession, caller: Principal, host: Host, admin: bool) -> None:
    if admin:
        return
    member = await session.get(Membership, (host.team_id, caller.user_id)) if host.team_id else None
    if host.type != "byoc" or member is None or member.role != "owner":
        raise _errors.forbidden("only an admin, or the owner of a BYOC host's team, manages a host")


async def managed_host(session: AsyncSession, caller: Principal, host_id: str) -> Host:
    """A host the caller manages (an admin, or the owner of a BYOC host's team); 404 if not visible."""
    host, admin = await visible_host(session, caller, host_id)
    await may_manage(session, caller, host, admin)
    return host


async def active_capsules(session: AsyncSession, host_id: str) -> list[Capsule]:
    """Capsules still on the host (what a deletion would stop), by id."""
    found = await session.execute(
        select(Capsule)
        .where(Capsule.host_id == host_id, Capsule.status.in_(states.ON_HOST))
        .order_by(Capsule.id)
    )
    return list(found.scalars())


async def tags(session: AsyncSession, host_id: str) -> list[str]:
    found = await session.execute(select(HostTag.tag).where(HostTag.host_id == host_id).order_by(HostTag.tag))
    return list(found.scalars())


async def add_tag(session: AsyncSession, host_id: str, tag: str) -> bool:
    """Tag the host (the caller commits); whether it was new. 400 for a bad tag or too many."""
    if not TAG.match(tag):
        raise _errors.bad_request(
            "tag: letters, digits and . _ : = - (up to 64, starting with a letter or digit)"
        )
    present = await tags(session, host_id)
    if tag in present:
        return False
    if len(present) >= MAX_TAGS:
        raise _errors.bad_request(f"a host has at most {MAX_TAGS} tags")
    session.add(HostTag(host_id=host_id, tag=tag))
    return True


async def remove_tag(session: AsyncSession, host_id: str, tag: str) -> None:
    """Untag the host (the caller commits); 404 if it has no such tag."""
    gone = await session.execute(
        delete(HostTag)
        .where(HostTag.host_id == host_id, HostTag.tag == tag)
        .execution_options(synchronize_session=False)
    )
    if getattr(gone, "rowcount", 0) != 1:
        raise _errors.not_found(f"tag {tag}")


async def byoc_allowed(session: AsyncSession, settings: Settings, team_id: str) -> bool:
    """Whether the team's owner may add BYOC hosts: the team's setting (a platform admin's), else the
    platform's default."""
    team = await session.get(Team, team_id)
    if team is None or team.byoc_enabled is None:
        return settings.byoc_default
    return bool(team.byoc_enabled)
