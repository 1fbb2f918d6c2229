"""`GET /metrics` on the agent's API listener: Prometheus' text format, from a registry of the agent's own
(never the process-wide default). It sits behind what guards that listener (the API token of a local
agent, mutual TLS of a registered one), so it is no more open than the API.

What it reports is read from the sandbox table at scrape time: sandboxes by status, slots and the vCPUs
and memory reserved, against the host's capacity. No label names a sandbox."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wrenn._shared.asgiproxy import ASGIApp, Receive, Scope, Send

from ._pool import PoolStats
from ._sandbox import Sandbox, Status

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


def with_metrics(
    app: ASGIApp, sandboxes: Callable[[], Iterable[Sandbox]], slots: int, pool: PoolStats | None = None
) -> ASGIApp:
    """`app` with `/metrics` on it, over a registry of its own."""
    registry = CollectorRegistry()
    registry.register(SandboxCollector(sandboxes, slots))
    if pool is not None:
        registry.register(PoolCollector(pool))
    return MetricsEndpoint(app, registry)
