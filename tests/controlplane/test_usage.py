"""Metrics history, team stats and usage, in-process on SQLite and PostgreSQL over the recording stand-in
agent (which serves the samples a test gives it): a capsule's samples are served after its host lost them
(paused, destroyed), and stats and usage of a team running capsules of two sizes match numbers worked out
by hand. Every `/v1` answer is checked against the seed's OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.security._fake_agent import FakeAgent
from wrenn.controlplane.db import CapsuleSample, TeamSample, TeamUsageDay
from wrenn.controlplane.service import usage

from ._db import run
from ._receiver import control_plane, events_settings, owner
from .conftest import _reset_postgres

GiB = 1 << 30
DAY_S = 86400


def _create(api: TestClient, jwt: dict[str, str], vcpus: int = 1, memory_mb: int = 512) -> str:
    r = api.post(
        "/v1/capsules", json={"template": "minimal", "vcpus": vcpus, "memory_mb": memory_mb}, headers=jwt
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def _metrics(api: TestClient, jwt: dict[str, str], capsule: str, range_: str = "10m") -> list[dict[str, Any]]:
    r = api.get(f"/v1/capsules/{capsule}/metrics", params={"range": range_}, headers=jwt)
    assert r.status_code == 200, r.text
    assert r.json()["sandbox_id"] == capsule and r.json()["range"] == range_
    return list(r.json()["points"])


def _key(api: TestClient, jwt: dict[str, str]) -> dict[str, str]:
    r = api.post("/v1/api-keys", json={"name": "k"}, headers=jwt)
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


@contextmanager
def _platform(
    database_url: str, tmp_path: Path, agent: FakeAgent
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A control plane over the stand-in agent, and its first account's session. The sampler's own rounds
    are an hour apart: only the samples a test takes count."""
    settings = events_settings(database_url, tmp_path / "cp", agent, stats_interval_s=3600)
    with control_plane(settings) as api:
        yield api, owner(api)


def test_metrics_survive_pause_and_destroy(database_url: str, tmp_path: Path, fake_agent: FakeAgent) -> None:
    with _platform(database_url, tmp_path, fake_agent) as (api, jwt):
        key = _key(api, jwt)
        capsule = _create(api, jwt)
        now = int(time.time())
        first = [(now - 60 + 2 * i, 10.0 + i, 100 << 20, GiB) for i in range(10)]
        fake_agent.recorder.samples[capsule] = first
        # running: what the host holds
        assert [p["timestamp_unix"] for p in _metrics(api, jwt, capsule)] == [t for t, *_ in first]
        assert api.post(f"/v1/capsules/{capsule}/pause", headers=jwt).status_code == 200
        fake_agent.recorder.samples[capsule] = []  # the rings went with the VM
        paused = _metrics(api, jwt, capsule)
        assert [(p["timestamp_unix"], p["cpu_pct"], p["mem_bytes"], p["disk_bytes"]) for p in paused] == first
        e2b = api.get(f"/sandboxes/{capsule}/metrics", headers=key)
        assert e2b.status_code == 200 and [m["cpuUsedPct"] for m in e2b.json()] == [c for _, c, *_ in first]

        assert api.post(f"/v1/capsules/{capsule}/resume", headers=jwt).status_code == 200
        second = [(now - 30 + 2 * i, 50.0, 200 << 20, GiB) for i in range(5)]  # after the resume
        fake_agent.recorder.samples[capsule] = second
        both = sorted({t for t, *_ in first} | {t for t, *_ in second})
        assert [p["timestamp_unix"] for p in _metrics(api, jwt, capsule)] == both
        assert api.delete(f"/v1/capsules/{capsule}", headers=jwt).status_code == 204
        fake_agent.recorder.samples.pop(capsule)
        destroyed = _metrics(api, jwt, capsule)
        assert [p["timestamp_unix"] for p in destroyed] == both
        assert [p["cpu_pct"] for p in destroyed if p["timestamp_unix"] in {t for t, *_ in second}] == [
            50.0
        ] * 5
        e2b = api.get(f"/sandboxes/{capsule}/metrics", params={"start": now - 30}, headers=key)
        assert e2b.status_code == 200 and [m["timestampUnix"] for m in e2b.json()] == [t for t, *_ in second]
        batch = api.get("/sandboxes/metrics", params={"sandbox_ids": capsule}, headers=key).json()
        assert batch["sandboxes"][capsule]["timestampUnix"] == second[-1][0]
        # a longer range averages over 30 s
        hour = _metrics(api, jwt, capsule, "1h")
        assert all(p["timestamp_unix"] % 30 == 0 for p in hour) and len(hour) < len(both)


