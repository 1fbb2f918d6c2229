"""The host agent's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wrenn.proto.hostagent.v1.auth import TOKEN_FILE

from .vmm import Accelerator


@dataclass(frozen=True, slots=True)
class AgentConfig:
    #: Where images, sandboxes' disks and runtime files live.
    data_dir: Path = Path("/var/lib/wrenn")
    host: str = "127.0.0.1"
    #: The control API (Connect RPC) and, on the same address, the traffic listener (`/proxy/...` only).
    port: int = 50051
    proxy_port: int = 50052
    #: The secret an unregistered (local, plain HTTP) agent requires on both listeners; created when
    #: missing. None: `{data_dir}/agent-api-token`.
    api_token_file: Path | None = None
    #: "qemu" or "firecracker".
    vmm: str = "qemu"
    qemu_binary: str = "qemu-system-x86_64"
    firecracker_binary: Path | None = None
    #: None: probe (KVM where a test guest boots under it, else TCG).
    accelerator: Accelerator | None = None
    #: Probe again even if a cached verdict exists.
    reprobe: bool = False
    #: Unprivileged user the VMM drops to after opening its devices (skipped when the user is missing).
    vmm_user: str | None = "wrenn-vmm"
    #: Prefix of every network namespace, link, nftables table and cgroup this agent creates.
    name_prefix: str = "wrn"
    slots: int = 256
    #: Address ranges of the sandboxes' host-reachable addresses and veth pairs. Two agents in one
    #: network namespace (a development machine running tests beside an agent) need disjoint ones.
    host_net: str = "10.11.0.0/16"
    veth_net: str = "10.12.0.0/16"
    #: Seconds a new VM may take until envd answers (TCG on a busy host is slow).
    boot_timeout_s: float = 180.0
    #: Memory kept for the host itself when admitting sandboxes, in MiB.
    reserved_memory_mb: int = 1024
    #: VMM overhead allowed above guest RAM in the VMM's cgroup, in MiB (TCG's translation cache).
    vmm_overhead_mb: int = 384
    default_template: str = "minimal"
    default_user: str = "user"
    dns: tuple[str, ...] = field(default=("1.1.1.1", "8.8.8.8"))
    metrics_interval_s: float = 2.0
    reaper_interval_s: float = 2.0
    #: Joining a control plane: a one-time registration token, the control plane's URL and the
    #: `ip:port` the control plane dials (named in this host's certificate). Once registered, the saved
    #: credentials are used and the token is ignored.
    register_token: str | None = None
    control_plane: str | None = None
    address: str | None = None
    heartbeat_interval_s: float = 30.0
    #: Where running guests' RAM lives (QEMU maps one file per sandbox, shared, so a pause copies it out
    #: instead of streaming it). A tmpfs: its free space caps the guest RAM this host can run.
    memory_dir: Path = Path("/dev/shm")  # noqa: S108 (files are named by prefix and sandbox id)
    #: Keep a snapshot of each sandbox shape (template, vcpus, memory, disk) taken right after its first
    #: boot, and start later sandboxes of that shape by restoring it instead of booting.
    ready_snapshots: bool = True
    #: Where hibernated sandboxes' archives go: a directory all hosts of the control plane can reach
    #: (a network file system) for a sandbox to wake on another host. None: no hibernation here.
    cold_storage: Path | None = None
    #: Where built templates' files are published: a directory all hosts reach, for a template built on
    #: one host to start on any (docs/templates.md). None: this host's cache (`{data_dir}/blobs`) alone.
    template_store: Path | None = None

    @property
    def resolved_api_token_file(self) -> Path:
        return self.api_token_file or self.data_dir / TOKEN_FILE

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"
