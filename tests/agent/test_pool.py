"""The warm pool (docs/pool.md) with a real agent and real VMs: a pool of two stopped VMs of one shape.
Two creates take them; they must share nothing a tenant could see (identity, files, random state,
network), honour what the create asked (env, metadata, token, timeout, network policy), and the pool
refills. Then the agent is killed (-9): the new one adopts the claimed sandbox, destroys the old members
without leaving any of their VMMs, cgroups, directories or RAM files, and refills.

One agent for the module; its first create boots (it makes the ready snapshot the pool restores).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

from ._agent import (
    POOL_ARGS,
    POOL_PREFIX,
    POOL_SHAPE,
    AgentProcess,
    pool_metrics,
    start_agent,
    unclaimed,
    wait_for_pool,
)

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

PREFIX, POOL, SHAPE = POOL_PREFIX, POOL_ARGS, POOL_SHAPE


def members(agent: AgentProcess) -> list[str]:
    return sorted(p.name for p in (agent.data_dir / "sandboxes").glob("_pool-*"))


def claimed(agent: AgentProcess) -> dict[str, str]:
    """Sandboxes claimed from the pool, by id: the member name they keep for their VM."""
    found = {}
    for state in (agent.data_dir / "sandboxes").glob("_pool-*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            found[json.loads(state.read_text())["params"]["sandbox_id"]] = state.parent.name
    return found


def vmm_pids(name: str) -> list[int]:
    pattern = f"-name {name} .*mem-path=/dev/shm/{PREFIX}-{name}.mem"
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def leftovers(agent: AgentProcess, name: str) -> list[str]:
    found = [f"vmm pid {p}" for p in vmm_pids(name)]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/wrenn/{PREFIX}-{name}")]
    found += [str(p) for p in [agent.data_dir / "sandboxes" / name, Path(f"/dev/shm/{PREFIX}-{name}.mem")]
              if p.exists()]  # fmt: skip
    return found


def cpu_share(name: str) -> str:
    """The CPU share of the VMM's cgroup: `cpu.shares` (v1) or `cpu.weight` (v2), as "v1:1024" / "v2:100"."""
    v1 = Path(f"/sys/fs/cgroup/cpu/wrenn/{PREFIX}-{name}/cpu.shares")
    if v1.exists():
        return f"v1:{v1.read_text().strip()}"
    return f"v2:{Path(f'/sys/fs/cgroup/wrenn/{PREFIX}-{name}/cpu.weight').read_text().strip()}"


def netns_of(host_ip: str) -> str:
    """The sandbox's netns, from the host-side link its address is routed through."""
    route = subprocess.run(["ip", "-o", "route", "get", host_ip], capture_output=True, text=True).stdout
    match = re.search(rf"dev {PREFIX}(\d+)h", route)
    assert match, route
    return f"{PREFIX}-ns-{match.group(1)}"


