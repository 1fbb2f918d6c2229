"""Warm-pool members (docs/pool.md) are no tenant's: a caller of the agent's API cannot see one, run
anything in one, destroy one, take its name for a sandbox of its own, or reach it through the traffic
proxy, by its name in any spelling. The session's warm-pool agent (`pooled_agent`), one of its stopped VMs.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import quote

import httpx
import pytest
from connectrpc.errors import ConnectError

from tests.agent._agent import POOL_PREFIX, POOL_SHAPE, AgentProcess, unclaimed, wait_for_pool
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

SHAPE = POOL_SHAPE


@pytest.fixture(scope="module")
def pooled(pooled_agent: AgentProcess) -> tuple[AgentProcess, str]:
    """The session's warm-pool agent (tests/conftest.py), and the name of one of its stopped members."""
    wait_for_pool(pooled_agent, 1)
    return pooled_agent, unclaimed(pooled_agent)[0]


def metrics(agent: AgentProcess) -> str:
    return httpx.get(f"{agent.url}/metrics", headers=agent.headers, timeout=10).text


def vmm_alive(member: str) -> bool:
    pattern = f"-name {member} .*mem-path=/dev/shm/{POOL_PREFIX}-{member}.mem"
    return bool(subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout.split())


def test_a_member_is_invisible_and_untouchable_through_the_api(pooled: tuple[AgentProcess, str]) -> None:
    agent, member = pooled
    with agent.sync_client() as client:
        listed = [s.sandbox_id for s in client.list_sandboxes(pb.ListSandboxesRequest()).sandboxes]
        assert not [sid for sid in listed if sid.startswith("_")]  # sandboxes of other tests may be there
        for call in (
            lambda: client.get_sandbox(pb.GetSandboxRequest(sandbox_id=member)),
            lambda: client.exec(pb.ExecRequest(sandbox_id=member, cmd="true")),
            lambda: client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=member)),
            lambda: client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id=member)),
            lambda: client.get_sandbox_metrics(pb.GetSandboxMetricsRequest(sandbox_id=member)),
        ):
            with pytest.raises(ConnectError) as err:
                call()
            assert err.value.code.name == "NOT_FOUND", err.value
        # its name is no sandbox id: a create cannot take it (nor its directory, cgroup or RAM file)
        with pytest.raises(ConnectError) as err:
            client.create_sandbox(pb.CreateSandboxRequest(sandbox_id=member, **SHAPE))  # type: ignore[arg-type]
        assert err.value.code.name == "INVALID_ARGUMENT"
    assert member not in metrics(agent)  # no label names a member (nor a sandbox)
    assert (agent.data_dir / "sandboxes" / member).is_dir() and vmm_alive(member)


def test_a_member_is_unreachable_through_the_proxy(pooled: tuple[AgentProcess, str]) -> None:
    agent, member = pooled
    spellings = [member, quote(member, safe=""), "%5F" + member[1:], member.upper(), f"{member}%00"]
    for name in spellings:
        for port in (49983, 8000):
            r = httpx.get(f"{agent.proxy_url}/proxy/{name}/{port}/health", headers=agent.headers, timeout=10)
            # E2B's answer for a sandbox that is not there (502, "was not found"), or a refused name
            refused = r.status_code in (400, 404) or (r.status_code == 502 and "was not found" in r.text)
            assert refused, (name, port, r.status_code, r.text[:200])
    assert vmm_alive(member)
