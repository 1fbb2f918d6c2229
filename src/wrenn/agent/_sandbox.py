"""A sandbox as the host agent holds it: its parameters, resources and status."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._envd import EnvdClient
from ._private import write_private
from .network import OPEN, EgressPolicy, SandboxNetwork
from .vmm import VM

#: A sandbox id: it names the sandbox's directory, its cold-storage archive and its cgroup.
SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
#: A warm-pool member's name (`_pool`): it starts with "_", which no sandbox id can, so no tenant ever names
#: one, and a sandbox claimed from the pool keeps it for its VM, cgroup, RAM file and directory.
VM_NAME = re.compile(r"^_pool-[a-z0-9]{1,32}$")


class Status(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SandboxParams:
    sandbox_id: str
    template: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    timeout_sec: int
    team_id: str = ""
    default_user: str = "user"
    default_env: dict[str, str] = field(default_factory=dict)
    allow_internet: bool = False
    envd_access_token: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    #: At the idle timeout: pause (True) or stop and discard.
    auto_pause: bool = True
    #: Boot from the image even where a ready snapshot of this shape exists (benchmarks, debugging).
    cold_boot: bool = False
    #: Where commands run unless they say (a built template's WORKDIR); empty: the user's home.
    default_workdir: str = ""


@dataclass
class Sandbox:
    params: SandboxParams
    workdir: Path
    status: Status = Status.PENDING
    created_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)
    error: str = ""
    #: The base image (template name and version) the guest was booted from, maybe long ago.
    image_name: str = ""
    image_version: str = ""
    kernel_version: str = ""
    #: The envd protocol version of its image (from the image's manifest).
    envd_version: str = ""
    slot: int | None = None
    network: SandboxNetwork | None = None
    #: Its egress policy (`_netpolicy`); only its public part is saved.
    policy: EgressPolicy = field(default=OPEN, repr=False)
    #: False after a restart adopted it with header rules whose secrets are gone (until resent).
    secrets_loaded: bool = True
    #: The digest of the egress CA its guest trusts ("" none).
    ca_installed: str = ""
    disk: Path | None = None
    #: What the disk was made over (an image's root file system, a ready snapshot's or a template's disk;
    #: None for a disk that stands alone): the backing the VMM gets, never what the disk's header says.
    disk_base: Path | None = None
    vm: VM | None = None
    envd: EnvdClient | None = None
    boot_seconds: float | None = None
    paused_at: float | None = None
    #: Started from a snapshot rather than booted.
    from_snapshot: bool = False
    #: A warm pool member (docs/pool.md) not claimed yet: its VMM gets the least CPU when CPU is contended.
    pool_member: bool = False
    #: A clone's RAM: the snapshot memory file it maps copy-on-write (until its first pause).
    memory_source: Path | None = None
    #: What names its VM, cgroup, RAM file and directory when that is not its id: a sandbox claimed from
    #: the warm pool keeps the pool member's name (`VM_NAME`) for them. "" : its id.
    vm_name: str = ""
    #: Serialises pause, resume and destroy of this sandbox.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    #: One event per proxied request or socket open to the sandbox (`traffic`), set by `cut_traffic`.
    _traffic: set[asyncio.Event] = field(default_factory=set, repr=False)

    @property
    def id(self) -> str:
        return self.params.sandbox_id

    @property
    def host_name(self) -> str:
        """The name of its host-side resources: VMM (`-name`), cgroup, RAM file, directory."""
        return self.vm_name or self.params.sandbox_id

    @property
    def host_ip(self) -> str:
        return self.network.host_ip if self.network else ""

    @property
    def snapshot_dir(self) -> Path:
        """The last pause's snapshot: `vmstate`, `memory` and `meta.json`; the disk stays in `workdir`."""
        return self.workdir / "snapshot"

    def touch(self) -> None:
        self.last_active_at = time.time()

    @contextlib.contextmanager
    def traffic(self) -> Iterator[asyncio.Event]:
        """Held while a proxied request or socket is open: the event is set when it must be cut."""
        cut = asyncio.Event()
        self._traffic.add(cut)
        try:
            yield cut
        finally:
            self._traffic.discard(cut)

    def cut_traffic(self) -> None:
        """The sandbox is going away for good: end every proxied exchange with it now."""
        for cut in self._traffic:
            cut.set()

    # --- persistence, for adoption after an agent restart --------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def save(self) -> None:
        state: dict[str, Any] = {
            "params": asdict(self.params),
            "status": self.status.value,
            "created_at": self.created_at,
            "last_active_at": self.last_active_at,
            "image_name": self.image_name,
            "image_version": self.image_version,
            "kernel_version": self.kernel_version,
            "envd_version": self.envd_version,
            "slot": self.slot,
            "disk": str(self.disk) if self.disk else None,
            "disk_base": str(self.disk_base) if self.disk_base else None,
            "vmm_pid": self.vm.pid if self.vm else None,
            "paused_at": self.paused_at,
            "from_snapshot": self.from_snapshot,
            "memory_source": str(self.memory_source) if self.memory_source else None,
            "error": self.error,
            "network": self.policy.describe(),  # never its secrets: header values, the CA's key
            "ca_installed": self.ca_installed,
            "vm_name": self.vm_name,
        }
        write_private(self.state_file, json.dumps(state, indent=1))  # it holds the envd access token

    @classmethod
    def from_state(cls, workdir: Path, state: dict[str, Any]) -> Sandbox:
        """The sandbox `save` wrote (without its runtime: VMM, slot, network, envd client)."""
        sandbox = cls(
            params=SandboxParams(**state["params"]), workdir=workdir, status=Status(state["status"])
        )
        sandbox.created_at = float(state.get("created_at", time.time()))
        sandbox.last_active_at = float(state.get("last_active_at", time.time()))
        sandbox.image_name = str(state.get("image_name") or sandbox.params.template)
        sandbox.image_version = str(state.get("image_version", ""))
        sandbox.kernel_version = str(state.get("kernel_version", ""))
        sandbox.envd_version = str(state.get("envd_version", ""))
        sandbox.disk = Path(state["disk"]) if state.get("disk") else None
        sandbox.disk_base = Path(state["disk_base"]) if state.get("disk_base") else None
        sandbox.error = str(state.get("error") or "")
        sandbox.ca_installed = str(state.get("ca_installed") or "")
        sandbox.from_snapshot = bool(state.get("from_snapshot"))
        sandbox.memory_source = Path(state["memory_source"]) if state.get("memory_source") else None
        vm_name = str(state.get("vm_name") or "")
        if vm_name and not VM_NAME.match(vm_name):
            raise ValueError(f"vm_name {vm_name[:80]!r} is not a pool member's name")
        sandbox.vm_name = vm_name
        paused_at = state.get("paused_at")
        sandbox.paused_at = float(paused_at) if isinstance(paused_at, (int, float)) else None
        return sandbox


def load_state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))