def ruleset(host_ip: str) -> str:
    argv = ["ip", "netns", "exec", netns_of(host_ip), "nft", "list", "ruleset"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


async def run(client: HostAgentServiceClient, sandbox_id: str, script: str) -> str:
    request = pb.ExecRequest(sandbox_id=sandbox_id, cmd="/bin/bash", args=["-c", script])
    reply = await client.exec(request, timeout_ms=120_000)
    assert reply.exit_code == 0, reply.stderr.decode()
    return reply.stdout.decode()


@pytest.fixture(scope="module")
def agent(pooled_agent: AgentProcess) -> AgentProcess:
    """The session's warm-pool agent (tests/conftest.py); these tests run first on it (the security
    tests' use of it after the restart below needs only a member)."""
    return pooled_agent


@pytest.fixture
async def client(agent: AgentProcess) -> AsyncIterator[HostAgentServiceClient]:
    async with agent.client() as c:
        yield c


async def test_pooled_sandboxes_share_nothing_and_honour_their_create(
    client: HostAgentServiceClient, agent: AgentProcess
) -> None:
    before = pool_metrics(agent)
    pooled = members(agent)
    assert len(pooled) == 2
    listed = await client.list_sandboxes(pb.ListSandboxesRequest())
    assert not [s.sandbox_id for s in listed.sandboxes]  # members are no tenant's sandboxes
    denied = pb.NetworkPolicy(deny_out=["198.51.100.0/24"])
    a, b = await asyncio.gather(
        client.create_sandbox(pb.CreateSandboxRequest(
            sandbox_id="pl-a", envd_access_token="tok-a", default_env={"WHO": "a"}, metadata={"k": "a"},
            allow_internet=False, **SHAPE,  # type: ignore[arg-type]
        ), timeout_ms=120_000),
        client.create_sandbox(pb.CreateSandboxRequest(
            sandbox_id="pl-b", envd_access_token="tok-b", default_env={"WHO": "b"}, metadata={"k": "b"},
            allow_internet=True, network=denied, timeout_sec=10, discard_on_timeout=True, **SHAPE,  # type: ignore[arg-type]
        ), timeout_ms=120_000),
    )  # fmt: skip
    after = pool_metrics(agent)
    assert (
        after['wrenn_agent_pool_creates_total{result="hit"}']
        - before.get('wrenn_agent_pool_creates_total{result="hit"}', 0)
        == 2
    )
    assert a.sandbox.from_snapshot and b.sandbox.from_snapshot
    assert a.sandbox.metadata == {"k": "a"} and b.sandbox.metadata == {"k": "b"}
    assert a.sandbox.host_ip != b.sandbox.host_ip  # a slot, netns and TAP each

    await run(client, "pl-a", "echo mine > ~/only-in-a")
    script = (
        "cat ~/only-in-a 2>/dev/null || echo absent; hostname; echo $WHO; head -c 16 /dev/urandom | od -An -tx1"
        " | tr -d ' \\n'; echo; python3 -c 'import random; print(random.getrandbits(64))'"
    )
    out_a, out_b = [(await run(client, sid, script)).split() for sid in ("pl-a", "pl-b")]
    assert out_a[:3] == ["mine", "pl-a", "a"] and out_b[:3] == ["absent", "pl-b", "b"]
    assert out_a[3] != out_b[3] and out_a[4] != out_b[4]  # kernel pool reseeded, Python seeded from it

    # each guest's envd takes its own token only
    async with httpx.AsyncClient(timeout=10) as http:
        for sandbox, own, other in ((a, "tok-a", "tok-b"), (b, "tok-b", "tok-a")):
            url = f"http://{sandbox.sandbox.host_ip}:49983/files?path=/etc/hostname"
            assert (await http.get(url, headers={"X-Access-Token": own})).status_code == 200
            assert (await http.get(url, headers={"X-Access-Token": other})).status_code == 401

    # each its own network policy, in its own netns
    rules_a, rules_b = ruleset(a.sandbox.host_ip), ruleset(b.sandbox.host_ip)
    assert "0.0.0.0/0" in rules_a and "198.51.100.0/24" not in rules_a  # closed: everything denied
    assert "0.0.0.0/0" not in rules_b and "198.51.100.0/24" in rules_b

    # the pool refills with new members, never the claimed ones
    await asyncio.to_thread(wait_for_pool, agent, 2)
    assert len(unclaimed(agent)) == 2 and not set(unclaimed(agent)) & set(pooled)
    # members fill on CPU that sandboxes leave idle (the lowest share); a claimed one has a sandbox's share
    assert {cpu_share(m) for m in unclaimed(agent)} <= {"v1:10", "v2:1"}
    assert cpu_share(claimed(agent)["pl-a"]) in ("v1:1024", "v2:100")

    # pl-b's timeout (10 s from its last use, discard): the reaper stops it and frees what it ran on
    b_name = claimed(agent)["pl-b"]
    deadline = time.monotonic() + 40
    while (
        await client.get_sandbox(pb.GetSandboxRequest(sandbox_id="pl-b"))
    ).sandbox.status != pb.SandboxStatus.STOPPED:
        assert time.monotonic() < deadline, "pl-b outlived its timeout"
        await asyncio.sleep(0.5)
    assert vmm_pids(b_name) == []
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="pl-b"))
    assert leftovers(agent, b_name) == []

    # a claimed sandbox pauses and resumes like any other, its VM still under the member's name
    a_name = claimed(agent)["pl-a"]
    await client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id="pl-a"), timeout_ms=120_000)
    assert vmm_pids(a_name) == []
    await client.resume_sandbox(pb.ResumeSandboxRequest(sandbox_id="pl-a"), timeout_ms=120_000)
    assert (await run(client, "pl-a", "cat ~/only-in-a; hostname")).split() == ["mine", "pl-a"]
    assert len(vmm_pids(a_name)) == 1


async def test_the_pool_recovers_after_the_agent_is_killed(agent: AgentProcess) -> None:
    old = unclaimed(agent)
    assert len(old) == 2 and all(vmm_pids(n) for n in old)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(30)
    agent.proc = start_agent(
        agent.data_dir, PREFIX, port=agent.port, proxy_port=agent.proxy_port, extra=POOL
    ).proc
    async with agent.client() as client:
        # the claimed sandbox is adopted under its pool name and still runs commands
        assert (await run(client, "pl-a", "cat ~/only-in-a")).strip() == "mine"
        listed = await client.list_sandboxes(pb.ListSandboxesRequest())
        assert [s.sandbox_id for s in listed.sandboxes] == ["pl-a"]
    # the old members are gone, whole; new ones take their place
    assert {n: leftovers(agent, n) for n in old} == {n: [] for n in old}
    await asyncio.to_thread(wait_for_pool, agent, 2)
    fresh = unclaimed(agent)
    assert len(fresh) == 2 and not set(fresh) & set(old)
    # one netns per VM that holds a slot: pl-a and the two members
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert len([ln for ln in out.splitlines() if ln.startswith(f"{PREFIX}-ns-")]) == 3
