"""The control plane's Prometheus metrics (`GET /metrics`, behind the scrape token): one registry per app,
never the process-wide default, so two apps in one process (the tests) count apart.

Counters and histograms move as things happen (`operation`, `proxied`, `delivered`); the gauges of
what exists (capsules by state, hosts, pending events) are read from the shared database at scrape
time, so every control plane on one database reports the same platform-wide numbers. No label names a
capsule: the number of series does not grow with the number of capsules.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ._errors import ApiError
from .db import Capsule, CapsuleStatus, Delivery, Event, Host, HostStatus, TemplateBuild, states

_UNFINISHED_BUILDS = ("waiting", "building")
#: Seconds: a restore takes ~0.5 s under TCG, a cold boot ~8 s, a hibernated thaw longer.
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


def failure_reason(exc: BaseException) -> str:
    """A bounded label for why an operation failed: the API error's code, else the exception's class."""
    return exc.code if isinstance(exc, ApiError) else type(exc).__name__


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.operations = Counter(
            "wrenn_capsule_operations", "Capsule lifecycle operations by outcome (ok, error).",
            ["operation", "result"], registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "wrenn_capsule_operation_failures", "Failed capsule lifecycle operations by reason (error code).",
            ["operation", "reason"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "wrenn_capsule_operation_duration_seconds", "How long capsule lifecycle operations took.",
            ["operation"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.proxy_requests = Counter(
            "wrenn_proxy_requests", "Requests through the traffic proxy by outcome (forwarded, or why not).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.proxy_bytes = Counter(
            "wrenn_proxy_bytes", "Body bytes through the traffic proxy: to capsules (in), from them (out).",
            ["direction"], registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            "wrenn_channel_deliveries", "Attempts to deliver an event to a channel by result.",
            ["provider", "result"], registry=r,
        )  # fmt: skip
        self.capsules = Gauge("wrenn_capsules", "Capsules by state (ended ones not counted).", ["state"],
                              registry=r)  # fmt: skip
        self.hosts = Gauge("wrenn_hosts", "Hosts by status.", ["status"], registry=r)
        self.host_capacity = Gauge(
            "wrenn_host_capacity", "Online hosts' capacity, summed: cpu_cores, memory_mb, slots.",
            ["resource"], registry=r,
        )  # fmt: skip
        self.host_reserved = Gauge(
            "wrenn_host_reserved", "What capsules holding a slot reserve on hosts: vcpus, memory_mb, slots.",
            ["resource"], registry=r,
        )  # fmt: skip
        self.events_pending = Gauge(
            "wrenn_events_undispatched", "Events recorded but not yet fanned out to channels.", registry=r
        )
        self.builds = Gauge(
            "wrenn_template_builds", "Template builds not finished: waiting (the queue) and building.",
            ["status"], registry=r,
        )  # fmt: skip
        self.deliveries_pending = Gauge(
            "wrenn_channel_deliveries_pending", "Deliveries not yet made (waiting or retrying).", registry=r
        )

    @contextlib.contextmanager
    def operation(self, name: str) -> Iterator[None]:
        """Count and time one capsule operation; a raised error counts as a failure, by reason."""
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            self.operations.labels(name, "error").inc()
            self.failures.labels(name, failure_reason(exc)).inc()
            raise
        else:
            self.operations.labels(name, "ok").inc()
        finally:
            self.latency.labels(name).observe(time.monotonic() - started)

    async def refresh(self, session: AsyncSession) -> None:
        """Set the gauges from the database."""
        counts = dict(
            (await session.execute(select(Capsule.status, func.count()).group_by(Capsule.status))).all()
        )
        for state in CapsuleStatus:
            if state not in states.ENDED:
                self.capsules.labels(str(state)).set(counts.get(state, 0))
        by_status = dict(
            (await session.execute(select(Host.status, func.count()).group_by(Host.status))).all()
        )
        for status in HostStatus:
            self.hosts.labels(str(status)).set(by_status.get(status, 0))
        cores, memory, slots = (
            await session.execute(
                select(
                    func.coalesce(func.sum(Host.cpu_cores), 0),
                    func.coalesce(func.sum(Host.memory_mb), 0),
                    func.coalesce(func.sum(Host.slot_capacity), 0),
                ).where(Host.status == HostStatus.ONLINE)
            )
        ).one()
        for name, value in (("cpu_cores", cores), ("memory_mb", memory), ("slots", slots)):
            self.host_capacity.labels(name).set(value)
        vcpus, used_memory, used = (
            await session.execute(
                select(
                    func.coalesce(func.sum(Capsule.vcpus), 0),
                    func.coalesce(func.sum(Capsule.memory_mb), 0),
                    func.count(),
                ).where(Capsule.status.in_(states.LOADED))
            )
        ).one()
        for name, value in (("vcpus", vcpus), ("memory_mb", used_memory), ("slots", used)):
            self.host_reserved.labels(name).set(value)
        self.events_pending.set(
            await session.scalar(select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None)))
            or 0
        )
        self.deliveries_pending.set(
            await session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == "pending")
            )
            or 0
        )

        builds = dict(
            (
                await session.execute(
                    select(TemplateBuild.status, func.count())
                    .where(TemplateBuild.status.in_(_UNFINISHED_BUILDS))
                    .group_by(TemplateBuild.status)
                )
            ).all()
        )
        for build_status in _UNFINISHED_BUILDS:
            self.builds.labels(build_status).set(builds.get(build_status, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
