"""What capsules used, kept in the database: each capsule's samples (CPU, memory, disk, as its host measured
them), each team's running capsules, vCPUs and memory every sampling interval, and each finished day's
CPU-minutes and RAM-MB-minutes rolled up from those. Served by `/v1/capsules/{id}/metrics`, E2B's metrics
routes, `/v1/capsules/stats` and `/v1/capsules/usage`.

Every write is an upsert on a natural key (a capsule and a second; a team and an instant aligned to the
interval; a team and a day), so several control planes writing the same thing write it once."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from .._time import rfc3339
from ..db import Capsule, CapsuleSample, TeamSample, TeamUsageDay
from ..db import CapsuleStatus as S

#: `?range=` of the per-capsule metrics routes: its seconds and the step its points are averaged over
#: (the seed's rings: every sample for 10 minutes, 30 s averages for 2 h, 5 min averages for 24 h).
METRICS_RANGES = {
    "5m": (300, 0),
    "10m": (600, 0),
    "1h": (3600, 30),
    "2h": (7200, 30),
    "6h": (21600, 300),
    "12h": (43200, 300),
    "24h": (86400, 300),
}
#: `?range=` of `/v1/capsules/stats`: its seconds and its bucket (the seed's).
STATS_RANGES = {
    "5m": (300, 3),
    "1h": (3600, 30),
    "6h": (21600, 180),
    "24h": (86400, 720),
    "30d": (30 * 86400, 6 * 3600),
}
PEAK_WINDOW_S = 30 * 86400
DAY_S = 86400


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


# --- per-capsule samples ---------------------------------------------------------------------------


async def keep(session: AsyncSession, capsule_id: str, points: Iterable[dict[str, Any]]) -> int:
    """Store `{t, cpu_pct, mem_bytes, disk_bytes}` samples of a capsule (a sample already kept for the same
    second is replaced); how many."""
    rows = [
        {
            "capsule_id": capsule_id,
            "t": int(p["t"]),
            "cpu_pct": float(p["cpu_pct"]),
            "mem_bytes": int(p["mem_bytes"]),
            "disk_bytes": int(p["disk_bytes"]),
        }
        for p in points
    ]
    if not rows:
        return 0
    stmt = _insert(session)(CapsuleSample)
    stmt = stmt.on_conflict_do_update(
        index_elements=["capsule_id", "t"],
        set_={c: stmt.excluded[c] for c in ("cpu_pct", "mem_bytes", "disk_bytes")},
    )
    for start in range(0, len(rows), 2000):  # PostgreSQL takes at most 32767 parameters a statement
        await session.execute(stmt, rows[start : start + 2000])
    return len(rows)


async def kept(session: AsyncSession, capsule_id: str, since: int = 0) -> list[dict[str, Any]]:
    """The capsule's stored samples from `since` (unix seconds), oldest first."""
    found = await session.execute(
        select(CapsuleSample)
        .where(CapsuleSample.capsule_id == capsule_id, CapsuleSample.t >= since)
        .order_by(CapsuleSample.t)
    )
    return [
        {"t": s.t, "cpu_pct": s.cpu_pct, "mem_bytes": s.mem_bytes, "disk_bytes": s.disk_bytes}
        for s in found.scalars()
    ]


async def latest(session: AsyncSession, capsule_id: str) -> int | None:
    """When the capsule's newest stored sample was taken (unix seconds); None: it has none."""
    newest = await session.scalar(
        select(func.max(CapsuleSample.t)).where(CapsuleSample.capsule_id == capsule_id)
    )
    return None if newest is None else int(newest)


