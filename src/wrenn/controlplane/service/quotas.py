"""Team quotas: how much of the platform a team may hold at once.

- **capsules**, **vcpus**, **memory_mb**: over the team's capsules that hold (or may still hold) CPU and
  memory on a host: `pending`, `starting`, `running`, `missing`. A paused capsule frees them; resuming
  takes them again, so a resume is admitted like a create.
- **disk_mb**: every capsule that has not ended counts its disk size, a paused or hibernated one also its
  memory (its snapshot), and every template its size on its host.

Defaults come from the settings (`quota_*`); a platform admin sets a team's own
(`/v1/admin/teams/{id}/quotas`). A request over a quota is refused with 429 `quota_exceeded` (what E2B
answers at its concurrency limit) and changes nothing.

Admission is atomic across requests and control planes: `admit` first writes the team's row (a no-op
update), which holds the row's lock on PostgreSQL and the database's write lock on SQLite until the
caller commits the new capsules (or their new status), so two creates cannot both take the last room.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _errors
from .._settings import Settings
from ..db import Capsule, Team, Template, states

FIELDS = ("capsules", "vcpus", "memory_mb", "disk_mb")
_LABELS = {"capsules": "capsules", "vcpus": "vCPUs", "memory_mb": "MiB of memory", "disk_mb": "MiB of disk"}


@dataclass(frozen=True, slots=True)
class Resources:
    capsules: int = 0
    vcpus: int = 0
    memory_mb: int = 0
    disk_mb: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def defaults(settings: Settings) -> Resources:
    return Resources(
        settings.quota_capsules, settings.quota_vcpus, settings.quota_memory_mb, settings.quota_disk_mb
    )


def own(team: Team) -> dict[str, int | None]:
    """The team's own quotas (None: the default applies)."""
    return {name: getattr(team, f"quota_{name}") for name in FIELDS}


async def limits(session: AsyncSession, settings: Settings, team_id: str) -> Resources:
    """The quotas in force for the team: its own where set, else the defaults."""
    team = await session.get(Team, team_id)
    base = defaults(settings)
    if team is None:
        return base
    mine = own(team)
    return Resources(**{n: getattr(base, n) if mine[n] is None else int(mine[n] or 0) for n in FIELDS})


async def usage(session: AsyncSession, team_id: str) -> Resources:
    """What the team holds now."""
    running = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Capsule.vcpus), 0),
                func.coalesce(func.sum(Capsule.memory_mb), 0),
            ).where(Capsule.team_id == team_id, Capsule.status.in_(states.LOADED))
        )
    ).one()
    snapshot_mb = case((Capsule.status.in_(states.ASLEEP), Capsule.memory_mb), else_=0)
    capsule_disk = await session.scalar(
        select(func.coalesce(func.sum(Capsule.disk_size_mb + snapshot_mb), 0)).where(
            Capsule.team_id == team_id, Capsule.status.not_in(states.ENDED)
        )
    )
    template_bytes = await session.scalar(
        select(func.coalesce(func.sum(Template.size_bytes), 0)).where(Template.team_id == team_id)
    )
    disk = int(capsule_disk or 0) + (int(template_bytes or 0) + (1 << 20) - 1) // (1 << 20)
    return Resources(int(running[0]), int(running[1]), int(running[2]), disk)


async def lock(session: AsyncSession, team_id: str) -> None:
    """Hold the team's admission lock until the session commits or rolls back."""
    await session.execute(
        update(Team)
        .where(Team.id == team_id)
        .values(name=Team.name)
        .execution_options(synchronize_session=False)
    )


async def admit(session: AsyncSession, settings: Settings, team_id: str, wanted: Resources) -> None:
    """Lock the team's admission and raise 429 `quota_exceeded` unless `wanted` fits in what the team has
    left. The lock is held until the caller commits what it admitted (or, refused, rolls back: closing
    the session does)."""
    await lock(session, team_id)
    cap, have = await limits(session, settings, team_id), await usage(session, team_id)
    for name in FIELDS:
        more, used, allowed = getattr(wanted, name), getattr(have, name), getattr(cap, name)
        if more and used + more > allowed:
            label = _LABELS[name]
            raise _errors.ApiError(
                429,
                "quota_exceeded",
                f"the team's quota is {allowed} {label}: {used} in use, {more} more asked",
            )


async def report(session: AsyncSession, settings: Settings, team_id: str) -> dict[str, object]:
    """The team's quotas in force, its own settings (null: default), the defaults and its usage."""
    team = await session.get(Team, team_id)
    return {
        "team_id": team_id,
        "quotas": (await limits(session, settings, team_id)).as_dict(),
        "own": own(team) if team is not None else dict.fromkeys(FIELDS),
        "defaults": defaults(settings).as_dict(),
        "usage": (await usage(session, team_id)).as_dict(),
    }


async def set_own(session: AsyncSession, team: Team, values: dict[str, int | None]) -> None:
    """Set the team's own quotas (None: back to the default); the caller commits."""
    for name, value in values.items():
        if name not in FIELDS:
            raise ValueError(name)
        setattr(team, f"quota_{name}", value)
