"""The systemd units in deploy/systemd, rated by `systemd-analyze security --offline=true` (no running
systemd needed): each parses without an unknown key, stays at or under its exposure threshold, and
docs/deploy.md shows the score it gets."""

from __future__ import annotations

import io
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.cli._run import wrenn
from wrenn.cli import _platform, _systemd

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
#: The highest exposure (systemd's 0-100 scale: 13 is shown "1.3") each unit may reach.
THRESHOLDS = {"wrenn-controlplane.service": 13, "wrenn-agent.service": 85, "wrenn-capsules.service": 13}

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


# `wrenn up` under systemd. This machine has no systemd as PID 1, so the live path (systemd starting the
# units, restarting them, `systemctl show` of real units) is not exercised here: the units `wrenn up` renders
# are verified and rated offline, and its install, stop and status flows run against a stand-in `systemctl`
# (and `useradd`) on PATH that records its calls; systemd is not our component.

WRENN_BIN = Path(sys.executable).parent / "wrenn"
SHOW = """Id=wrenn-agent.service
ActiveState=active
MainPID=4242
NRestarts=2
ActiveEnterTimestampMonotonic={entered}
ExecMainCode=2
ExecMainStatus=9

Id=wrenn-controlplane.service
ActiveState=failed
MainPID=0
NRestarts=0
ActiveEnterTimestampMonotonic=0
ExecMainCode=1
ExecMainStatus=3
"""


def _node(data_dir: Path = Path("/var/lib/wrenn-t1"), port: int = 18080) -> _systemd.Node:
    return _systemd.Node(data_dir, port, 15051, 15052, WRENN_BIN, ("--name-prefix", "utstp"), 45)


@pytest.fixture
def stand_in(tmp_path: Path) -> tuple[_systemd.Systemd, Path]:
    """A `systemctl` and a `useradd` that log their arguments (one call a line) and answer `show`."""
    calls, show = tmp_path / "calls", tmp_path / "show"
    show.write_text(SHOW.format(entered=int((time.monotonic() - 125) * 1e6)))
    for name in ("systemctl", "useradd"):
        script = tmp_path / "bin" / name
        script.parent.mkdir(exist_ok=True)
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n[ "$1" = show ] && cat {show}\nexit 0\n')
        script.chmod(0o755)
    units = tmp_path / "units"
    return _systemd.Systemd(
        units, str(tmp_path / "bin" / "systemctl"), str(tmp_path / "bin" / "useradd")
    ), calls


def test_rendered_units_verify_and_keep_their_rating(tmp_path: Path) -> None:
    rendered = _systemd.render(_node())
    agent, controlplane = rendered[_systemd.AGENT], rendered[_systemd.CONTROLPLANE]
    assert (
        f"ExecStart={WRENN_BIN} agent --data-dir /var/lib/wrenn-t1 --port 15051 --proxy-port 15052 " in agent
    )
    assert "--name-prefix utstp" in agent
    assert "StateDirectory=wrenn-t1-controlplane" in controlplane and "--port 18080" in controlplane
    assert "--data-dir /var/lib/wrenn-t1-controlplane" in controlplane
    drop_in = rendered[_systemd.DROP_IN]
    assert "/var/lib/wrenn-t1/agent-api-token" in drop_in and "http://127.0.0.1:15051" in drop_in
    capsules = rendered[_systemd.CAPSULES]
    state = "--platform-file %d/platform.json --state-dir /var/lib/wrenn-t1-capsules"
    assert f"ExecStart={WRENN_BIN} capsules resume-after-start {state}\n" in capsules
    assert f"ExecStop={WRENN_BIN} capsules pause-for-shutdown {state} --deadline 45\n" in capsules
    assert "TimeoutStopSec=225s" in capsules and "StateDirectory=wrenn-t1-capsules\n" in capsules
    assert "LoadCredential=platform.json:/var/lib/wrenn-t1/platform.json\n" in capsules
    assert "InaccessiblePaths=-/var/lib/wrenn-t1-controlplane\n" in capsules
    docs = (ROOT / "docs" / "deploy.md").read_text()
    units = (_systemd.AGENT, agent), (_systemd.CONTROLPLANE, controlplane + "\n" + drop_in)
    for name, text in (*units, (_systemd.CAPSULES, capsules)):
        unit = tmp_path / name
        unit.write_text(text)
        done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0 and done.stderr == "", done.stderr
        code, out, err = _analyze(unit, THRESHOLDS[name])
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
        assert code == 0 and score is not None and f"`{name}` | {score.group(1)}" in docs, (out, err)


def test_a_data_dir_outside_var_lib_is_refused_under_systemd() -> None:
    with pytest.raises(_systemd.SystemdError, match="under /var/lib"):
        _systemd.render(_node(Path("/srv/wrenn")))