def merged(stored: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored and live samples, oldest first, each second once (the live one wins)."""
    by_t = {p["t"]: p for p in stored} | {p["t"]: p for p in live}
    return [by_t[t] for t in sorted(by_t)]


def averaged(points: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """Points averaged over `step`-second buckets (each stamped with its bucket's start); `step` 0: as is."""
    if not step:
        return points
    buckets: dict[int, list[dict[str, Any]]] = {}
    for p in points:
        buckets.setdefault(p["t"] - p["t"] % step, []).append(p)
    return [
        {
            "t": t,
            "cpu_pct": sum(p["cpu_pct"] for p in group) / len(group),
            "mem_bytes": sum(p["mem_bytes"] for p in group) // len(group),
            "disk_bytes": sum(p["disk_bytes"] for p in group) // len(group),
        }
        for t, group in sorted(buckets.items())
    ]


def in_range(points: list[dict[str, Any]], range_: str, now: float | None = None) -> list[dict[str, Any]]:
    """The points of the last `range_` (a key of `METRICS_RANGES`), at its granularity."""
    window, step = METRICS_RANGES[range_]
    since = int(time.time() if now is None else now) - window
    return averaged([p for p in points if p["t"] >= since], step)


# --- team samples, stats and usage -----------------------------------------------------------------


async def sample_teams(session: AsyncSession, interval_s: float, now: float | None = None) -> int:
    """Record each team's running capsules, vCPUs and memory at this instant (aligned to the interval);
    how many teams had any. Teams with nothing running get no row (read as zero)."""
    step = max(1, int(interval_s))
    t = int(time.time() if now is None else now) // step * step
    found = await session.execute(
        select(Capsule.team_id, func.count(), func.sum(Capsule.vcpus), func.sum(Capsule.memory_mb))
        .where(Capsule.status == S.RUNNING)
        .group_by(Capsule.team_id)
    )
    rows = [
        {"team_id": team, "t": t, "running": n, "vcpus": int(v), "memory_mb": int(m), "interval_s": step}
        for team, n, v, m in found.all()
    ]
    if rows:
        stmt = _insert(session)(TeamSample).on_conflict_do_nothing(index_elements=["team_id", "t"])
        await session.execute(stmt, rows)
    return len(rows)


async def stats(session: AsyncSession, team_id: str, range_: str, now: float | None = None) -> dict[str, Any]:
    """`/v1/capsules/stats`: what the team runs now, its peaks over 30 days, and the range's series (the
    highest sample of each bucket; a bucket without samples is zero)."""
    at = time.time() if now is None else now
    current = (
        await session.execute(
            select(func.count(), func.sum(Capsule.vcpus), func.sum(Capsule.memory_mb)).where(
                Capsule.team_id == team_id, Capsule.status == S.RUNNING
            )
        )
    ).one()
    highest = (func.max(TeamSample.running), func.max(TeamSample.vcpus), func.max(TeamSample.memory_mb))
    peaks = (
        await session.execute(
            select(*highest).where(TeamSample.team_id == team_id, TeamSample.t >= int(at) - PEAK_WINDOW_S)
        )
    ).one()
    window, step = STATS_RANGES[range_]
    first = (int(at) - window) // step * step + step  # the bucket `window` ago, rounded to whole buckets
    bucket = (TeamSample.t // step).label("bucket")
    found = await session.execute(
        select(bucket, *highest).where(TeamSample.team_id == team_id, TeamSample.t >= first).group_by(bucket)
    )
    by_bucket = {int(b) * step: (r, v, m) for b, r, v, m in found.all()}
    starts = list(range(first, int(at) + 1, step))
    return {
        "range": range_,
        "current": {
            "running_count": int(current[0]),
            "vcpus_reserved": int(current[1] or 0),
            "memory_mb_reserved": int(current[2] or 0),
            "sampled_at": rfc3339(datetime.fromtimestamp(at, UTC)),
        },
        "peaks": {"running_count": peaks[0] or 0, "vcpus": peaks[1] or 0, "memory_mb": peaks[2] or 0},
        "series": {
            "labels": [rfc3339(datetime.fromtimestamp(s, UTC)) for s in starts],
            "running": [by_bucket.get(s, (0, 0, 0))[0] for s in starts],
            "vcpus": [by_bucket.get(s, (0, 0, 0))[1] for s in starts],
            "memory_mb": [by_bucket.get(s, (0, 0, 0))[2] for s in starts],
        },
    }


def _unix(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


async def _summed(
    session: AsyncSession, start: date, end: date, team_id: str | None = None
) -> dict[tuple[str, date], tuple[float, float]]:
    """CPU-minutes and RAM-MB-minutes by team and UTC day from the samples of [start, end]: each sample
    counts its vCPUs and memory for its interval."""
    day = (TeamSample.t // DAY_S).label("day")
    query = (
        select(
            TeamSample.team_id,
            day,
            func.sum(TeamSample.vcpus * TeamSample.interval_s),
            func.sum(TeamSample.memory_mb * TeamSample.interval_s),
        )
        .where(TeamSample.t >= _unix(start), TeamSample.t < _unix(end) + DAY_S)
        .group_by(TeamSample.team_id, day)
    )
    if team_id is not None:
        query = query.where(TeamSample.team_id == team_id)
    found = await session.execute(query)
    epoch = date(1970, 1, 1)
    return {
        (team, epoch + timedelta(days=int(d))): (float(cpu) / 60, float(ram) / 60)
        for team, d, cpu, ram in found.all()
    }


async def usage(session: AsyncSession, team_id: str, start: date, end: date) -> dict[str, Any]:
    """`/v1/capsules/usage`: each day of [start, end], rolled up where it is, else summed from the samples
    (today always is)."""
    rolled = await session.execute(
        select(TeamUsageDay).where(
            TeamUsageDay.team_id == team_id, TeamUsageDay.day >= start, TeamUsageDay.day <= end
        )
    )
    days = {u.day: (u.cpu_minutes, u.ram_mb_minutes) for u in rolled.scalars()}
    live = {d: v for (_, d), v in (await _summed(session, start, end, team_id)).items() if d not in days}
    days |= live
    points = []
    day = start
    while day <= end:
        cpu, ram = days.get(day, (0.0, 0.0))
        points.append(
            {"date": day.isoformat(), "cpu_minutes": round(cpu, 4), "ram_mb_minutes": round(ram, 4)}
        )
        day += timedelta(days=1)
    return {"from": start.isoformat(), "to": end.isoformat(), "points": points}


async def roll_up(session: AsyncSession, day: date) -> int:
    """Roll the samples of one finished day up into `team_usage_days`; how many teams. Done again, it
    writes the same numbers (several control planes may)."""
    summed = await _summed(session, day, day)
    rows = [
        {"team_id": team, "day": d, "cpu_minutes": cpu, "ram_mb_minutes": ram}
        for (team, d), (cpu, ram) in summed.items()
    ]
    if rows:
        stmt = _insert(session)(TeamUsageDay)
        stmt = stmt.on_conflict_do_update(
            index_elements=["team_id", "day"],
            set_={"cpu_minutes": stmt.excluded.cpu_minutes, "ram_mb_minutes": stmt.excluded.ram_mb_minutes},
        )
        await session.execute(stmt, rows)
    return len(rows)


async def unrolled_days(session: AsyncSession, before: date) -> list[date]:
    """Finished days (before `before`) that have team samples but no rolled-up usage yet."""
    day = (TeamSample.t // DAY_S).label("day")
    sampled = await session.execute(select(day).where(TeamSample.t < _unix(before)).group_by(day))
    epoch = date(1970, 1, 1)
    candidates = [epoch + timedelta(days=int(d)) for d in sampled.scalars()]
    rolled = set(
        (await session.execute(select(TeamUsageDay.day).where(TeamUsageDay.day.in_(candidates)).distinct()))
        .scalars()
        .all()
    )
    return [d for d in candidates if d not in rolled]


#: (age in seconds, step): capsule samples older than `age` are thinned to the first of each `step`, as the
#: ranges that reach back that far show them (every sample for 10 min, 30 s for 2 h, 5 min beyond).
THINNING = ((600, 30), (7200, 300))


async def thin(session: AsyncSession, now: float | None = None) -> None:
    """Thin old capsule samples to the granularity their ranges serve (`THINNING`)."""
    at = time.time() if now is None else now
    for age, step in THINNING:
        earlier = aliased(CapsuleSample)
        await session.execute(
            delete(CapsuleSample).where(
                CapsuleSample.t < int(at - age),
                exists().where(
                    earlier.capsule_id == CapsuleSample.capsule_id,
                    earlier.t < CapsuleSample.t,
                    earlier.t // step == CapsuleSample.t // step,
                ),
            )
        )


async def prune(
    session: AsyncSession, metrics_days: float, stats_days: float, usage_days: float, now: float | None = None
) -> None:
    """Thin old capsule samples; drop capsule samples, team samples and daily usage older than their
    retention."""
    at = time.time() if now is None else now
    await thin(session, at)
    await session.execute(delete(CapsuleSample).where(CapsuleSample.t < int(at - metrics_days * DAY_S)))
    await session.execute(delete(TeamSample).where(TeamSample.t < int(at - stats_days * DAY_S)))
    oldest = datetime.fromtimestamp(at - usage_days * DAY_S, UTC).date()
    await session.execute(delete(TeamUsageDay).where(TeamUsageDay.day < oldest))
