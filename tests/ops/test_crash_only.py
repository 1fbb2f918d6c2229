"""A single node that survives crashes: `wrenn up`'s supervisor restarts a killed control plane or agent on
its own, each without touching the other, and `wrenn up` on a (partly) running platform destroys nothing.

One platform for the module, one capsule with a file in it; each test kills something and checks that the
capsule still runs in the same VMM with its file."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.cli._run import until, wrenn
from tests.ops.conftest import Node, vmm_pids
from wrenn.cli._platform import agent_identity
from wrenn.sdk import Capsule

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]


def test_status_shows_each_process_and_the_capsules(node: Node) -> None:
    shown = wrenn("status", "--data-dir", str(node.data_dir)).stdout
    for process in ("supervisor", "host agent", "control plane"):
        line = next(line for line in shown.splitlines() if line.startswith(process))
        assert " running " in line, shown
    assert str(node.service("agent")["pid"]) in shown and str(node.service("controlplane")["pid"]) in shown
    assert "capsules on this host: 1 running" in shown, shown


def test_a_killed_control_plane_is_restarted_and_the_capsule_runs_on(node: Node) -> None:
    vmm, agent, before = node.vmm_pid(), node.service("agent"), node.service("controlplane")
    os.kill(before["pid"], signal.SIGKILL)
    assert until(lambda: node.service("controlplane")["pid"] not in (0, before["pid"]), 20), node.state()
    after = node.service("controlplane")
    assert after["restarts"] == before["restarts"] + 1 and after["last_exit"] == "killed by SIGKILL"
    assert until(node.file_is_there, 60)
    assert node.service("agent") == agent and node.vmm_pid() == vmm  # the agent and the VM untouched


def test_a_killed_agent_is_restarted_and_adopts_the_vm(node: Node) -> None:
    vmm, server, before = node.vmm_pid(), node.service("controlplane"), node.service("agent")
    os.kill(before["pid"], signal.SIGKILL)
    assert until(lambda: node.service("agent")["pid"] not in (0, before["pid"]), 20), node.state()
    assert node.service("agent")["restarts"] == before["restarts"] + 1
    assert until(node.file_is_there, 90)
    assert node.vmm_pid() == vmm  # adopted, not booted anew
    assert node.service("controlplane") == server
    shown = wrenn("status", "--data-dir", str(node.data_dir)).stdout
    agent_line = next(line for line in shown.splitlines() if line.startswith("host agent"))
    assert "killed by SIGKILL" in agent_line and "capsules on this host: 1 running" in shown, shown


def test_up_on_a_half_running_platform_destroys_nothing(node: Node) -> None:
    """The bug of issue 13: the supervisor and the control plane killed, then `wrenn up`."""
    vmm, agent, server = node.vmm_pid(), node.service("agent"), node.service("controlplane")
    os.kill(node.state()["pid"], signal.SIGKILL)
    os.kill(server["pid"], signal.SIGKILL)
    stopped = wrenn("status", "--data-dir", str(node.data_dir), check=False)
    assert stopped.returncode == 3 and "stopped" in stopped.stdout
    up = wrenn("up", "--detach", "--data-dir", str(node.data_dir), "--command", "true")
    assert "keeping agent, restarting controlplane" in up.stderr, up.stderr
    assert node.service("agent")["pid"] == agent["pid"]  # adopted by the new supervisor
    restarted = node.service("controlplane")
    assert restarted["pid"] != server["pid"] and restarted["restarts"] == server["restarts"] + 1
    assert restarted["last_exit"] == "ended while unsupervised"
    assert node.file_is_there() and node.vmm_pid() == vmm
    again = wrenn("up", "--detach", "--data-dir", str(node.data_dir), "--command", "true")
    assert "already running" in again.stderr
    assert node.file_is_there() and node.vmm_pid() == vmm
    # the adopted agent is still supervised: killed, it comes back and adopts the VM again
    os.kill(agent["pid"], signal.SIGKILL)
    assert until(lambda: node.service("agent")["pid"] not in (0, agent["pid"]), 20), node.state()
    assert "not our child" in node.service("agent")["last_exit"]
    assert until(node.file_is_there, 90) and node.vmm_pid() == vmm


def _ours(data_dir: Path) -> tuple[set[str], set[str]]:
    """This node's agent's network namespaces and host links (its name prefix's)."""
    prefix = agent_identity(data_dir)[1]
    netns = (
        {n for n in os.listdir("/run/netns") if n.startswith(prefix)}
        if os.path.isdir("/run/netns")
        else set()
    )
    links = {n.split("@")[0] for n in os.listdir("/sys/class/net") if n.startswith(prefix)}
    return netns, links


def test_both_killed_in_turn_keep_the_capsule_and_its_processes(node: Node) -> None:
    """The agent killed, then the control plane before the agent is back (a second crash while the
    first is recovering): both come back, the capsule runs on in the same VMM with its file and a
    process started before, and nothing is left over or missing (namespaces, links, capsules)."""
    c = node.capsule
    sleeper = c.commands.run("nohup sleep 3600 >/dev/null 2>&1 & echo $!", timeout=30).stdout.strip()
    vmm, agent, server, before = (
        node.vmm_pid(),
        node.service("agent"),
        node.service("controlplane"),
        _ours(node.data_dir),
    )
    assert all(before), before  # the capsule's namespace and host link are there to compare
    os.kill(agent["pid"], signal.SIGKILL)
    os.kill(server["pid"], signal.SIGKILL)  # the agent is restarted 0.5 s after its end: not back yet

    def both_back() -> bool:
        return all(
            node.service(n)["pid"] not in (0, old["pid"])
            for n, old in (("agent", agent), ("controlplane", server))
        )

    assert until(both_back, 20), node.state()
    assert until(node.file_is_there, 90)
    assert node.vmm_pid() == vmm  # adopted, not booted anew
    assert c.commands.run(f"kill -0 {sleeper} && echo alive", timeout=30).stdout == "alive\n"
    assert _ours(node.data_dir) == before
    shown = wrenn("status", "--data-dir", str(node.data_dir)).stdout
    assert "capsules on this host: 1 running" in shown, shown


@pytest.mark.parametrize("killed", ["agent", "controlplane"])
def test_a_create_interrupted_by_a_crash_is_settled(node: Node, killed: str) -> None:
    """A capsule being created when its agent or the control plane dies ends `running` (and answers) or
    `error` (and its VM is gone), never `pending` or `starting` for good, and never a VM without a row."""
    api = {"api_key": node.env["WRENN_API_KEY"], "base_url": node.env["WRENN_BASE_URL"]}
    http = httpx.Client(base_url=api["base_url"], headers={"X-API-Key": api["api_key"]}, timeout=10)
    before = {c.id for c in Capsule.list(**api)}
    creating = concurrent.futures.ThreadPoolExecutor(1)
    booting = creating.submit(Capsule, memory_mb=320, timeout=0, **api)  # a shape not booted yet: a cold boot
    assert until(lambda: len({c.id for c in Capsule.list(**api)} - before) == 1, 20)
    (capsule_id,) = {c.id for c in Capsule.list(**api)} - before
    time.sleep(1)
    os.kill(node.service(killed)["pid"], signal.SIGKILL)
    with contextlib.suppress(Exception):
        booting.result(timeout=120).close()  # failed, or ended either way
    creating.shutdown()

    def status() -> str:
        try:
            return str(http.get(f"/v1/capsules/{capsule_id}").json()["status"])
        except (httpx.TransportError, ValueError, KeyError):  # the control plane restarting
            return ""

    assert until(lambda: status() in ("running", "error"), 45), status()  # a monitor round is 15 s
    if status() == "running":
        assert Capsule.connect(capsule_id, **api).commands.run("echo alive", timeout=30).stdout == "alive\n"
    else:
        assert until(lambda: vmm_pids(capsule_id) == [], 60), vmm_pids(capsule_id)
    # the host is back `online` at the monitor's next round (until then a destroy answers 503)
    assert until(lambda: http.delete(f"/v1/capsules/{capsule_id}").status_code in (200, 204, 404), 45)
    assert until(lambda: vmm_pids(capsule_id) == [], 30)
    assert until(node.file_is_there, 90)  # the first capsule untouched
    http.close()
