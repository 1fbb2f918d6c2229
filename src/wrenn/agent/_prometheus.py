"""`GET /metrics` on the agent's API listener: Prometheus' text format, from a registry of the agent's own
(never the process-wide default). It sits behind what guards that listener (the API token of a local
agent, mutual TLS of a registered one), so it is no more open than the API.

What it reports: read from the sandbox table at scrape time, sandboxes by status, slots and the vCPUs and
memory reserved, against the host's capacity; counted as they happen (`Operations`), the lifecycle
operations by outcome and failure reason, with their latency. No label names a sandbox."""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wrenn._shared.asgiproxy import ASGIApp, Receive, Scope, Send

from ._pool import PoolStats
from ._registration import LinkState
from ._sandbox import Sandbox, Status

_T = TypeVar("_T")
#: Seconds: a restore takes ~0.5 s under TCG, a cold boot ~8 s, a hibernated thaw longer.
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
#: Statuses that hold a slot, vCPUs and memory.
_HOLDING = (Status.PENDING, Status.RUNNING)


class SandboxCollector(Collector):
    def __init__(self, sandboxes: Callable[[], Iterable[Sandbox]], slots: int) -> None:
        self._sandboxes = sandboxes
        self._slots = slots

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = list(self._sandboxes())
        by_status = collections.Counter(s.status for s in found)
        states = GaugeMetricFamily(
            "wrenn_agent_sandboxes", "Sandboxes on this host by status.", labels=["state"]
        )
        for status in Status:
            states.add_metric([status.value], by_status.get(status, 0))
        yield states
        holding = [s for s in found if s.status in _HOLDING]
        slots = GaugeMetricFamily("wrenn_agent_slots", "Sandbox slots: capacity and used.", labels=["kind"])
        slots.add_metric(["capacity"], self._slots)
        slots.add_metric(["used"], len(holding))
        yield slots
        reserved = GaugeMetricFamily(
            "wrenn_agent_reserved", "What pending and running sandboxes reserve: vcpus, memory_mb.",
            labels=["resource"],
        )  # fmt: skip
        reserved.add_metric(["vcpus"], sum(s.params.vcpus for s in holding))
        reserved.add_metric(["memory_mb"], sum(s.params.memory_mb for s in holding))
        yield reserved
        memory = psutil.virtual_memory()
        host = GaugeMetricFamily("wrenn_agent_host_memory_bytes", "The host's memory.", labels=["kind"])
        host.add_metric(["total"], memory.total)
        host.add_metric(["available"], memory.available)
        yield host


class PoolCollector(Collector):
    """The warm pool (`_pool`): creates that took a member or found none, members and their memory."""

    def __init__(self, stats: PoolStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats
        claims = CounterMetricFamily(
            "wrenn_agent_pool_creates", "Creates that could start from the warm pool: took a member (hit) "
            "or restored without one (miss).", labels=["result"],
        )  # fmt: skip
        claims.add_metric(["hit"], stats.hits)
        claims.add_metric(["miss"], stats.misses)
        yield claims
        members = GaugeMetricFamily("wrenn_agent_pool_members", "Warm-pool VMs by state.", labels=["state"])
        members.add_metric(["ready"], stats.members)
        members.add_metric(["filling"], stats.filling)
        yield members
        memory = GaugeMetricFamily(
            "wrenn_agent_pool_memory_bytes", "The warm pool's members' PSS, and its budget.", labels=["kind"]
        )
        memory.add_metric(["pss"], stats.pss_bytes)
        memory.add_metric(["budget"], stats.budget_bytes)
        yield memory


class LinkCollector(Collector):
    """A registered agent's link to its control plane (`_registration.LinkState`)."""

    def __init__(self, state: LinkState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "wrenn_agent_control_plane_connected",
            "1 while the control plane answers heartbeats; 0 after 3 failed in a row (sandboxes run on).",
            value=1 if self._state.connected else 0,
        )


class MetricsEndpoint:
    """ASGI middleware: `GET /metrics` answered from `registry`; everything else goes to `app`."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = generate_latest(self.registry)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


class Operations:
    """Lifecycle operations (create, pause, resume, destroy, ...) counted and timed as they happen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.done = Counter(
            "wrenn_agent_operations", "Sandbox lifecycle operations by outcome (ok, error).",
            ["operation", "result"], registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "wrenn_agent_operation_failures", "Failed sandbox lifecycle operations by reason (error code).",
            ["operation", "reason"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "wrenn_agent_operation_duration_seconds", "How long sandbox lifecycle operations took.",
            ["operation"], buckets=_BUCKETS, registry=registry,
        )  # fmt: skip

    async def timed(self, name: str, awaitable: Awaitable[_T]) -> _T:
        started = time.monotonic()
        try:
            result = await awaitable
        except BaseException as exc:
            self.done.labels(name, "error").inc()
            self.failures.labels(name, _reason(exc)).inc()
            raise
        finally:
            self.latency.labels(name).observe(time.monotonic() - started)
        self.done.labels(name, "ok").inc()
        return result


def _reason(exc: BaseException) -> str:
    """A bounded label: the error's code (a SandboxError's, a ConnectError's), else its class."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code.isidentifier():
        return code[:40]
    return str(getattr(code, "name", "") or type(exc).__name__).lower()[:40]


def with_metrics(
    app: ASGIApp,
    sandboxes: Callable[[], Iterable[Sandbox]],
    slots: int,
    registry: CollectorRegistry | None = None,
    pool: PoolStats | None = None,
    link: LinkState | None = None,
) -> ASGIApp:
    """`app` with `/metrics` on it, over `registry` (the agent's own: `Operations` counts into it), the
    warm pool's state when there is one, and the link to the control plane when registered."""
    registry = registry or CollectorRegistry()
    registry.register(SandboxCollector(sandboxes, slots))
    if pool is not None:
        registry.register(PoolCollector(pool))
    if link is not None:
        registry.register(LinkCollector(link))
    return MetricsEndpoint(app, registry)