def test_auto_chooses_systemd_only_where_it_is_the_init_system(tmp_path: Path) -> None:
    assert _systemd.choose("auto", tmp_path / "absent") == "self"
    assert _systemd.choose("auto", tmp_path) == "systemd"
    assert (
        _systemd.choose("self", tmp_path) == "self"
        and _systemd.choose("systemd", tmp_path / "x") == "systemd"
    )
    with pytest.raises(_systemd.SystemdError):
        _systemd.choose("init", tmp_path)


def test_install_writes_the_units_makes_the_user_and_starts_them(
    stand_in: tuple[_systemd.Systemd, Path],
) -> None:
    systemd, calls = stand_in
    node = _node()
    assert _systemd.install(node, systemd) is True
    for name in (_systemd.AGENT, _systemd.CONTROLPLANE, _systemd.DROP_IN):
        path = systemd.unit_dir / name
        assert path.read_text() == _systemd.render(node)[name] and path.stat().st_mode & 0o777 == 0o644
    try:
        pwd.getpwnam(_systemd.USER)
        made = []
    except KeyError:  # the user is made only where it is missing
        made = [f"useradd --system --user-group --home-dir /var/lib/wrenn-t1-controlplane --no-create-home "
                f"--shell /usr/sbin/nologin {_systemd.USER}"]  # fmt: skip
    started = [
        "systemctl daemon-reload",
        "systemctl enable --now wrenn-agent.service wrenn-controlplane.service",
    ]
    assert calls.read_text().splitlines() == [*made, *started]
    assert _systemd.installed_for(node.data_dir, systemd)
    assert (systemd.unit_dir / _systemd.CAPSULES).read_text() == _systemd.render(node)[_systemd.CAPSULES]
    calls.unlink()
    _systemd.start_capsules(node, systemd)  # `wrenn up`, once platform.json (its credential) is written
    assert calls.read_text().splitlines() == ["systemctl enable --now wrenn-capsules.service"]
    calls.unlink()
    assert _systemd.install(node, systemd) is False  # again, unchanged: nothing restarts
    assert "try-restart" not in calls.read_text()
    assert _systemd.install(_node(port=18081), systemd) is True  # other units: the running ones restart
    assert (
        calls.read_text().splitlines()[-1]
        == "systemctl try-restart wrenn-agent.service wrenn-controlplane.service"
    )
    with pytest.raises(_systemd.SystemdError, match="another data dir"):
        _systemd.install(_node(Path("/var/lib/wrenn-t2")), systemd)


def test_status_and_down_ask_systemd(stand_in: tuple[_systemd.Systemd, Path]) -> None:
    systemd, calls = stand_in
    node = _node()
    _systemd.install(node, systemd)
    agent, controlplane = _platform.processes(node.data_dir, systemd)
    assert (agent.name, agent.running, agent.pid, agent.restarts, agent.last_exit) == (
        "host agent", True, 4242, 2, "killed by SIGKILL")  # fmt: skip
    assert 120 < agent.uptime_s < 180
    assert (controlplane.running, controlplane.pid, controlplane.last_exit) == (False, 0, "exited with 3")
    calls.unlink()
    assert _platform.stop(node.data_dir, Console(file=io.StringIO()), systemd=systemd)
    assert calls.read_text().splitlines() == [
        "systemctl disable --now wrenn-capsules.service",  # first: it would pause while the others run
        "systemctl disable --now wrenn-controlplane.service",
        "systemctl disable --now wrenn-agent.service",
    ]


def test_wait_names_the_journal_when_a_unit_does_not_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(_systemd.SystemdError, match=r"journalctl -u wrenn-agent\.service"):
            _systemd.wait_ready({_systemd.AGENT: url}, within_s=0.5)


def test_up_refuses_an_unknown_supervisor(tmp_path: Path) -> None:
    done = wrenn("up", "--supervisor", "init", "--data-dir", str(tmp_path), check=False)
    assert done.returncode == 1 and "systemd, self or auto" in done.stderr, done.stderr


def test_up_keeps_to_the_supervisor_that_runs_the_data_dir(stand_in: tuple[_systemd.Systemd, Path]) -> None:
    systemd, _ = stand_in
    node = _node()
    assert not _platform._use_systemd(node.data_dir, "self", systemd, self_running=False)
    with pytest.raises(_platform.PlatformError, match="under its own supervisor"):
        _platform._use_systemd(node.data_dir, "systemd", systemd, self_running=True)
    _systemd.install(node, systemd)
    assert _platform._use_systemd(node.data_dir, "auto", systemd, self_running=False)  # its units: systemd
    with pytest.raises(_platform.PlatformError, match="under systemd"):
        _platform._use_systemd(node.data_dir, "self", systemd, self_running=False)
