"""One node brought up with `wrenn up` and one capsule with a file in it, shared by the tests that kill,
stop, restart or upgrade its processes (test_crash_only first, then test_reboot_upgrade, whose last test
cuts the power). One platform for the session: bringing one up costs about a minute."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent._agent import _free_port, private_data_dir
from tests.cli._run import wrenn
from wrenn.sdk import Capsule

CONTENT = "written before the crashes\n"


def vmm_pids(capsule_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", "--", f"-name {capsule_id} "], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


@dataclass
class Node:
    data_dir: Path
    env: dict[str, str]
    capsule: Capsule
    #: The ports `wrenn up` was given (for an `up` after everything stopped).
    ports: list[str]

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "supervisor.json").read_text()))

    def service(self, name: str) -> dict[str, Any]:
        return dict(next(s for s in self.state()["services"] if s["name"] == name))

    def vmm_pid(self) -> int:
        found = vmm_pids(self.capsule.capsule_id)
        assert len(found) == 1, found
        return found[0]

    def file_is_there(self) -> bool:
        """The file written at the start, read through the control plane and the agent (either may be
        settling after a restart: the host monitor reconciles within a round, 15 s)."""
        try:
            return bool(self.capsule.commands.run("cat /home/user/kept.txt", timeout=30).stdout == CONTENT)
        except Exception:
            return False


@pytest.fixture(scope="session")
def node(image: object) -> Iterator[Node]:
    shared = Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))
    data_dir = private_data_dir(shared, "ops")
    ports = ["--port", str(_free_port()), "--agent-port", str(_free_port())]
    ports += ["--agent-proxy-port", str(_free_port())]
    try:  # a failed `up` leaves a supervisor and processes too: `down` stops them either way
        wrenn("up", "--detach", "--data-dir", str(data_dir), *ports, "--command", "true")
        exports = wrenn("env", "--data-dir", str(data_dir)).stdout
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        with Capsule(
            memory_mb=256, timeout=0, api_key=env["WRENN_API_KEY"], base_url=env["WRENN_BASE_URL"]
        ) as c:
            c.files.write("/home/user/kept.txt", CONTENT)
            yield Node(data_dir, env, c, ports)
    finally:
        wrenn("down", "--data-dir", str(data_dir), check=False)
        left = subprocess.run(["pgrep", "-f", f"{data_dir}"], capture_output=True, text=True).stdout
        assert left == "", left