def _sample(api: TestClient, at: int) -> None:
    async def work(session: AsyncSession) -> None:
        await usage.sample_teams(session, 10, now=at)

    run(api, work)


def test_stats_and_usage_of_two_capsule_sizes(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    with _platform(database_url, tmp_path, fake_agent) as (api, jwt):
        _create(api, jwt, vcpus=1, memory_mb=512)
        large = _create(api, jwt, vcpus=2, memory_mb=2048)
        now = int(time.time()) // 10 * 10
        yesterday = datetime.fromtimestamp(now, UTC).date() - timedelta(days=1)
        noon = int(datetime(yesterday.year, yesterday.month, yesterday.day, 12, tzinfo=UTC).timestamp())
        for i in range(6):  # yesterday: both, for a minute
            _sample(api, noon + 10 * i)
        _sample(api, now - 600)  # ten minutes ago: both
        _sample(api, now - 600)  # another control plane sampling the same instant adds nothing
        assert api.delete(f"/v1/capsules/{large}", headers=jwt).status_code == 204
        for t in (now - 20, now - 10, now):  # the small one alone
            _sample(api, t)

        # by hand: a sample counts its vCPUs and MB for 10 s; both = 3 vCPUs, 2560 MB; small = 1, 512
        y_cpu, y_ram = 6 * 3 * 10 / 60, 6 * 2560 * 10 / 60  # 3.0, 2560.0
        day_of = datetime.fromtimestamp(now - 600, UTC).date()  # (yesterday if the test runs just after 0:00)
        today_cpu, today_ram = 3 * 1 * 10 / 60, 3 * 512 * 10 / 60  # 0.5, 256.0
        expected = {
            yesterday: (y_cpu, y_ram),
            datetime.fromtimestamp(now, UTC).date(): (today_cpu, today_ram),
        }
        cpu, ram = expected[day_of]
        expected[day_of] = (cpu + 3 * 10 / 60, ram + 2560 * 10 / 60)

        stats = api.get("/v1/capsules/stats", params={"range": "1h"}, headers=jwt)
        assert stats.status_code == 200, stats.text
        body = stats.json()
        assert body["range"] == "1h"
        assert {k: v for k, v in body["current"].items() if k != "sampled_at"} == {
            "running_count": 1, "vcpus_reserved": 1, "memory_mb_reserved": 512,
        }  # fmt: skip
        assert body["peaks"] == {"running_count": 2, "vcpus": 3, "memory_mb": 2560}
        series = body["series"]
        assert len(series["labels"]) == 120 == len(series["running"]) == len(series["vcpus"])
        values = zip(series["running"], series["vcpus"], series["memory_mb"], strict=True)
        labelled = dict(zip(series["labels"], values, strict=True))

        def at(t: int) -> tuple[int, int, int]:
            label = datetime.fromtimestamp(t - t % 30, UTC).isoformat().replace("+00:00", "Z")
            return labelled[label]

        assert at(now - 600) == (2, 3, 2560)
        assert at(now) == (1, 1, 512)
        assert sum(1 for r in series["running"] if r) == len(
            {(t // 30) for t in (now - 600, now - 20, now - 10, now)}
        )
        old = api.get("/v1/capsules/stats", params={"range": "5m"}, headers=jwt).json()
        assert (
            len(old["series"]["labels"]) == 100 and max(old["series"]["running"]) == 1
        )  # ten minutes is out

        def usage_of(**params: str) -> dict[date, tuple[float, float]]:
            r = api.get("/v1/capsules/usage", params=params, headers=jwt)
            assert r.status_code == 200, r.text
            return {
                date.fromisoformat(p["date"]): (p["cpu_minutes"], p["ram_mb_minutes"])
                for p in r.json()["points"]
            }

        def close(got: dict[date, tuple[float, float]]) -> None:
            for day, (cpu, ram) in expected.items():
                assert abs(got[day][0] - cpu) < 1e-3 and abs(got[day][1] - ram) < 1e-3, (
                    day,
                    got[day],
                    cpu,
                    ram,
                )

        live = usage_of(**{"from": yesterday.isoformat()})
        assert list(live) == [yesterday, yesterday + timedelta(days=1)]
        close(live)
        defaulted = usage_of()
        assert len(defaulted) == 31 and sum(c for c, _ in defaulted.values()) > 0
        close(defaulted)

        # the janitor rolls yesterday up, once, and the samples can go: the numbers stay
        assert api.portal.call(api.app.state.janitor.roll_up) >= 1  # type: ignore[union-attr]
        assert api.portal.call(api.app.state.janitor.roll_up) == 0  # type: ignore[union-attr]

        async def rolled(session: AsyncSession) -> list[tuple[date, float, float]]:
            rows = await session.execute(
                select(TeamUsageDay.day, TeamUsageDay.cpu_minutes, TeamUsageDay.ram_mb_minutes)
            )
            return [tuple(r) for r in rows.all()]  # type: ignore[misc]

        days = {d: (c, r) for d, c, r in run(api, rolled)}
        assert abs(days[yesterday][0] - expected[yesterday][0]) < 1e-6

        async def forget_yesterday(session: AsyncSession) -> None:
            await session.execute(TeamSample.__table__.delete().where(TeamSample.t < now - 3600))

        run(api, forget_yesterday)
        close(usage_of(**{"from": yesterday.isoformat()}))

        # bad input
        assert api.get("/v1/capsules/stats", params={"range": "2d"}, headers=jwt).status_code == 400
        for params in (
            {"from": "2026-02-30"},
            {"from": "2026-02-02", "to": "2026-02-01"},
            {"from": "2020-01-01"},
        ):
            assert api.get("/v1/capsules/usage", params=params, headers=jwt).status_code == 400, params


def test_old_samples_are_thinned_and_dropped(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    with _platform(database_url, tmp_path, fake_agent) as (api, jwt):
        capsule = _create(api, jwt)
        now = int(time.time())
        points = [
            {"t": t, "cpu_pct": 1.0, "mem_bytes": 1, "disk_bytes": 1} for t in range(now - 4 * 3600, now, 2)
        ]
        points.append({"t": now - 9 * 86400, "cpu_pct": 1.0, "mem_bytes": 1, "disk_bytes": 1})

        async def keep_and_prune(session: AsyncSession) -> list[int]:
            await usage.keep(session, capsule, points)
            await usage.prune(session, 7, 31, 400, now=now)
            found = await session.execute(
                select(CapsuleSample.t).where(CapsuleSample.capsule_id == capsule).order_by(CapsuleSample.t)
            )
            return list(found.scalars())

        kept = run(api, keep_and_prune)
        assert min(kept) >= now - 7 * 86400  # past the retention: gone
        recent = [t for t in kept if t >= now - 600]
        assert recent == [p["t"] for p in points if p["t"] >= now - 600]  # every sample of the last 10 min
        middle = [t for t in kept if now - 7200 <= t < now - 600]
        assert len(middle) == len({t // 30 for t in middle}) and len(middle) >= 7200 // 30 - 25  # one a 30 s
        old = [t for t in kept if t < now - 7200]
        assert len(old) == len({t // 300 for t in old}) and len(old) >= 2 * 3600 // 300 - 2  # one a 5 min

        async def count(session: AsyncSession) -> int:
            return int(await session.scalar(select(func.count()).select_from(CapsuleSample)) or 0)

        assert run(api, count) == len(kept)


def test_two_control_planes_sample_and_roll_up_each_day_once(
    postgres_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    """Two control planes on one PostgreSQL database: both sampling the same instant write one row; both
    janitors rolling up at once roll each finished day up once (an advisory lock per day), with the
    numbers of one."""
    _reset_postgres(postgres_url)
    settings = events_settings(postgres_url, tmp_path / "cp", fake_agent, stats_interval_s=3600)
    with control_plane(settings) as one, control_plane(settings) as two:
        jwt = owner(one)
        _create(one, jwt, vcpus=2, memory_mb=1024)
        start = (int(time.time()) // DAY_S - 3) * DAY_S + 3600  # three days ago, 1:00
        for day in range(3):
            for i in range(6):
                for api in (one, two):
                    _sample(api, start + day * DAY_S + 10 * i)

        async def count(session: AsyncSession) -> int:
            return int(await session.scalar(select(func.count()).select_from(TeamSample)) or 0)

        assert run(one, count) == 18
        with ThreadPoolExecutor(2) as pool:
            rolled = list(pool.map(lambda api: api.portal.call(api.app.state.janitor.roll_up), (one, two)))
        assert sum(rolled) == 3, rolled  # each of the three days once, by one or the other

        async def days(session: AsyncSession) -> list[tuple[date, float, float]]:
            found = await session.execute(
                select(TeamUsageDay.day, TeamUsageDay.cpu_minutes, TeamUsageDay.ram_mb_minutes)
            )
            return sorted((d, c, r) for d, c, r in found.all())

        first = datetime.fromtimestamp(start, UTC).date()
        assert run(two, days) == [
            (first + timedelta(days=d), 6 * 2 * 10 / 60, 6 * 1024 * 10 / 60) for d in range(3)
        ]
