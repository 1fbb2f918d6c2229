"""Admission's disk rule (src/wrenn/agent/_admission.py) against the real file system of a temporary data
dir: every sandbox's claim counts in full unless the operator overcommits, and one sandbox's own claim must
fit whole either way."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from wrenn.agent._admission import MIB, Admission
from wrenn.agent._config import AgentConfig
from wrenn.agent._errors import SandboxError
from wrenn.agent._sandbox import Sandbox, SandboxParams, Status


def _params(sandbox_id: str, disk_mb: int) -> SandboxParams:
    return SandboxParams(sandbox_id, "minimal", vcpus=1, memory_mb=64, disk_size_mb=disk_mb, timeout_sec=0)


def _admission(tmp_path: Path, overcommit: float, held_disk_mb: int) -> Admission:
    """A host holding one running sandbox with a disk of `held_disk_mb` (nothing written yet). The table is
    a plain namespace: admission reads its config, its sandboxes and where RAM files go, nothing else."""
    config = AgentConfig(
        data_dir=tmp_path, memory_dir=tmp_path, reserved_disk_mb=0, disk_overcommit=overcommit
    )
    (tmp_path / "sb-held").mkdir(exist_ok=True)
    held = Sandbox(_params("sb-held", held_disk_mb), workdir=tmp_path / "sb-held", status=Status.RUNNING)
    table = SimpleNamespace(
        config=config,
        sandboxes={"sb-held": held},
        capabilities=SimpleNamespace(memory_file=False),
        memory_file=lambda _sandbox: None,
    )
    return Admission(table)  # type: ignore[arg-type]


def test_disk_claims_count_in_full_unless_overcommitted(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // MIB
    six_tenths = free_mb * 6 // 10
    with pytest.raises(SandboxError, match="not enough room") as err:  # 1.2x the free space claimed
        _admission(tmp_path, 1.0, six_tenths).check(_params("sb-new", six_tenths))
    assert err.value.code == "resource_exhausted"
    _admission(tmp_path, 2.0, six_tenths).check(_params("sb-new", six_tenths))  # 0.6x once halved


def test_one_sandbox_larger_than_the_disk_is_refused_even_overcommitted(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // MIB
    with pytest.raises(SandboxError, match="not enough room"):
        _admission(tmp_path, 100.0, 1).check(_params("sb-new", free_mb + 1024))


def test_the_ratio_is_bounded() -> None:
    from wrenn.agent.__main__ import parse_args

    assert parse_args(["--disk-overcommit", "4"]).disk_overcommit == 4
    for bad in ("0.5", "1000"):
        with pytest.raises(SystemExit):
            parse_args(["--disk-overcommit", bad])
