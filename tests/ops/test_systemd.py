"""The systemd units in deploy/systemd, rated by `systemd-analyze security --offline=true` (no running
systemd needed): each parses without an unknown key, stays at or under its exposure threshold, and
docs/deploy.md shows the score it gets."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
#: The highest exposure (systemd's 0-100 scale: 13 is shown "1.3") each unit may reach.
THRESHOLDS = {"wrenn-controlplane.service": 13, "wrenn-agent.service": 85}

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def _analyze(unit: Path, threshold: int) -> tuple[int, str, str]:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={threshold}", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_each_unit_is_rated_at_most_its_threshold_and_documented(name: str, tmp_path: Path) -> None:
    unit = UNITS / name
    drop_ins = sorted((UNITS / f"{name}.d").glob("*.conf"))
    code, out, err = _analyze(unit, THRESHOLDS[name])
    assert "Unknown" not in err and "Failed" not in err, err
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert score is not None, out
    assert code == 0, f"{name} is rated {score.group(1)}, above {THRESHOLDS[name] / 10}"
    assert f"`{name}` | {score.group(1)}" in (ROOT / "docs" / "deploy.md").read_text()
    if drop_ins:  # with its drop-ins: they parse too, and weaken nothing
        merged = tmp_path / name
        merged.write_text("\n".join(p.read_text() for p in (unit, *drop_ins)))
        code, _, err = _analyze(merged, THRESHOLDS[name])
        assert code == 0 and "Unknown" not in err and "Failed" not in err, err


def test_a_weaker_unit_is_caught(tmp_path: Path) -> None:
    unit = tmp_path / "wrenn-controlplane.service"
    text = (UNITS / unit.name).read_text()
    unit.write_text(text.replace("User=wrenn\n", "").replace("PrivateUsers=yes\n", ""))  # as root
    code, _, _ = _analyze(unit, THRESHOLDS[unit.name])
    assert code != 0
