"""What the host agent reads of a VM driver instead of its name: the capabilities it declares, and whether
a pid is the VMM it started for a VM (asked before adopting a VM after a restart)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrenn.agent.vmm import Capabilities, Driver, Kernel
from wrenn.agent.vmm.firecracker import FirecrackerDriver
from wrenn.agent.vmm.qemu import QemuDriver


def test_shared_snapshots_need_qcow2_disks() -> None:
    """The agent restores a shared snapshot onto a qcow2 overlay of its disk: no driver may claim one
    without the other."""
    with pytest.raises(ValueError, match="qcow2"):
        Capabilities(
            disk_format="raw", kernel=Kernel.ELF, memory_file=False, shared_snapshots=True, kvm_only=True
        )
    assert QemuDriver.capabilities.shared_snapshots and QemuDriver.capabilities.disk_format == "qcow2"
    assert not FirecrackerDriver.capabilities.shared_snapshots


def test_a_warm_pool_needs_shared_snapshots() -> None:
    """Pool members are restored from one shared ready snapshot: a driver without them declares no pool
    (Firecracker here), and none can claim one."""
    with pytest.raises(ValueError, match="shared_snapshots"):
        Capabilities(
            disk_format="qcow2", kernel=Kernel.ELF, memory_file=False, shared_snapshots=False, kvm_only=True,
            warm_pool=True,
        )  # fmt: skip
    assert QemuDriver.capabilities.warm_pool and not FirecrackerDriver.capabilities.warm_pool


def test_a_pid_is_the_vmm_only_of_its_own_driver_and_vm() -> None:
    # a stand-in whose command line reads like QEMU's for VM "sb-x"
    argv = ["qemu-system-x86_64", "-c", "import time; time.sleep(60)", "-name", "sb-x"]
    proc = subprocess.Popen(argv, executable=sys.executable)
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # Popen returns mid-exec, before the kernel shows the new command line
    qemu: Driver = QemuDriver()
    firecracker: Driver = FirecrackerDriver(Path("/nonexistent/firecracker"))
    try:
        assert qemu.owns_process(proc.pid, "sb-x")
        assert not qemu.owns_process(proc.pid, "sb-y")  # another sandbox's
        assert not qemu.owns_process(proc.pid, "-c")  # an argument, not the VM's name
        assert not firecracker.owns_process(proc.pid, "sb-x")  # another VMM's
    finally:
        proc.kill()
        proc.wait()
    assert not qemu.owns_process(proc.pid, "sb-x")  # gone
