"""A capsule as the `/v1` API shows it (the seed's shape), shared by the routes that answer with one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ._time import Timestamp
from .db import Capsule
from .db import CapsuleStatus as S


class CapsuleOut(BaseModel):
    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    guest_ip: str
    host_ip: str
    created_at: Timestamp
    started_at: Timestamp | None
    last_active_at: Timestamp | None
    last_updated: Timestamp
    metadata: dict[str, Any]
    traffic_access_token: str | None = None


def capsule_out(c: Capsule) -> CapsuleOut:
    return CapsuleOut(
        id=c.id,
        status=S.PAUSED if c.status == S.HIBERNATING else c.status,  # the seed's statuses: on its way to cold
        template=c.template,
        vcpus=c.vcpus,
        memory_mb=c.memory_mb,
        timeout_sec=c.timeout_sec,
        guest_ip="169.254.0.21" if c.host_ip else "",
        host_ip="",  # the seed's field, kept for its SDK; where a capsule runs is not the team's business
        created_at=c.created_at,
        started_at=c.started_at,
        last_active_at=c.last_active_at,
        last_updated=c.last_updated,
        metadata=c.metadata_,
        traffic_access_token=c.traffic_access_token,
    )
