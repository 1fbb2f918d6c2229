"""What a snapshot records of the VMM it was taken with, and the restore path refusing one this host's
VMM cannot honour (no VM: a paused sandbox's snapshot directory with a `meta.json` is all it reads)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from wrenn.agent._admission import Admission
from wrenn.agent._boot import Booter
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


def _parts(tmp_path: Path) -> tuple[SandboxTable, TemplateStore, Launcher]:
    """The agent's sandbox table over the real QEMU driver (its version probed), nothing started."""
    config = AgentConfig(data_dir=tmp_path, name_prefix="wtmach")
    table = SandboxTable(
        config,
        QemuDriver(),
        AcceleratorChoice(Accelerator.TCG, "test"),
        NetworkManager(),
        Cgroups(root=tmp_path),
    )
    templates = TemplateStore(tmp_path / "templates")
    return table, templates, Launcher(table, templates)


def _foreign(table: SandboxTable) -> str:
    """A version of the installed VMM's next minor series."""
    installed = major_minor(table.machine.vmm_version)
    assert installed is not None, table.machine
    return f"{installed[0]}.{installed[1] + 1}.0"


def test_resume_refuses_a_foreign_vmm_version(tmp_path: Path) -> None:
    """A paused sandbox whose snapshot an other QEMU series took is refused before anything starts, with
    what took it, what is installed and how to migrate; it stays paused. One without a recorded version
    passes this check (and goes on to the next: here, its image is missing)."""
    table, templates, launcher = _parts(tmp_path)
    snapshots = Snapshots(table, launcher, templates, Admission(table), None)
    params = SandboxParams("sbx-old", "base", 1, 256, 2048, 60)
    sandbox = Sandbox(params=params, workdir=tmp_path / "sbx-old", status=Status.PAUSED)
    sandbox.snapshot_dir.mkdir(parents=True)
    table.sandboxes[sandbox.id] = sandbox
    foreign = _foreign(table)
    meta = {**table.machine.meta("0.1.0"), "vmm_version": foreign, "kind": "pause"}
    (sandbox.snapshot_dir / "meta.json").write_text(json.dumps(meta))

    with pytest.raises(SandboxError) as refused:
        asyncio.run(snapshots.resume(sandbox.id))
    message = refused.value.message
    assert refused.value.code == "failed_precondition", message
    assert f"taken with qemu {foreign}" in message, message
    assert f"this host runs qemu {table.machine.vmm_version}" in message, message
    assert f"resume it on a host running qemu {foreign.removesuffix('.0')}.x" in message, message
    assert str(tmp_path) not in message, message  # where it lies is the operator's (logged), not the API's
    assert sandbox.status is Status.PAUSED and (sandbox.snapshot_dir / "meta.json").is_file()

    del meta["vmm_version"], meta["machine"]  # a snapshot from before the record: judged as before
    (sandbox.snapshot_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SandboxError) as next_check:
        asyncio.run(snapshots.resume(sandbox.id))
    assert "image of sandbox sbx-old is gone" in next_check.value.message, next_check.value.message


def test_a_built_template_of_another_vmm_version_is_refused(tmp_path: Path) -> None:
    """A built template (its snapshot taken on the build's host) materialised here with another QEMU
    series is refused at create, saying to build it again."""
    table, templates, launcher = _parts(tmp_path)
    booter = Booter(table, launcher, templates, Admission(table))
    directory = tmp_path / "templates" / "bld-1"
    directory.mkdir(parents=True)
    meta = {"kind": "built", "vcpus": 1, "memory_mb": 256, "disk_size_mb": 2048, "vmm": "qemu",
            "vmm_version": _foreign(table), "machine": MACHINE}  # fmt: skip
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SandboxError) as refused:
        booter._validate(SandboxParams("sbx-new", "bld-1", 1, 256, 2048, 60))
    assert refused.value.code == "failed_precondition", refused.value.message
    assert "template 'bld-1' cannot be restored here" in refused.value.message, refused.value.message
    assert "build the template again" in refused.value.message, refused.value.message
