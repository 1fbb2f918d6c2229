"""VM drivers behind one interface: QEMU (`-M microvm`, QMP) and Firecracker (HTTP API)."""

from ._driver import (
    VM,
    Accelerator,
    Capabilities,
    Confinement,
    Driver,
    DriverError,
    Kernel,
    VMSpec,
    console_tail,
)
from ._jail import Jail

__all__ = [
    "VM",
    "Accelerator",
    "Capabilities",
    "Confinement",
    "Driver",
    "DriverError",
    "Jail",
    "Kernel",
    "VMSpec",
    "console_tail",
]
