"""Hosts known at start: agents registered from the command line (`--local-agent URL`)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from connectrpc.errors import ConnectError
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._agents import AgentPool
from .db import Host, HostStatus, utcnow
from .service import events

log = logging.getLogger("wrenn.controlplane.hosts")


def images_of(info: pb.GetHostInfoResponse) -> list[dict[str, Any]]:
    """The base images an agent reports, as `Host.images` keeps them."""
    return [
        {
            "name": i.name,
            "version": i.version,
            "envd_version": i.envd_version,
            "kernel_version": i.kernel_version,
            "description": i.description,
            "aliases": list(i.aliases),
            "memory_mb": i.memory_mb,
        }
        for i in info.images
    ]


def apply_host_info(host: Host, info: pb.GetHostInfoResponse) -> None:
    """What `GetHostInfo` says of a host that may change while it runs."""
    host.slot_capacity, host.proxy_port, host.images = info.slot_capacity, info.proxy_port, images_of(info)
    host.disk_free_mb = info.disk_available_mb if info.disk_total_mb else None  # 0 total: not known
    host.cpu_load = info.load_1m


def local_host_id(address: str) -> str:
    return "host-local-" + hashlib.sha256(address.encode()).hexdigest()[:12]


async def register_local(session: AsyncSession, agents: AgentPool, address: str) -> Host:
    """Upsert the host behind `address` with what its agent reports; `unreachable` if it does not answer."""
    host = await session.get(Host, local_host_id(address))
    if host is None:
        host = Host(id=local_host_id(address), address=address, type="regular", local=True)
        session.add(host)
    host.local = True
    try:
        info = await agents.client(address, host_id=host.id).get_host_info(
            pb.GetHostInfoRequest(), timeout_ms=10_000
        )
    except (ConnectError, OSError) as exc:
        if host.status == HostStatus.ONLINE:
            events.host_changed(session, host, up=False)
        host.status = HostStatus.UNREACHABLE
        log.warning("local agent unreachable", extra={"address": address, "error": str(exc)})
    else:
        if host.status != HostStatus.ONLINE:
            host.status = HostStatus.ONLINE
            events.host_changed(session, host, up=True)
        host.last_heartbeat_at = utcnow()
        host.arch, host.cpu_cores = info.arch, info.cpu_count
        host.memory_mb, host.disk_gb = info.memory_total_mb, info.disk_total_mb // 1024
        apply_host_info(host, info)
        host.accelerator = "kvm" if info.accelerator == pb.Accelerator.KVM else "tcg"
        log.info(
            "local agent registered",
            extra={"host": host.id, "address": address, "accelerator": host.accelerator},
        )
    await session.commit()
    return host
