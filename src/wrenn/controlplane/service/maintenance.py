"""Taking a host out of service for maintenance: cordon (no new capsules), uncordon, and drain (cordon,
then pause its running capsules through the ordinary pause path, one after another, until a deadline).

A drain never cuts a pause short: a pause under way at the deadline finishes (its agent call has its own
bound), so a drain may end up to one pause after its deadline; the capsules not reached by then, or whose
pause failed, are reported with the reason and stay as they were (running)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from .. import _audit, _errors
from .._principal import Principal, audit_fields
from ..db import Capsule, Host
from ..db import CapsuleStatus as S
from .capsules import CapsuleService

log = logging.getLogger("wrenn.controlplane.maintenance")


@dataclass
class DrainReport:
    host_id: str
    paused: list[str] = field(default_factory=list)
    #: {capsule id: why it was not paused}
    not_paused: dict[str, str] = field(default_factory=dict)


async def set_cordoned(service: CapsuleService, caller: Principal, host: Host, cordoned: bool) -> Host:
    """Cordon or uncordon the host (committed, audited)."""
    host.cordoned = cordoned
    _audit.record(
        service.session,
        **audit_fields(caller),
        resource_type="host",
        resource_id=host.id,
        action="cordon" if cordoned else "uncordon",
    )
    await service.session.commit()
    log.info("host cordoned" if cordoned else "host uncordoned", extra={"host": host.id})
    return host


async def drain(service: CapsuleService, caller: Principal, host: Host, deadline_s: float) -> DrainReport:
    """Cordon the host and pause its running capsules until `deadline_s` from now; what was and was not
    paused. Capsules still booting (`pending`, `starting`) or unreachable (`missing`) are reported, not
    waited for."""
    start = time.monotonic()
    host_id = host.id
    await set_cordoned(service, caller, host, True)
    session = service.session
    found = await session.execute(
        select(Capsule.id, Capsule.status)
        .where(Capsule.host_id == host_id, Capsule.status.in_((S.PENDING, S.STARTING, S.RUNNING, S.MISSING)))
        .order_by(Capsule.id)
    )
    report = DrainReport(host_id)
    for capsule_id, status in found.all():
        if status != S.RUNNING:
            report.not_paused[capsule_id] = f"{status}: not running"
            continue
        if time.monotonic() - start >= deadline_s:
            report.not_paused[capsule_id] = "deadline: not reached before it"
            continue
        capsule = await session.get(Capsule, capsule_id)
        if capsule is None or capsule.status != S.RUNNING:  # destroyed or paused meanwhile
            continue
        try:
            await service.pause(capsule, caller)
        except _errors.ApiError as exc:
            await session.rollback()
            report.not_paused[capsule_id] = f"{exc.code}: {exc.message}"
        else:
            report.paused.append(capsule_id)
    await _record(service, caller, host_id, "drain", report.paused, report.not_paused)
    return report


@dataclass
class ResumeReport:
    host_id: str
    resumed: list[str] = field(default_factory=list)
    #: {capsule id: why it was not resumed}
    not_resumed: dict[str, str] = field(default_factory=dict)


async def resume(
    service: CapsuleService, caller: Principal, host: Host, capsule_ids: list[str]
) -> ResumeReport:
    """Resume the given paused capsules of the host, whatever their team (the undoing of a drain, e.g. at a
    node's start after `wrenn down --pause`): each through the ordinary resume path. A capsule that is not
    on this host, or not `paused`, is reported and left as it is."""
    report = ResumeReport(host.id)
    session = service.session
    for capsule_id in dict.fromkeys(capsule_ids):
        capsule = await session.get(Capsule, capsule_id)
        if capsule is None or capsule.host_id != host.id:
            report.not_resumed[capsule_id] = "not_found: no such capsule on this host"
            continue
        if capsule.status != S.PAUSED:
            report.not_resumed[capsule_id] = f"{capsule.status}: not paused"
            continue
        try:
            await service.resume(capsule, caller)
        except _errors.ApiError as exc:
            await session.rollback()
            report.not_resumed[capsule_id] = f"{exc.code}: {exc.message}"
        else:
            report.resumed.append(capsule_id)
    await _record(service, caller, host.id, "resume", report.resumed, report.not_resumed)
    return report


async def _record(
    service: CapsuleService,
    caller: Principal,
    host_id: str,
    action: str,
    done: list[str],
    missed: dict[str, str],
) -> None:
    """Audit and log a drain or resume of a host's capsules (done; missed, with why), and commit."""
    names = {"drain": ("paused", "not_paused"), "resume": ("resumed", "not_resumed")}[action]
    counts: dict[str, Any] = dict(zip(names, (len(done), len(missed)), strict=True))
    _audit.record(
        service.session,
        **audit_fields(caller),
        resource_type="host",
        resource_id=host_id,
        action=action,
        status="warning" if missed else "success",
        **counts,
    )
    await service.session.commit()
    log.info(f"host {action}: done", extra={"host": host_id, **counts})
