"""Placing a capsule: the least-loaded online host that has room for it (admission control).

Load counts every capsule that holds (or may still hold) resources on its host: `pending` (booting),
`starting`, `running` and `missing` (its host went silent; its VM may well be alive). A host with a slot
capacity takes no more capsules than that; a cordoned host takes none. On PostgreSQL the candidate hosts
are locked until the caller commits the new capsule, so two control planes (or two requests) cannot both
admit into the last room.

Each host that has room gets a score, its load with the new capsule placed (docs/api.md,
"Placement"), the mean of three fractions:

- memory: the memory its capsules are given, plus `RESERVED_MB`, over its memory (more than 1: no room);
- CPU: its capsules' vCPUs over `CPU_OVERCOMMIT` vCPUs per core (CPU time is shared, so vCPUs never
  refuse a capsule: they only weigh); 1, full, while its reported 1-minute load average is at least its
  cores (busy with more than capsules, e.g. builds). Below that the load average is not used: it lags and
  wavers by more than one capsule weighs, and would scatter placements at random;
- disk: the space in use on its data filesystem as it last reported, plus the new capsule's memory (what a
  pause writes), over the filesystem's size; a host left with less than `DISK_RESERVED_MB` has no room.

With more than `BEST_OF_K` hosts with room, `BEST_OF_K` of them are drawn at random and the least loaded
of those wins (E2B's best-of-K): nearly as good as scanning all, and concurrent placements by several
control planes spread out instead of all landing on the one emptiest host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ._errors import ApiError
from .db import Capsule, Host, HostStatus, states

#: Memory each host keeps for itself, as the agent does.
RESERVED_MB = 1024
#: Disk space each host keeps free: no capsule is placed where less would remain.
DISK_RESERVED_MB = 2048
#: vCPUs promised per core before a host's CPU counts as full.
CPU_OVERCOMMIT = 4
#: Hosts drawn at random when more have room (best of K).
BEST_OF_K = 3


@dataclass(frozen=True)
class Use:
    """What a host already carries: its capsules' memory and vCPUs, and how many."""

    memory_mb: int = 0
    vcpus: int = 0
    capsules: int = 0


def load(host: Host, use: Use, memory_mb: int, vcpus: int) -> float | None:
    """The host's load with a capsule of `memory_mb` and `vcpus` placed on it, in [0, 1]; None: no room."""
    if host.slot_capacity and use.capsules >= host.slot_capacity:
        return None
    if host.memory_mb <= 0:
        return None
    memory = (use.memory_mb + RESERVED_MB + memory_mb) / host.memory_mb
    if memory > 1:
        return None
    cpu = 0.0
    if host.cpu_cores > 0:
        saturated = host.cpu_load >= host.cpu_cores
        cpu = 1.0 if saturated else min(1.0, (use.vcpus + vcpus) / (host.cpu_cores * CPU_OVERCOMMIT))
    disk = 0.0
    total_mb = host.disk_gb * 1024
    if host.disk_free_mb is not None:
        if host.disk_free_mb - memory_mb < DISK_RESERVED_MB:
            return None
        if total_mb > 0:
            disk = min(1.0, (total_mb - host.disk_free_mb + memory_mb) / total_mb)
    return (memory + cpu + disk) / 3


async def pick_host(
    session: AsyncSession,
    memory_mb: int,
    team_id: str | None = None,
    *,
    vcpus: int = 1,
    rng: random.Random | None = None,
) -> Host:
    """The least loaded online host with room for the capsule (best of `BEST_OF_K`); 503 when none has.

    Candidates: the platform's (`regular`) hosts and, when `team_id` is given, that team's BYOC hosts;
    never a cordoned one. The caller commits (or rolls back) soon after: the hosts stay locked until then
    on PostgreSQL."""
    used = (
        select(
            Capsule.host_id,
            func.coalesce(func.sum(Capsule.memory_mb), 0).label("mem"),
            func.coalesce(func.sum(Capsule.vcpus), 0).label("cpu"),
            func.count().label("n"),
        )
        .where(Capsule.status.in_(states.LOADED))
        .group_by(Capsule.host_id)
        .subquery()
    )
    eligible = Host.type != "byoc" if team_id is None else or_(Host.type != "byoc", Host.team_id == team_id)
    rows = await session.execute(
        select(Host, func.coalesce(used.c.mem, 0), func.coalesce(used.c.cpu, 0), func.coalesce(used.c.n, 0))
        .outerjoin(used, used.c.host_id == Host.id)
        .where(Host.status == HostStatus.ONLINE, Host.cordoned.is_(False), eligible)
        .order_by(Host.id)  # one lock order for everyone
        .with_for_update(of=Host)
    )
    roomy: list[tuple[float, Host]] = []
    for host, mem, cpu, count in rows.all():
        score = load(host, Use(int(mem), int(cpu), int(count)), memory_mb, vcpus)
        if score is not None:
            roomy.append((score, host))
    if not roomy:
        raise ApiError(
            503,
            "no_hosts_available",
            f"no online, uncordoned host has room for a {memory_mb} MiB capsule (memory, a free slot, and"
            f" {DISK_RESERVED_MB} MiB of disk left after its memory)",
        )
    if len(roomy) > BEST_OF_K:
        roomy = (rng or random.Random()).sample(roomy, BEST_OF_K)  # noqa: S311 - spreading load, not a secret
    return min(roomy, key=lambda pair: pair[0])[1]
