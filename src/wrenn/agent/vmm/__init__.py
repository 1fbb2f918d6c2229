"""VM drivers behind one interface: QEMU (`-M microvm`, QMP) and Firecracker (HTTP API)."""

from ._driver import VM, Accelerator, Capabilities, Driver, DriverError, Kernel, VMSpec, console_tail

__all__ = ["VM", "Accelerator", "Capabilities", "Driver", "DriverError", "Kernel", "VMSpec", "console_tail"]
