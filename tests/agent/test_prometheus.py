"""The agent's `/metrics`: Prometheus' parser reads it, it follows the sandbox table, and it sits behind the
API token like the rest of the listener (as `_agent.py` stacks them). No VM: the table holds sandboxes as
the agent records them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from wrenn.agent._access import HEADER, RequireToken
from wrenn.agent._pool import PoolStats
from wrenn.agent._prometheus import with_metrics
from wrenn.agent._sandbox import Sandbox, SandboxParams, Status

TOKEN = "t" * 40


async def api(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Stands for the Connect API behind: it answers 204 to whatever reaches it."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def sandbox(n: int, status: Status, memory_mb: int = 512) -> Sandbox:
    params = SandboxParams(
        f"cl-{n}", "minimal", vcpus=2, memory_mb=memory_mb, disk_size_mb=1024, timeout_sec=0
    )
    return Sandbox(params, Path(f"/nonexistent/{n}"), status=status)


async def test_agent_metrics_follow_the_table_behind_the_token() -> None:
    table = {
        "a": sandbox(1, Status.RUNNING),
        "b": sandbox(2, Status.PAUSED),
        "c": sandbox(3, Status.PENDING, 256),
    }
    pool = PoolStats(hits=3, misses=1, members=2, filling=1, pss_bytes=300 << 20, budget_bytes=1 << 30)
    app = RequireToken(with_metrics(api, lambda: list(table.values()), slots=8, pool=pool), TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={HEADER.decode(): "x" * 40})).status_code == 401
        r = await client.get("/metrics", headers={HEADER.decode(): TOKEN})
        assert r.status_code == 200
        samples = {
            (s.name, tuple(s.labels.values())): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }
        assert samples[("wrenn_agent_sandboxes", ("running",))] == 1
        assert samples[("wrenn_agent_sandboxes", ("paused",))] == 1
        assert samples[("wrenn_agent_slots", ("capacity",))] == 8
        assert samples[("wrenn_agent_slots", ("used",))] == 2  # pending and running hold a slot
        assert samples[("wrenn_agent_reserved", ("memory_mb",))] == 512 + 256
        assert samples[("wrenn_agent_host_memory_bytes", ("total",))] > 0
        assert not any("cl-" in str(key) for key in samples)
        # the warm pool's (docs/pool.md), read at scrape time
        assert samples[("wrenn_agent_pool_creates_total", ("hit",))] == 3
        assert samples[("wrenn_agent_pool_creates_total", ("miss",))] == 1
        assert samples[("wrenn_agent_pool_members", ("ready",))] == 2
        assert samples[("wrenn_agent_pool_memory_bytes", ("pss",))] == 300 << 20
        pool.hits += 1
        table["a"].status = Status.STOPPED
        again = (await client.get("/metrics", headers={HEADER.decode(): TOKEN})).text
        assert 'wrenn_agent_sandboxes{state="running"} 0.0' in again
        assert 'wrenn_agent_pool_creates_total{result="hit"} 4.0' in again
        # everything else still goes to the API
        assert (await client.post("/hostagent.v1.HostAgentService/ListSandboxes",
                                  headers={HEADER.decode(): TOKEN})).status_code == 204  # fmt: skip


async def test_lifecycle_operations_are_counted_and_timed() -> None:
    """`Operations` on the agent's registry: successes and failures by operation, failures by their error
    code, and a latency histogram, served by the same /metrics."""
    from prometheus_client import CollectorRegistry

    from wrenn.agent._errors import SandboxError
    from wrenn.agent._prometheus import Operations

    registry = CollectorRegistry()
    ops = Operations(registry)

    async def ok() -> str:
        return "done"

    async def fails() -> None:
        raise SandboxError("not_found", "no sandbox cl-x")

    assert await ops.timed("create", ok()) == "done"
    assert await ops.timed("pause", ok()) == "done"
    try:
        await ops.timed("pause", fails())
    except SandboxError:
        pass
    else:
        raise AssertionError("the failure was swallowed")
    app = with_metrics(api, lambda: [], slots=4, registry=registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("wrenn_agent_operations_total", (("operation", "create"), ("result", "ok")))] == 1
    assert samples[("wrenn_agent_operations_total", (("operation", "pause"), ("result", "error")))] == 1
    assert (
        samples[("wrenn_agent_operation_failures_total", (("operation", "pause"), ("reason", "not_found")))]
        == 1
    )
    assert samples[("wrenn_agent_operation_duration_seconds_count", (("operation", "pause"),))] == 2
    assert ("wrenn_agent_slots", (("kind", "capacity"),)) in samples  # the table's gauges beside them
