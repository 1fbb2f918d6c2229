"""Placing a capsule: the least-loaded online host that has room for it (admission control).

Load counts every capsule that holds (or may still hold) memory on its host: `pending` (booting),
`starting`, `running` and `missing` (its host went silent; its VM may well be alive). A host with a slot
capacity takes no more capsules than that. On PostgreSQL the candidate hosts are locked until the caller
commits the new capsule, so two control planes (or two requests) cannot both admit into the last room.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ._errors import ApiError
from .db import Capsule, Host, HostStatus, states

#: Memory each host keeps for itself, as the agent does.
RESERVED_MB = 1024


async def pick_host(session: AsyncSession, memory_mb: int, team_id: str | None = None) -> Host:
    """The online host with the most free memory after placing `memory_mb`; 503 when none has room.

    Candidates: the platform's (`regular`) hosts and, when `team_id` is given, that team's BYOC hosts.
    The caller commits (or rolls back) soon after: the hosts stay locked until then on PostgreSQL."""
    used = (
        select(
            Capsule.host_id,
            func.coalesce(func.sum(Capsule.memory_mb), 0).label("mem"),
            func.count().label("n"),
        )
        .where(Capsule.status.in_(states.LOADED))
        .group_by(Capsule.host_id)
        .subquery()
    )
    eligible = Host.type != "byoc" if team_id is None else or_(Host.type != "byoc", Host.team_id == team_id)
    rows = await session.execute(
        select(Host, func.coalesce(used.c.mem, 0), func.coalesce(used.c.n, 0))
        .outerjoin(used, used.c.host_id == Host.id)
        .where(Host.status == HostStatus.ONLINE, eligible)
        .order_by(Host.id)  # one lock order for everyone
        .with_for_update(of=Host)
    )
    best: tuple[float, Host] | None = None
    for host, used_mb, count in rows.all():
        free = host.memory_mb - RESERVED_MB - used_mb - memory_mb
        if free < 0 or (host.slot_capacity and count >= host.slot_capacity):
            continue
        score = free / max(host.memory_mb, 1)
        if best is None or score > best[0]:
            best = (score, host)
    if best is None:
        raise ApiError(503, "no_hosts_available", f"no online host has room for a {memory_mb} MiB capsule")
    return best[1]
