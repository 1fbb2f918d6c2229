"""A node that survives an upgrade, a reboot and a power cut (issue 13), on the session's node (after
test_crash_only's tests, when both run) in this order:

- upgrade in place: `wrenn up` from another installation of wrenn (a copy of `src/` on PYTHONPATH) restarts
  the agent and the control plane onto it; the new agent adopts the VM: same VMM, its files and processes;
- orderly shutdown (SIGTERM to the supervisor, as an init system sends): the running capsule is paused
  through the control plane, everything stops, and the next `wrenn up` resumes it with its memory (a
  process it ran), and only it: a capsule its user paused stays paused;
- the same under systemd: the two commands `wrenn-capsules.service` runs pause the capsule and resume it
  (systemd itself, which runs them at a shutdown and at boot, is not on this machine);
- power cut (`kill -9` of every process and of the VMM): after `wrenn up` the capsule is `error` with a
  reason, and its disk is kept."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import wrenn
from tests.cli._run import until
from tests.cli._run import wrenn as run_wrenn
from tests.ops.conftest import Node, vmm_pids
from wrenn.sdk import Capsule

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]


@pytest.fixture(scope="session")
def api(node: Node) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=node.env["WRENN_BASE_URL"], headers={"X-API-Key": node.env["WRENN_API_KEY"]}, timeout=30
    ) as client:
        yield client


def status(api: httpx.Client, capsule_id: str) -> str:
    try:
        return str(api.get(f"/v1/capsules/{capsule_id}").json()["status"])
    except (httpx.TransportError, ValueError, KeyError):  # the control plane (re)starting
        return ""


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def up(node: Node, **env: str) -> subprocess.CompletedProcess[str]:
    return run_wrenn(
        "up", "--detach", "--data-dir", str(node.data_dir), *node.ports, "--command", "true", env=env
    )


@pytest.fixture(scope="module")
def sleeper(node: Node) -> int:
    """A process in the capsule: only the capsule's memory keeps it."""
    started = node.capsule.commands.run(
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!", timeout=30
    )
    return int(started.stdout)


def runs_in_capsule(node: Node, pid: int) -> bool:
    try:
        shown = node.capsule.commands.run(f"cat /proc/{pid}/cmdline | tr '\\0' ' '", timeout=30).stdout
    except Exception:
        return False
    return shown.startswith("sleep 100000")


def test_an_upgrade_restarts_both_onto_the_new_installation_and_keeps_the_capsule(
    node: Node, sleeper: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    second = tmp_path_factory.mktemp("second-installation")
    shutil.copytree(Path(wrenn.__file__).parent, second / "wrenn")
    vmm, agent, server = node.vmm_pid(), node.service("agent"), node.service("controlplane")

    upgraded = up(node, PYTHONPATH=str(second))
    assert "restarting agent, controlplane onto this one" in upgraded.stderr, upgraded.stderr
    for name, before in (("agent", agent), ("controlplane", server)):
        after = node.service(name)
        assert after["pid"] != before["pid"] and after["last_exit"] == "replaced by a new installation"
        assert environ(after["pid"])["PYTHONPATH"] == str(second), name  # it imports the copy
        assert not alive(before["pid"])
    assert until(node.file_is_there, 90)
    assert node.vmm_pid() == vmm and runs_in_capsule(node, sleeper)  # adopted, not booted anew
    assert "already running" in up(node, PYTHONPATH=str(second)).stderr  # nothing changed since: kept


def test_an_orderly_shutdown_pauses_and_the_next_start_resumes(
    node: Node, sleeper: int, api: httpx.Client
) -> None:
    capsule_id = node.capsule.capsule_id
    with Capsule(memory_mb=256, timeout=0, api_key=node.env["WRENN_API_KEY"],
                 base_url=node.env["WRENN_BASE_URL"]) as theirs:  # fmt: skip
        assert api.post(f"/v1/capsules/{theirs.capsule_id}/pause").status_code == 200  # a user's pause
        supervisor = node.state()["pid"]
        os.kill(supervisor, signal.SIGTERM)
        assert until(lambda: not alive(supervisor), 120)
        assert all(s["pid"] == 0 for s in node.state()["services"]), node.state()
        assert vmm_pids(capsule_id) == []
        paused = json.loads((node.data_dir / "paused-at-shutdown.json").read_text())
        assert paused["capsules"] == [capsule_id]

        assert "Wrenn is up" in up(node).stderr
        assert until(lambda: status(api, capsule_id) == "running", 60), status(api, capsule_id)
        assert runs_in_capsule(node, sleeper) and node.file_is_there()  # its memory and its disk
        assert status(api, theirs.capsule_id) == "paused"  # a user's pause is the user's
        assert not (node.data_dir / "paused-at-shutdown.json").exists()


def test_the_commands_of_the_capsules_unit_pause_and_resume(
    node: Node, sleeper: int, api: httpx.Client, tmp_path: Path
) -> None:
    """What `wrenn-capsules.service` runs under systemd (ExecStop, then ExecStart at the next boot), on the
    running node: its capsule paused and recorded, then resumed with its memory; nothing paused after
    `wrenn down` (which pauses or destroys them itself)."""
    capsule_id = node.capsule.capsule_id
    files = ["--platform-file", str(node.data_dir / "platform.json"), "--state-dir", str(tmp_path)]
    (tmp_path / "no-pause-at-stop").write_text("wrenn down\n")
    run_wrenn("capsules", "pause-for-shutdown", *files, "--deadline", "60")
    assert status(api, capsule_id) == "running" and not (tmp_path / "paused-at-shutdown.json").exists()

    (tmp_path / "no-pause-at-stop").unlink()
    run_wrenn("capsules", "pause-for-shutdown", *files, "--deadline", "60")
    assert status(api, capsule_id) == "paused" and vmm_pids(capsule_id) == []
    assert json.loads((tmp_path / "paused-at-shutdown.json").read_text())["capsules"] == [capsule_id]
    run_wrenn("capsules", "resume-after-start", *files)
    assert status(api, capsule_id) == "running" and runs_in_capsule(node, sleeper)
    assert not (tmp_path / "paused-at-shutdown.json").exists()


def test_a_power_cut_ends_the_capsule_in_error_with_its_disk(node: Node, api: httpx.Client) -> None:
    capsule_id = node.capsule.capsule_id
    state = node.state()
    for pid in [state["pid"], *(s["pid"] for s in state["services"]), node.vmm_pid()]:
        os.kill(pid, signal.SIGKILL)
    up(node)
    assert until(lambda: status(api, capsule_id) == "error", 60), status(api, capsule_id)
    with contextlib.closing(sqlite3.connect(f"file:{node.data_dir / 'wrenn.db'}?mode=ro", uri=True)) as db:
        (reason,) = db.execute("SELECT error FROM sandboxes WHERE id = ?", (capsule_id,)).fetchone()
    assert "power cut" in reason and "disk is kept" in reason, reason
    states = [json.loads(f.read_text()) for f in (node.data_dir / "sandboxes").glob("*/state.json")]
    (kept,) = [s for s in states if s["params"]["sandbox_id"] == capsule_id]
    assert kept["status"] == "error" and Path(kept["disk"]).stat().st_size > 0
