"""Placement weighs each host's memory, CPU and disk, and draws the best of K when many hosts have room.

Expectations are computed by hand from `_scheduler`'s rule (the mean of three fractions with the capsule
placed): memory = (given + 1024 + new) / total; CPU = vCPUs / (cores * 4), 1 when load >= cores;
disk = (total - free + new memory) / total, with 2048 MiB kept free. The database is a real SQLite file
migrated with the control plane's own migrations."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from wrenn.controlplane._errors import ApiError
from wrenn.controlplane._scheduler import Use, load, pick_host
from wrenn.controlplane.db import Capsule, Host, Team, make_engine, migrate, sessions


def _host(host_id: str, *, memory_mb: int = 9216, cores: int = 4, disk_gb: int = 100,
          disk_free_mb: int | None = 51200, cpu_load: float = 0.0, slots: int = 0) -> Host:  # fmt: skip
    return Host(
        id=host_id, address="http://127.0.0.1:9", status="online", type="regular", memory_mb=memory_mb,
        cpu_cores=cores, disk_gb=disk_gb, disk_free_mb=disk_free_mb, cpu_load=cpu_load, slot_capacity=slots,
        cordoned=False,
    )  # fmt: skip


def test_load_is_the_mean_of_memory_cpu_and_disk() -> None:
    # memory (2048 + 1024 + 1024) / 8192 = 0.5; CPU 6 / 16 = 0.375 (a load of 3.9 < 4 cores is not used);
    # disk (102400 - 51200 + 1024) / 102400 = 0.51; mean = 1.385 / 3
    host = _host("h", memory_mb=8192, cores=4, disk_gb=100, disk_free_mb=51200, cpu_load=3.9)
    assert load(host, Use(memory_mb=2048, vcpus=4, capsules=2), 1024, 2) == pytest.approx(1.385 / 3)
    # A run queue of at least its cores makes the CPU full, whatever the vCPUs promised (2 / 16).
    busy = _host("b", memory_mb=8192, cores=4, disk_gb=100, disk_free_mb=102400 - 1024, cpu_load=4.0)
    # memory (0 + 1024 + 1024) / 8192 = 0.25; disk (1024 + 1024) / 102400 = 0.02
    assert load(busy, Use(), 1024, 2) == pytest.approx((0.25 + 1.0 + 0.02) / 3)


def test_no_room_for_memory_disk_or_slots() -> None:
    assert load(_host("m", memory_mb=4096), Use(memory_mb=2048), 1025, 1) is None  # 2048 + 1024 + 1025 > 4096
    assert load(_host("m", memory_mb=4096), Use(memory_mb=2048), 1024, 1) is not None  # exactly full fits
    assert load(_host("d", disk_free_mb=3071), Use(), 1024, 1) is None  # 3071 - 1024 < 2048 kept free
    assert load(_host("d", disk_free_mb=3072), Use(), 1024, 1) is not None
    assert load(_host("s", slots=2), Use(capsules=2), 256, 1) is None
    # Unknown disk (never reported) and unknown cores weigh nothing: memory alone, 2048 / 8192 / 3.
    assert load(_host("u", memory_mb=8192, cores=0, disk_free_mb=None), Use(), 1024, 1) == pytest.approx(
        0.25 / 3
    )
    # vCPUs never refuse a capsule: 100 promised on 4 cores is a full CPU, not "no room".
    assert load(_host("c", memory_mb=8192, disk_free_mb=None), Use(vcpus=100), 1024, 1) == pytest.approx(
        (0.25 + 1.0) / 3
    )


Sessions = async_sessionmaker  # type: ignore[type-arg]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/wrenn.db")
    await migrate(engine)
    yield sessions(engine)
    await engine.dispose()


async def _pick(db: Sessions, hosts: list[Host], capsules: list[Capsule], memory_mb: int, vcpus: int,
                rng: random.Random | None = None, rounds: int = 1) -> list[str]:  # fmt: skip
    async with db() as session:
        session.add(Team(id="team-1", name="t", slug="t"))
        session.add_all(hosts)
        await session.flush()
        session.add_all(capsules)
        await session.commit()
        picked = []
        for _ in range(rounds):
            picked.append((await pick_host(session, memory_mb, vcpus=vcpus, rng=rng)).id)
            await session.rollback()
        return picked


def _capsule(n: int, host_id: str, memory_mb: int, vcpus: int, status: str = "running") -> Capsule:
    return Capsule(id=f"cl-{host_id}-{n}", team_id="team-1", host_id=host_id, template="minimal",
                   status=status, memory_mb=memory_mb, vcpus=vcpus)  # fmt: skip


async def test_cpu_and_disk_turn_the_choice_that_memory_alone_would_make(db: Sessions) -> None:
    # By memory alone "a" wins (after a 1024 MiB capsule: a 3072/9216 = 0.333, b 5120/9216 = 0.556).
    # a: CPU (16 + 2) / 16 -> 1.0; disk (102400 - 4096 + 1024) / 102400 = 0.97; mean (0.333 + 1 + 0.97) / 3
    # = 0.768. b: CPU 4 / 16 = 0.25; disk (51200 + 1024) / 102400 = 0.51; mean (0.556 + 0.25 + 0.51) / 3
    # = 0.439: b.
    hosts = [_host("a", disk_free_mb=4096), _host("b")]
    capsules = [_capsule(1, "a", 1024, 16)] + [_capsule(i, "b", 1024, 1) for i in range(3)]
    assert await _pick(db, hosts, capsules, 1024, 2) == ["b"]


async def test_capsules_that_hold_nothing_do_not_count_and_cordoned_hosts_get_none(db: Sessions) -> None:
    # "a" carries only stopped and paused capsules (no memory, no vCPUs): it is empty, and wins over "b"
    # with one running; "c" would be emptiest of all but is cordoned.
    hosts = [_host("a"), _host("b"), _host("c", memory_mb=1 << 20)]
    hosts[2].cordoned = True
    capsules = [_capsule(1, "a", 4096, 4, "stopped"), _capsule(2, "a", 4096, 4, "paused"),
                _capsule(3, "b", 1024, 1)]  # fmt: skip
    assert await _pick(db, hosts, capsules, 1024, 1) == ["a"]


async def test_no_host_with_room_is_a_503(db: Sessions) -> None:
    with pytest.raises(ApiError) as caught:
        await _pick(db, [_host("a", disk_free_mb=2500)], [], 1024, 1)
    assert caught.value.status == 503 and "2048 MiB of disk" in caught.value.message


async def test_best_of_k_never_picks_the_worst_and_spreads_over_the_rest(db: Sessions) -> None:
    # Five hosts loaded 0..4 GiB of 18 GiB: with K = 3 of 5 drawn, the least loaded of the draw wins.
    # P(host i wins) = C(4 - i, 2) / C(5, 3): h0 6/10, h1 3/10, h2 1/10, h3 and h4 never.
    hosts = [_host(f"h{i}", memory_mb=18432) for i in range(5)]
    capsules = [_capsule(j, f"h{i}", 1024, 1) for i in range(5) for j in range(i)]
    picked = Counter(await _pick(db, hosts, capsules, 1024, 1, rng=random.Random(7), rounds=400))
    assert set(picked) <= {"h0", "h1", "h2"}
    assert 0.5 < picked["h0"] / 400 < 0.7 and 0.2 < picked["h1"] / 400 < 0.4 and 0 < picked["h2"] / 400 < 0.2
