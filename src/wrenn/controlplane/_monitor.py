"""The host monitor: liveness of hosts and reconciliation of the database with what each agent runs.

Every `monitor_interval_s` (and once at start):

1. **Silent hosts.** A registered host without a heartbeat for `host_timeout_s` becomes `unreachable`;
   the `running`/`starting` capsules of unreachable hosts become `missing`.
2. **Local agents** (`--local-agent URL`) send no heartbeats: the monitor calls `GetHostInfo` instead and
   marks them `online` or `unreachable` (capsules `missing`) by the answer.
3. **Reconciliation** of every online host against its agent's `ListSandboxes`:
   `missing` and alive -> `running`; `running`/`missing` and absent -> `stopped`; the agent says `ERROR` or
   `STOPPED` -> `error`/`stopped` with its reason. Capsules changed after the list was taken are left for
   the next round (a capsule that just finished booting is not mistaken for a vanished one).
4. **Interrupted operations.** `pending` and `starting` capsules that no control plane has in flight any
   more (`_inflight.InFlight`: a control plane died during their create, resume or thaw) are settled the
   same way: alive on the host -> `running` (adopted), still booting -> left for a later round, `paused`
   -> `paused`, gone -> `error` for a create, `hibernated` for a wake (its archive is still in the cold
   storage); a `hibernated` capsule its host runs (a thaw that ended after its control plane) is adopted.
   Sandboxes on the agent that no capsule wants (no row, or one that ended `error`/`stopped`) are
   destroyed, so no VM outlives its capsule.

No state is kept in memory between rounds. Several control planes on one PostgreSQL database share the
work without fighting: step 1 locks the rows it changes (`FOR UPDATE SKIP LOCKED`), and each host of
steps 2 and 3 is handled under a transaction-scoped advisory lock taken with `pg_try_advisory_xact_lock`,
so a host another control plane is checking is skipped. SQLite (one control plane) takes no locks.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from connectrpc.errors import ConnectError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from . import _audit
from ._background import Background, lock_key
from ._hosts import apply_host_info
from ._inflight import InFlight
from .db import Capsule, Host, states, utcnow
from .db import CapsuleStatus as S
from .db import HostStatus as H
from .service import events
from .service.capsules import booted
from .service.network import resend_secrets

log = logging.getLogger("wrenn.controlplane.monitor")
_CONCURRENCY = 8


#: Who events the monitor records name as their actor.
_MONITOR = ("system", "host-monitor", "host monitor")
#: The event a capsule's reconciled status is told as (a host that lost a VM destroyed it).
_EVENT_OF = {
    S.RUNNING: events.CAPSULE_RUNNING,
    S.PAUSED: events.CAPSULE_PAUSED,
    S.ERROR: events.CAPSULE_ERROR,
    S.STOPPED: events.CAPSULE_DESTROYED,
}


def _lock_key(host_id: str) -> int:
    return lock_key("host", host_id)


class HostMonitor(Background):
    task_name = "wrenn-host-monitor"
    round_name = "host monitor round"

    def interval_s(self) -> float:
        return self._settings.monitor_interval_s

    async def tick(self) -> None:
        """One round: silent hosts, local agents, then reconciliation of every online host."""
        await self.mark_silent()
        async with self._sessions() as session:
            hosts = (
                await session.execute(
                    select(Host.id, Host.address, Host.local).where(
                        Host.address != "", (Host.local.is_(True)) | (Host.status == H.ONLINE)
                    )
                )
            ).all()
        limit = asyncio.Semaphore(_CONCURRENCY)

        async def one(host_id: str, address: str, local: bool) -> None:
            async with limit:
                try:
                    await self._check(host_id, address, local)
                except Exception:  # one host's trouble does not stop the others
                    log.exception("host check failed", extra={"host": host_id})

        await asyncio.gather(*(one(h, a, loc) for h, a, loc in hosts))

    async def mark_silent(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self._settings.host_timeout_s)
        async with self._sessions() as session:
            silent = (
                (
                    await session.execute(
                        select(Host)
                        .where(
                            Host.local.is_(False),
                            Host.status == H.ONLINE,
                            Host.last_heartbeat_at.is_not(None),
                            Host.last_heartbeat_at < cutoff,
                        )
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for host in silent:
                host.status = H.UNREACHABLE
                log.warning("host unreachable: no heartbeat", extra={"host": host.id})
                _system_audit(session, host, "host", host.id, "unreachable")
                events.host_changed(session, host, up=False, actor=_MONITOR)
            await _mark_missing(session)
            await session.commit()

    async def _check(self, host_id: str, address: str, local: bool) -> None:
        async with self._sessions() as lock:
            if self._postgres and not await lock.scalar(
                select(func.pg_try_advisory_xact_lock(_lock_key(host_id)))
            ):
                return  # another control plane is on it
            try:
                if local and not await self._ping_local(host_id, address):
                    return
                await self._reconcile(host_id, address)
                await self._hibernate(host_id, address)
            finally:
                await lock.rollback()  # releases the advisory lock

    async def _ping_local(self, host_id: str, address: str) -> bool:
        timeout_ms = int(self._settings.agent_probe_timeout_s * 1000)
        try:
            info = await self._agents.client(address, host_id=host_id).get_host_info(
                pb.GetHostInfoRequest(), timeout_ms=timeout_ms
            )
        except (ConnectError, OSError) as exc:
            error: str | None = str(exc)
        else:
            error = None
        async with self._sessions() as session:
            host = await session.get(Host, host_id)
            if host is None:
                return False
            if error is not None:
                if host.status != H.UNREACHABLE:
                    log.warning("local agent unreachable", extra={"host": host_id, "error": error})
                    host.status = H.UNREACHABLE
                    _system_audit(session, host, "host", host.id, "unreachable")
                    events.host_changed(session, host, up=False, actor=_MONITOR)
                await _mark_missing(session, host_id)
                await session.commit()
                return False
            back = host.status != H.ONLINE
            if back:
                log.info("local agent back online", extra={"host": host_id, "was": host.status})
            host.status, host.last_heartbeat_at = H.ONLINE, utcnow()
            if back:
                events.host_changed(session, host, up=True, actor=_MONITOR)
            apply_host_info(host, info)
            await session.commit()
            return True

    async def _hibernate(self, host_id: str, address: str) -> None:
        """Move the host's capsules paused for longer than `hibernate_after_s` to cold storage."""
        after = self._settings.hibernate_after_s
        if after <= 0:
            return
        cutoff = utcnow() - timedelta(seconds=after)
        async with self._sessions() as session:
            due = (
                (
                    await session.execute(
                        select(Capsule)
                        .where(
                            Capsule.host_id == host_id,
                            Capsule.status == S.PAUSED,
                            Capsule.paused_at.is_not(None),
                            Capsule.paused_at < cutoff,
                        )
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            ids = [c.id for c in due]
            for capsule in due:
                capsule.status = S.HIBERNATING  # the reconciler leaves it alone meanwhile
            await session.commit()
        for capsule_id in ids:
            try:
                done = await self._agents.client(address, host_id=host_id).hibernate_sandbox(
                    pb.HibernateSandboxRequest(sandbox_id=capsule_id), timeout_ms=900_000
                )
            except (ConnectError, OSError) as exc:
                log.warning("cannot hibernate", extra={"capsule": capsule_id, "error": str(exc)})
                await _set_status(self._sessions, capsule_id, S.HIBERNATING, S.PAUSED)
                continue
            if await _set_status(self._sessions, capsule_id, S.HIBERNATING, S.HIBERNATED):
                log.info(
                    "capsule hibernated", extra={"capsule": capsule_id, "archive_bytes": done.archive_bytes}
                )

    async def _reconcile(self, host_id: str, address: str) -> None:
        listed_at = utcnow()
        timeout_ms = int(self._settings.agent_probe_timeout_s * 1000)
        try:
            listed = await self._agents.client(address, host_id=host_id).list_sandboxes(
                pb.ListSandboxesRequest(), timeout_ms=timeout_ms
            )
        except (ConnectError, OSError) as exc:
            # Liveness is the heartbeat's business: a failing call only postpones reconciliation.
            log.warning("cannot list the host's sandboxes", extra={"host": host_id, "error": str(exc)})
            return
        _, strays = await reconcile(
            self._sessions, host_id, listed.sandboxes, listed_at, self._agents.inflight
        )
        await resend_secrets(self._sessions, self._agents, host_id, address, listed.sandboxes)
        for sandbox_id in strays:
            await self._destroy_stray(host_id, address, sandbox_id)

    async def _destroy_stray(self, host_id: str, address: str, sandbox_id: str) -> None:
        """Destroy a sandbox no capsule wants: left by a create whose capsule ended first, or unknown."""
        log.warning("destroying a sandbox no capsule wants", extra={"host": host_id, "capsule": sandbox_id})
        try:
            await self._agents.client(address, host_id=host_id).destroy_sandbox(
                pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout_ms=60_000
            )
        except (ConnectError, OSError) as exc:  # tried again next round
            log.warning("cannot destroy a stray sandbox", extra={"capsule": sandbox_id, "error": str(exc)})


async def _set_status(sessions: Callable[[], Any], capsule_id: str, expected: str, status: str) -> bool:
    async with sessions() as session:
        capsule = await session.get(Capsule, capsule_id)
        if capsule is None or capsule.status != expected:
            return False
        capsule.status = status
        if status == S.PAUSED:
            capsule.paused_at = utcnow()  # try again after another full period
        await session.commit()
        return True


async def reconcile(
    sessions: Callable[[], Any], host_id: str, sandboxes: Any, listed_at: datetime, inflight: InFlight
) -> tuple[dict[str, int], list[str]]:
    """Apply one agent's list to the database: how many capsules moved to each status, and the sandboxes
    on the agent that no capsule wants any more (no row, or one that ended), to destroy."""
    on_agent: dict[str, pb.SandboxInfo] = {s.sandbox_id: s for s in sandboxes}
    moved: dict[str, int] = {}
    async with sessions() as session:
        host = await session.get(Host, host_id)
        if host is None or host.status != H.ONLINE:
            return moved, []
        capsules = (
            (
                await session.execute(
                    select(Capsule)
                    .where(
                        Capsule.host_id == host_id,
                        Capsule.status.in_(_RECONCILED)
                        | ((Capsule.status == S.HIBERNATED) & Capsule.id.in_(list(on_agent))),
                        Capsule.last_updated < listed_at,
                    )
                    .with_for_update(skip_locked=True)
                )
            )
            .scalars()
            .all()
        )
        unsettled = [c.id for c in capsules if c.status in _IN_FLIGHT]
        idle = await inflight.idle(session, unsettled) if unsettled else set()
        for capsule in capsules:
            if capsule.status in _IN_FLIGHT and capsule.id not in idle:
                continue  # its create or resume is under way in some control plane, which settles it
            was = capsule.status
            _apply(capsule, on_agent.get(capsule.id))
            if capsule.status != was:
                moved[capsule.status] = moved.get(capsule.status, 0) + 1
                log.info(
                    "capsule reconciled",
                    extra={"capsule": capsule.id, "host": host_id, "was": was, "now": capsule.status},
                )
                _system_audit(
                    session, host, "capsule", capsule.id, "reconcile", was=was, now=capsule.status,
                    team_id=capsule.team_id,
                )  # fmt: skip
                kind = _EVENT_OF.get(capsule.status) if was != S.HIBERNATING else None  # still asleep
                if kind:
                    events.record(
                        session, kind, team_id=capsule.team_id, resource_type="capsule",
                        resource_id=capsule.id, actor=_MONITOR, was=was, reason=capsule.error,
                    )  # fmt: skip
        await session.flush()
        # Only sandboxes named as control planes name capsules: an agent may hold others (an operator's,
        # a test's, made through its own API), which are no business of this database.
        holding = [i for i, info in on_agent.items() if info.status in _HOLDING and _CAPSULE_ID.match(i)]
        wanted = set(
            (
                await session.execute(
                    select(Capsule.id).where(Capsule.id.in_(holding), Capsule.status.not_in(states.ENDED))
                )
            ).scalars()
        )
        await session.commit()
    return moved, [i for i in holding if i not in wanted]


#: What the monitor reconciles with the host's list (and hibernated capsules the host has: see `_apply`).
_RECONCILED = (S.RUNNING, S.MISSING, S.PAUSED, S.HIBERNATING, S.PENDING, S.STARTING)
#: Set by a create or resume in flight: reconciled only once no control plane has it in flight.
_IN_FLIGHT = (S.PENDING, S.STARTING)
#: A capsule's id (`_ids.new_id("cl")`).
_CAPSULE_ID = re.compile(r"^cl-[0-9a-z]+$")
#: The agent statuses that hold a VM or its snapshot on the host.
_HOLDING = (pb.SandboxStatus.PENDING, pb.SandboxStatus.RUNNING, pb.SandboxStatus.PAUSED)


def _apply(capsule: Capsule, info: pb.SandboxInfo | None) -> None:
    """Move one capsule to what its host says of it (`None`: the host does not have it)."""
    was = capsule.status
    if was == S.HIBERNATING:
        # Left so by a control plane that stopped mid-way (a live hibernation holds this host's turn,
        # which this round has): gone from the host means archived, still there means not.
        capsule.status = S.HIBERNATED if info is None else S.PAUSED
    elif info is None:
        if was == S.PENDING:
            capsule.status = S.ERROR
            capsule.error = "its create was interrupted: the control plane creating it stopped first"
        elif was == S.STARTING:
            # A thaw that never reached the host: the archive is still in the cold storage.
            capsule.status = S.HIBERNATED
        else:
            capsule.status = S.STOPPED
            capsule.error = capsule.error or "gone from its host"
    elif was == S.HIBERNATED and info.status not in (pb.SandboxStatus.RUNNING, pb.SandboxStatus.PAUSED):
        return  # a thaw the host has not finished (or that failed): the archive is still there
    elif info.status == pb.SandboxStatus.PENDING:
        return  # still booting on its host: settled at a later round
    elif info.status == pb.SandboxStatus.RUNNING:
        if was == S.PENDING:  # booted after its control plane stopped: adopted
            booted(capsule, info)
        capsule.status, capsule.host_ip, capsule.paused_at = S.RUNNING, info.host_ip, None
    elif info.status == pb.SandboxStatus.PAUSED:  # the host's idle timeout paused it
        capsule.status, capsule.host_ip = S.PAUSED, ""
        if capsule.paused_at is None or was != S.PAUSED:
            capsule.paused_at = utcnow()
    elif info.status == pb.SandboxStatus.ERROR:
        capsule.status, capsule.error = S.ERROR, (info.error or "failed on its host")[:4000]
    elif info.status == pb.SandboxStatus.STOPPED:
        capsule.status, capsule.error = S.STOPPED, info.error[:4000]


async def _mark_missing(session: AsyncSession, host_id: str | None = None) -> None:
    """Live capsules of unreachable hosts (or of `host_id`) become `missing`."""
    unreachable = select(Host.id).where(Host.status == H.UNREACHABLE)
    if host_id is not None:
        unreachable = unreachable.where(Host.id == host_id)
    await session.execute(
        update(Capsule)
        .where(Capsule.status.in_(states.LIVE), Capsule.host_id.in_(unreachable))
        .values(status=S.MISSING, last_updated=utcnow())
        .execution_options(synchronize_session=False)
    )


def _system_audit(
    session: AsyncSession,
    host: Host,
    resource_type: str,
    resource_id: str,
    action: str,
    team_id: str | None = None,
    **metadata: Any,
) -> None:
    _audit.record(
        session,
        team_id=team_id if team_id is not None else host.team_id,
        actor_type="system",
        actor_id="host-monitor",
        actor_name="host monitor",
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        **metadata,
    )
