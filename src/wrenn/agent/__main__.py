"""`python -m wrenn.agent`: run the host agent."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wrenn._shared import logs

from ._agent import run
from ._config import AgentConfig, PoolShape
from .vmm import Accelerator


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    d = AgentConfig()
    p = argparse.ArgumentParser(
        prog="wrenn agent", description="Wrenn's host agent: runs the sandboxes of this host."
    )
    p.add_argument(
        "--data-dir", type=Path, default=d.data_dir, help=f"images and sandbox files (default {d.data_dir})"
    )
    p.add_argument("--host", default=d.host, help=f"address of the Connect API (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"port of the Connect API (default {d.port})")
    p.add_argument(
        "--proxy-port",
        type=int,
        default=d.proxy_port,
        help=f"port of the traffic listener, /proxy/... only (default {d.proxy_port})",
    )
    p.add_argument(
        "--api-token-file",
        type=Path,
        default=None,
        help="secret an unregistered agent requires of its callers (default DATA_DIR/agent-api-token, "
        "created 0600 when missing)",
    )
    p.add_argument("--vmm", choices=["qemu", "firecracker"], default=d.vmm)
    p.add_argument("--firecracker-binary", type=Path, default=None)
    p.add_argument(
        "--accelerator", choices=["kvm", "tcg"], default=None, help="skip the probe and use this one"
    )
    p.add_argument(
        "--reprobe", action="store_true", help="probe the accelerator again, ignoring the cached verdict"
    )
    p.add_argument("--slots", type=int, default=d.slots, help="most sandboxes at once")
    p.add_argument(
        "--name-prefix", default=d.name_prefix, help="prefix of the agent's netns, links and cgroups"
    )
    p.add_argument(
        "--host-net", default=d.host_net, help=f"sandboxes' host-reachable addresses ({d.host_net})"
    )
    p.add_argument("--veth-net", default=d.veth_net, help=f"sandboxes' veth pairs ({d.veth_net})")
    p.add_argument(
        "--dns", default=",".join(d.dns), help=f"the guests' resolvers, comma-separated ({','.join(d.dns)})"
    )
    p.add_argument(
        "--egress-upstream-ca", type=Path, default=None, metavar="PEM",
        help="CA certificates for intercepted HTTPS upstreams (default: the system's trust store)",
    )  # fmt: skip
    p.add_argument(
        "--memory-dir", type=Path, default=d.memory_dir, help=f"tmpfs for guest RAM ({d.memory_dir})"
    )
    p.add_argument(
        "--cold-storage", type=Path, default=None, metavar="DIR", help="archives of hibernated sandboxes"
    )
    p.add_argument(
        "--template-store", type=Path, default=None, metavar="DIR",
        help="built templates' files, shared by the hosts (default: this host's own, under --data-dir)",
    )  # fmt: skip
    p.add_argument("--no-ready-snapshots", action="store_true", help="always boot; never restore")
    p.add_argument(
        "--pool-memory-mb", type=int,
        default=int(os.environ.get("WRENN_AGENT_POOL_MEMORY_MB", d.pool_memory_mb)),
        help="the warm pool's memory budget, as its VMs' PSS (env WRENN_AGENT_POOL_MEMORY_MB; 0, the "
        "default: no pool)",
    )  # fmt: skip
    p.add_argument(
        "--pool", action="append", metavar="TEMPLATE[/VCPUS/MEMORY_MB/DISK_MB]=N",
        default=[x for x in os.environ.get("WRENN_AGENT_POOL", "").split(",") if x.strip()],
        help="keep at least N stopped VMs of this shape ready (repeatable; env WRENN_AGENT_POOL, "
        "comma-separated)",
    )  # fmt: skip
    p.add_argument(
        "--pool-max",
        type=int,
        default=int(os.environ.get("WRENN_AGENT_POOL_MAX", d.pool_max)),
        help=f"most VMs per shape after misses (env WRENN_AGENT_POOL_MAX; {d.pool_max})",
    )
    p.add_argument(
        "--pool-idle", type=float, default=d.pool_idle_s, metavar="SECONDS",
        help=f"a shape with no create for this long shrinks to its --pool size ({d.pool_idle_s:.0f})",
    )  # fmt: skip
    p.add_argument(
        "--disk-overcommit", type=float, metavar="RATIO",
        default=float(os.environ.get("WRENN_AGENT_DISK_OVERCOMMIT", d.disk_overcommit)),
        help="count sandboxes' disk claims at 1/RATIO when admitting (env WRENN_AGENT_DISK_OVERCOMMIT; "
        f"{d.disk_overcommit:g}: every disk can grow to its size at once)",
    )  # fmt: skip
    p.add_argument(
        "--insecure",
        action="store_true",
        help="run VMMs without their jail (own uid, own root, no capabilities, cgroup) where the host "
        "cannot build one, instead of refusing to start",
    )
    p.add_argument(
        "--memory-limit-mb",
        type=int,
        default=d.memory_limit_mb,
        help=f"the agent's own memory limit, never its VMs' (default {d.memory_limit_mb}; 0: none)",
    )
    p.add_argument(
        "--vmm-uid-base",
        type=int,
        default=None,
        help="the VMM of slot N runs as uid BASE+N (default: derived from --name-prefix)",
    )
    p.add_argument("--register", metavar="TOKEN", default=None, help="join a control plane with this token")
    p.add_argument("--control-plane", metavar="URL", default=None, help="the control plane (with --register)")
    p.add_argument(
        "--address", metavar="HOST:PORT", default=None, help="where the control plane reaches this agent"
    )
    p.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval_s, help=argparse.SUPPRESS)
    p.add_argument(
        "--metrics-interval", type=float, default=d.metrics_interval_s, metavar="SECONDS",
        help=f"sample running sandboxes' CPU, memory, disk this often; 0: never ({d.metrics_interval_s})",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    a = p.parse_args(argv)
    if a.register and not (a.control_plane and a.address):
        p.error("--register needs --control-plane URL and --address HOST:PORT")
    if a.vmm_uid_base is not None and not 0 < a.vmm_uid_base < 2**31 - a.slots - 1:
        p.error("--vmm-uid-base must leave room for a uid per slot below 2^31")
    if a.metrics_interval < 0:
        p.error("--metrics-interval must be >= 0 (0 turns the sampler off)")
    if a.proxy_port == a.port:
        p.error("--proxy-port must differ from --port: the traffic listener is kept apart from the API")
    try:
        pool_sizes = tuple(PoolShape.parse(x) for x in a.pool)
    except ValueError as exc:
        p.error(str(exc))
    if a.pool_memory_mb < 0 or a.pool_max < 0 or a.pool_idle <= 0:
        p.error("--pool-memory-mb and --pool-max are >= 0, --pool-idle > 0")
    if not 1 <= a.disk_overcommit <= 100:
        p.error("--disk-overcommit is a ratio from 1 (no overcommit) to 100")
    logs.configure(a.log_level, a.log_format)
    return AgentConfig(
        data_dir=a.data_dir, host=a.host, port=a.port, proxy_port=a.proxy_port,
        api_token_file=a.api_token_file, vmm=a.vmm, firecracker_binary=a.firecracker_binary,
        accelerator=Accelerator(a.accelerator) if a.accelerator else None, reprobe=a.reprobe,
        slots=a.slots, name_prefix=a.name_prefix, host_net=a.host_net, veth_net=a.veth_net,
        register_token=a.register, control_plane=a.control_plane, address=a.address,
        heartbeat_interval_s=a.heartbeat_interval, metrics_interval_s=a.metrics_interval,
        memory_dir=a.memory_dir, cold_storage=a.cold_storage,
        ready_snapshots=not a.no_ready_snapshots, template_store=a.template_store, insecure=a.insecure,
        memory_limit_mb=a.memory_limit_mb, pool_memory_mb=a.pool_memory_mb, pool_sizes=pool_sizes,
        pool_max=a.pool_max, pool_idle_s=a.pool_idle, disk_overcommit=a.disk_overcommit,
        vmm_uid_base=a.vmm_uid_base,
        dns=tuple(s.strip() for s in a.dns.split(",") if s.strip()), egress_upstream_ca=a.egress_upstream_ca,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
