"""The supervisor `wrenn up` starts, as a real process over plain processes (no VMs): restarts, backoff,
independence, and adoption by a new supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from tests.cli._run import until
from tests.conftest import free_port
from wrenn.cli import _platform
from wrenn.cli._supervisor import Service, State, runs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
FAILING = [sys.executable, "-c", "raise SystemExit(1)"]


def supervise(data_dir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "wrenn.cli._supervisor", str(data_dir)],
                            stderr=(data_dir / "supervisor.log").open("ab"))  # fmt: skip
    assert until(lambda: (s := State.load(data_dir)) is not None and s.pid == proc.pid, 10)
    return proc


def service(data_dir: Path, name: str) -> Service:
    state = State.load(data_dir)
    assert state is not None
    return state.service(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    State([Service("steady", SLEEPER, str(tmp_path / "steady.log")),
           Service("failing", FAILING, str(tmp_path / "failing.log"))]).save(tmp_path)  # fmt: skip
    yield tmp_path
    state = State.load(tmp_path)
    assert state is not None
    for pid, ticks in [(state.pid, state.start_ticks), *((s.pid, s.start_ticks) for s in state.services)]:
        if runs(pid, ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_restarts_each_process_on_its_own_with_backoff_and_hands_over(data_dir: Path) -> None:
    supervisor = supervise(data_dir)
    assert until(lambda: service(data_dir, "steady").pid > 0, 10)
    steady = service(data_dir, "steady")
    assert oct((data_dir / "supervisor.json").stat().st_mode & 0o777) == "0o600"

    os.kill(steady.pid, signal.SIGKILL)
    assert until(lambda: service(data_dir, "steady").pid not in (0, steady.pid), 5)
    again = service(data_dir, "steady")
    assert (again.restarts, again.last_exit) == (1, "killed by SIGKILL")

    # One that dies at once is restarted after a growing delay (1 s, 2 s, 4 s...), never in a loop.
    time.sleep(4)
    failing = service(data_dir, "failing")
    assert 1 <= failing.restarts <= 3 and failing.last_exit == "exited with 1", failing
    assert service(data_dir, "steady").pid == again.pid  # untouched by the other's failures

    # SIGUSR1 stops the supervising only: the processes run on; a new one adopts them, and restarts them too.
    supervisor.send_signal(signal.SIGUSR1)
    assert supervisor.wait(10) == 0
    assert runs(again.pid, again.start_ticks, SLEEPER)
    supervise(data_dir)
    assert service(data_dir, "steady").pid == again.pid
    os.kill(again.pid, signal.SIGKILL)
    assert until(lambda: service(data_dir, "steady").pid not in (0, again.pid), 5)
    last = service(data_dir, "steady")
    assert last.restarts == 2 and "not our child" in last.last_exit


def test_up_reports_a_process_that_cannot_start(tmp_path: Path) -> None:
    """`wrenn up`'s wait ends at the second failed start with how it ended and its log, not after minutes."""
    (tmp_path / "logs").mkdir()
    log = tmp_path / "failing.log"
    state = State([Service("agent", FAILING, str(log), ready_url=f"http://127.0.0.1:{free_port()}")])
    supervisor = _platform._supervise(tmp_path, state)
    try:
        started = time.monotonic()
        with pytest.raises(_platform.PlatformError, match=f"host agent exited with 1 .*its log: {log}"):
            _platform._wait_ready(tmp_path, Console(stderr=True), supervisor)
        assert time.monotonic() - started < 20
    finally:
        supervisor.terminate()
        supervisor.wait(10)


def test_sigterm_is_an_orderly_shutdown_of_the_processes(data_dir: Path) -> None:
    """What an init system sends at shutdown: the capsules are paused (here there is no platform to ask,
    which is logged), then every process is stopped and recorded as stopped."""
    supervisor = supervise(data_dir)
    assert until(lambda: service(data_dir, "steady").pid > 0, 10)
    steady = service(data_dir, "steady")
    second = subprocess.run([sys.executable, "-m", "wrenn.cli._supervisor", str(data_dir)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert second.returncode != 0 and "another one supervises" in second.stderr  # one per data dir
    assert service(data_dir, "steady").pid == steady.pid
    supervisor.terminate()
    assert supervisor.wait(40) == 0
    assert not runs(steady.pid, steady.start_ticks)
    state = State.load(data_dir)
    assert state is not None and state.pid == 0
    assert all(s.pid == 0 and s.last_exit == "stopped at shutdown" for s in state.services), state
    assert "cannot pause capsules at shutdown" in (data_dir / "supervisor.log").read_text()
