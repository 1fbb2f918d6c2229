"""The platform the network tests run against: a control plane over a real host agent whose guests
resolve names with the test's DNS server and whose egress proxy trusts the test's CA, beside the test's
own "internet" (`_internet`). Module-scoped: one agent and few VMs for all of a module's policies."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent._agent import AgentProcess, running_agent, start_agent
from tests.conftest import CONTROL_PLANE_DIRS, _control_plane

from ._internet import Internet, start_internet


@dataclass
class NetPlatform:
    base_url: str
    api_key: str
    agent: AgentProcess
    internet: Internet
    prefix: str
    agent_args: list[str]

    def restart_agent(self) -> None:
        """Stop the agent (its VMs run on) and start it again on the same ports: it adopts them."""
        self.agent.stop()
        self.agent.proc = start_agent(
            self.agent.data_dir, self.prefix, self.agent.port, self.agent.proxy_port, extra=self.agent_args
        ).proc

    @property
    def e2b(self) -> dict[str, Any]:
        """The unmodified `e2b` SDK's connection options."""
        return {"api_key": self.api_key, "api_url": self.base_url, "sandbox_url": self.base_url,
                "domain": "wrenn.local"}  # fmt: skip


@pytest.fixture(scope="module")
def internet() -> Iterator[Internet]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    net = start_internet(f"tn{os.getpid() % 10000:04d}")
    yield net
    net.stop()


@pytest.fixture(scope="module")
def platform(image: object, internet: Internet) -> Iterator[NetPlatform]:
    prefix = f"np{os.getpid() % 1000:03d}k"
    args = ["--dns", internet.dns, "--egress-upstream-ca", str(internet.ca)]
    with running_agent(prefix, args) as agent:
        try:
            for base, key in _control_plane(agent.url, agent.token_file):
                yield NetPlatform(base, key, agent, internet, prefix, args)
                log = CONTROL_PLANE_DIRS[base] / "server.log"
                shutil.copy(log, Path(tempfile.gettempdir()) / f"wrenn-{prefix}-server.log")
        finally:  # kept for a failure's diagnosis (the agent's data dir goes with it)
            shutil.copy(agent.log, Path(tempfile.gettempdir()) / f"wrenn-{prefix}-agent.log")
