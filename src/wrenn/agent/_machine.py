"""What a snapshot was taken with (VMM, its version, machine type, envd), and whether this host's VMM can
restore it.

A VM snapshot is the VMM's own device state: QEMU's `microvm` machine type is not versioned, so QEMU
promises nothing across releases for it, and Firecracker's snapshot format follows its releases. A restore
is therefore allowed only by the same VMM, of the same major.minor version, with the same machine options;
anything else is refused before a VMM starts (never a hung or corrupt guest). A snapshot from before these
were recorded (no `vmm_version`) is restored as it always was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .vmm import Driver, DriverError

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """The VMM installed here (probed once, at agent start)."""

    vmm: str
    vmm_version: str
    machine: str

    @classmethod
    def probe(cls, driver: Driver) -> MachineRecord:
        try:
            version = driver.version()
        except DriverError:  # judged as unknowable: restores go on as before
            version = UNKNOWN
        return cls(vmm=driver.name, vmm_version=version, machine=driver.machine)

    def meta(self, envd_version: str) -> dict[str, Any]:
        """The fields a snapshot's `meta.json` records of it."""
        return {
            "vmm": self.vmm,
            "vmm_version": self.vmm_version,
            "machine": self.machine,
            "envd_version": envd_version,
        }


def major_minor(version: str) -> tuple[int, int] | None:
    """(8, 2) of "8.2.2", "v1.12.1", "Firecracker v1.12.1" or "8.2.2 (Debian 1:8.2.2+ds-1)"; None when
    there is no such number."""
    match = re.search(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def incompatibility(meta: dict[str, Any], installed: MachineRecord) -> str | None:
    """Why a snapshot with this `meta.json` cannot be restored by `installed`; None when it can (or when
    it predates the record and nothing says it cannot)."""
    vmm = str(meta.get("vmm") or "")
    version = str(meta.get("vmm_version") or "")
    machine = meta.get("machine")
    taken = f"{vmm} {version}".strip() if vmm else "an unrecorded VMM"
    if machine:
        taken += f" (machine {machine})"
    here = f"{installed.vmm} {installed.vmm_version}"
    if vmm and vmm != installed.vmm:
        return f"it was taken with {taken}; this host runs {here}, a different VMM"
    if not version or UNKNOWN in (version, installed.vmm_version):
        return None  # from before versions were recorded, or one side unknowable: as before
    recorded, current = major_minor(version), major_minor(installed.vmm_version)
    if recorded is None or current is None or recorded != current:
        return (
            f"it was taken with {taken}; this host runs {here}, and {installed.vmm} restores snapshots only "
            f"of its own major.minor version ({_series(version)})"
        )
    if machine is not None and machine != installed.machine:
        return (
            f"it was taken with {taken}; this host runs {here} with machine {installed.machine}, and a "
            "snapshot restores only into the machine it was taken of"
        )
    return None


def _series(version: str) -> str:
    found = major_minor(version)
    return f"{found[0]}.{found[1]}.x" if found else version


def how_to_migrate(meta: dict[str, Any]) -> str:
    """What can be done with a paused sandbox's snapshot this host cannot restore."""
    vmm, version = meta.get("vmm") or "the VMM", str(meta.get("vmm_version") or "")
    where = f"{vmm} {_series(version)}" if version else str(vmm)
    return (
        f"resume it on a host running {where} (a hibernated capsule thaws on any host that reaches the "
        "cold storage), or install that VMM version here; its disk and snapshot are kept as they are"
    )
