"""What a snapshot records of the VMM it was taken with, and the restore path refusing one this host's
VMM cannot honour (no VM: a paused sandbox's snapshot directory with a `meta.json` is all it reads)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from wrenn.agent._admission import Admission
from wrenn.agent._cgroup import Cgroups
from wrenn.agent._config import AgentConfig
from wrenn.agent._errors import SandboxError
from wrenn.agent._launch import Launcher
from wrenn.agent._machine import MachineRecord, how_to_migrate, incompatibility, major_minor
from wrenn.agent._sandbox import Sandbox, SandboxParams, Status
from wrenn.agent._snapshots import Snapshots
from wrenn.agent._table import SandboxTable
from wrenn.agent._templates import TemplateStore
from wrenn.agent.network import NetworkManager
from wrenn.agent.vmm import Accelerator
from wrenn.agent.vmm._probe import AcceleratorChoice
from wrenn.agent.vmm.qemu import MACHINE, QemuDriver

HERE = MachineRecord(vmm="qemu", vmm_version="7.2.15", machine=MACHINE)


def test_major_minor() -> None:
    assert major_minor("7.2.15") == (7, 2)
    assert major_minor("Firecracker v1.12.1") == (1, 12)
    assert major_minor("8.2.2 (Debian 1:8.2.2+ds-1)") == (8, 2)
    assert major_minor("unknown") is None


@pytest.mark.parametrize(
    "meta",
    [
        {},  # nothing recorded
        {"vmm": "qemu"},  # from before versions were recorded
        {"vmm": "qemu", "vmm_version": "7.2.1", "machine": MACHINE},  # another patch release
        {"vmm": "qemu", "vmm_version": "7.2.15"},  # no machine recorded
        {"vmm": "qemu", "vmm_version": "unknown", "machine": MACHINE},
    ],
)
def test_restorable(meta: dict[str, str]) -> None:
    assert incompatibility(meta, HERE) is None


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"vmm": "firecracker", "vmm_version": "Firecracker v1.12.1"}, "a different VMM"),
        ({"vmm": "firecracker"}, "a different VMM"),
        ({"vmm": "qemu", "vmm_version": "8.2.2", "machine": MACHINE}, "major.minor version (8.2.x)"),
        ({"vmm": "qemu", "vmm_version": "7.1.0", "machine": MACHINE}, "major.minor version (7.1.x)"),
        ({"vmm": "qemu", "vmm_version": "7.2.0", "machine": "microvm"}, "the machine it was taken of"),
    ],
)
def test_refused(meta: dict[str, str], says: str) -> None:
    reason = incompatibility(meta, HERE)
    assert reason is not None and says in reason, reason
    assert "this host runs qemu 7.2.15" in reason, reason


def test_how_to_migrate() -> None:
    text = how_to_migrate({"vmm": "qemu", "vmm_version": "8.2.2"})
    assert "on a host running qemu 8.2.x" in text


def test_resume_refuses_a_foreign_vmm_version(tmp_path: Path) -> None:
    """A paused sandbox whose snapshot an other QEMU series took is refused before anything starts, with
    what took it, what is installed and how to migrate; it stays paused. One without a recorded version
    passes this check (and goes on to the next: here, its image is missing)."""
    driver = QemuDriver()
    config = AgentConfig(data_dir=tmp_path, name_prefix="wtmach")
    table = SandboxTable(
        config, driver, AcceleratorChoice(Accelerator.TCG, "test"), NetworkManager(), Cgroups(root=tmp_path)
    )
    installed = major_minor(table.machine.vmm_version)
    assert installed is not None, table.machine
    templates = TemplateStore(tmp_path / "templates")
    launcher = Launcher(table, templates)
    snapshots = Snapshots(table, launcher, templates, Admission(table), None)
    params = SandboxParams("sbx-old", "base", 1, 256, 2048, 60)
    sandbox = Sandbox(params=params, workdir=tmp_path / "sbx-old", status=Status.PAUSED)
    sandbox.snapshot_dir.mkdir(parents=True)
    table.sandboxes[sandbox.id] = sandbox
    foreign = f"{installed[0]}.{installed[1] + 1}.0"
    meta = {**table.machine.meta("0.1.0"), "vmm_version": foreign, "kind": "pause"}
    (sandbox.snapshot_dir / "meta.json").write_text(json.dumps(meta))

    with pytest.raises(SandboxError) as refused:
        asyncio.run(snapshots.resume(sandbox.id))
    message = refused.value.message
    assert refused.value.code == "failed_precondition", message
    assert f"taken with qemu {foreign}" in message, message
    assert f"this host runs qemu {table.machine.vmm_version}" in message, message
    assert f"resume it on a host running qemu {installed[0]}.{installed[1] + 1}.x" in message, message
    assert str(tmp_path) not in message, message  # where it lies is the operator's (logged), not the API's
    assert sandbox.status is Status.PAUSED and (sandbox.snapshot_dir / "meta.json").is_file()

    del meta["vmm_version"], meta["machine"]  # a snapshot from before the record: judged as before
    (sandbox.snapshot_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SandboxError) as next_check:
        asyncio.run(snapshots.resume(sandbox.id))
    assert "image of sandbox sbx-old is gone" in next_check.value.message, next_check.value.message
