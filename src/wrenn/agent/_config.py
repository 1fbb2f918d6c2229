"""The host agent's settings."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wrenn.proto.hostagent.v1.auth import TOKEN_FILE

from .vmm import Accelerator


@dataclass(frozen=True, slots=True, order=True)
class PoolShape:
    """What a warm-pool member is interchangeable by: the template (a base image or a snapshot template's
    id) and the machine's shape. The image version is the pool's to check (a rebuilt image's ready
    snapshot is another pool)."""

    template: str
    vcpus: int = 1
    memory_mb: int = 512
    disk_size_mb: int = 5120

    @classmethod
    def parse(cls, text: str) -> tuple[PoolShape, int]:
        """`TEMPLATE[/VCPUS/MEMORY_MB/DISK_MB]=N` (the shape a create without one gets: 1/512/5120)."""
        spec, sep, count = text.strip().partition("=")
        parts = spec.split("/")
        if not sep or not count.strip().isdigit() or len(parts) not in (1, 4) or not parts[0]:
            raise ValueError(f"a pool is TEMPLATE[/VCPUS/MEMORY_MB/DISK_MB]=N, not {text[:80]!r}")
        if not all(x.isdigit() for x in parts[1:]):
            raise ValueError(f"a pool's vcpus, memory and disk are numbers: {text[:80]!r}")
        return cls(parts[0], *(int(x) for x in parts[1:])), int(count)


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
    #: Run VMMs without their jail (own uid, own root, no capabilities) when the host cannot build one.
    #: Off by default: an agent that cannot jail its VMMs refuses to start.
    insecure: bool = False
    #: The VMM of slot n runs as uid and gid `vmm_uid_base + n` (no user of the host has those). None: a
    #: base derived from `name_prefix`, so that two agents on one host never share a uid.
    vmm_uid_base: int | None = None
    #: Disk I/O each VMM may do on the data directory's device, per direction (where the host's cgroups
    #: can throttle it).
    vmm_io_bytes_per_s: int = 256 << 20
    vmm_io_iops: int = 10_000
    #: The agent's own memory limit in MiB (its cgroup; its VMs have theirs). 0: none.
    memory_limit_mb: int = 2048
    #: Disk space kept free for the host when admitting sandboxes, in MiB (beyond what every sandbox on
    #: this host may still grow to).
    reserved_disk_mb: int = 2048
    #: How far the data directory's disk claims are overcommitted (_admission.py): 1, the default,
    #: guarantees that every sandbox's disk can grow to its size at once.
    disk_overcommit: float = 1.0
    #: The most a foreground exec returns of each of stdout and stderr (the rest is read and dropped, and
    #: the response says it was truncated), and of all foreground execs at once.
    exec_output_limit: int = 4 << 20
    exec_output_budget: int = 256 << 20
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
    #: Resolvers the guests use (their kernel command line) and the egress proxy resolves allowed
    #: domains with.
    dns: tuple[str, ...] = field(default=("1.1.1.1", "8.8.8.8"))
    #: CA certificates (PEM) the egress proxy verifies intercepted HTTPS upstreams against; None: the
    #: system's trust store.
    egress_upstream_ca: Path | None = None
    #: Seconds between samples of each running sandbox's CPU, memory and disk (`_metrics.py`); 0 turns the
    #: sampler off (no history: `bench/sampler_bench.py` measures what it costs).
    metrics_interval_s: float = 1.0
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
    #: The warm pool (docs/pool.md): stopped VMs restored ahead of demand, per sandbox shape. Its memory
    #: budget in MiB, measured as the members' PSS (0: no pool); the least members kept per shape
    #: (`PoolShape`: template, vcpus, memory, disk); the most one shape grows to after misses; the idle
    #: seconds (no create of a shape) after which a shape shrinks back to its least; fills at once.
    pool_memory_mb: int = 0
    pool_sizes: tuple[tuple[PoolShape, int], ...] = ()
    pool_max: int = 4
    pool_idle_s: float = 300.0
    pool_fills: int = 2

    @property
    def resolved_api_token_file(self) -> Path:
        return self.api_token_file or self.data_dir / TOKEN_FILE

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def jail_dir(self) -> Path:
        """An empty directory each VMM's root is mounted on, inside the VMM's own mount namespace."""
        return self.data_dir / "jail"

    def vmm_uid(self, slot: int) -> int:
        """The uid (and gid) of the VMM in `slot` (slot 0: the start-up check's)."""
        base = self.vmm_uid_base
        if base is None:
            base = VMM_UID_FLOOR + (zlib.crc32(self.name_prefix.encode()) % 1024) * VMM_UIDS_PER_AGENT
        return base + slot


#: VMM uids are taken from [VMM_UID_FLOOR, VMM_UID_FLOOR + 1024 * VMM_UIDS_PER_AGENT): far above any
#: user or subordinate-id range a distribution hands out, below 2^31.
VMM_UID_FLOOR = 1_000_000_000
VMM_UIDS_PER_AGENT = 65536
