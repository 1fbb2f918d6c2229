"""The warm pool's settings (docs/pool.md): `--pool` shapes, parsed strictly; the environment as defaults."""

from __future__ import annotations

import pytest

from wrenn.agent.__main__ import parse_args
from wrenn.agent._config import PoolShape


def test_pool_shapes_parse_strictly() -> None:
    assert PoolShape.parse("minimal=2") == (PoolShape("minimal", 1, 512, 5120), 2)  # a create's defaults
    assert PoolShape.parse(" tpl-x/2/1024/4096=1 ") == (PoolShape("tpl-x", 2, 1024, 4096), 1)
    for bad in (
        "minimal",
        "minimal=",
        "minimal=-1",
        "minimal=x",
        "=2",
        "a/1/2=3",
        "a/x/2/3=1",
        "a/1/2/3/4=1",
    ):
        with pytest.raises(ValueError, match="pool"):
            PoolShape.parse(bad)


def test_pool_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_args(["--pool", "minimal=2", "--pool", "big/2/2048/8192=1", "--pool-memory-mb", "4096"])
    assert config.pool_sizes == ((PoolShape("minimal"), 2), (PoolShape("big", 2, 2048, 8192), 1))
    assert config.pool_memory_mb == 4096 and config.pool_max == 4
    monkeypatch.setenv("WRENN_AGENT_POOL", "minimal=3,other/1/256/2048=1")
    monkeypatch.setenv("WRENN_AGENT_POOL_MEMORY_MB", "1024")
    monkeypatch.setenv("WRENN_AGENT_POOL_MAX", "8")
    config = parse_args([])
    assert config.pool_sizes == ((PoolShape("minimal"), 3), (PoolShape("other", 1, 256, 2048), 1))
    assert (config.pool_memory_mb, config.pool_max) == (1024, 8)
    assert parse_args([]).pool_memory_mb == 1024
    with pytest.raises(SystemExit):
        parse_args(["--pool", "minimal"])
    monkeypatch.delenv("WRENN_AGENT_POOL")
    monkeypatch.delenv("WRENN_AGENT_POOL_MEMORY_MB")
    assert parse_args([]).pool_memory_mb == 0  # no pool unless a budget is given
