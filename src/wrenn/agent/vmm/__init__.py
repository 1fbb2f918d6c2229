"""VM drivers behind one interface: QEMU (`-M microvm`, QMP) and Firecracker (HTTP API)."""

from ._driver import VM, Accelerator, Driver, DriverError, VMSpec, console_tail

__all__ = ["VM", "Accelerator", "Driver", "DriverError", "VMSpec", "console_tail"]
