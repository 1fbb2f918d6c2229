"""`/metrics` in-process: Prometheus' own parser reads it, the lifecycle counters and histograms move with
the operations, the gauges follow the database, and no series names a capsule."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.security._fake_agent import FakeAgent

from ._receiver import control_plane, events_settings, owner

TOKEN = "scrape-" + "s" * 32


def scrape(api: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_the_lifecycle(database_url: str, tmp_path: Path, fake_agent: FakeAgent) -> None:
    settings = events_settings(database_url, tmp_path / "cp", fake_agent, metrics_token=TOKEN)
    with control_plane(settings) as api:
        jwt = owner(api)
        before = scrape(api)
        assert value(before, "wrenn_capsule_operations_total", operation="create", result="ok") == 0
        assert value(before, "wrenn_hosts", status="online") == 1
        assert value(before, "wrenn_host_capacity", resource="cpu_cores") == 64  # the fake agent's

        ids = [api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=jwt).json()["id"]
               for _ in range(2)]  # fmt: skip
        assert api.post(f"/v1/capsules/{ids[0]}/pause", headers=jwt).status_code == 200
        missing = api.post("/v1/capsules", json={"template": "no-such-image"}, headers=jwt)
        assert missing.status_code == 404
        api.get("/", headers={"Host": "8000-cl-nosuchcapsule.wrenn.example"})  # through the traffic proxy
        echoed = api.post("/echo", content=b"x" * 1000, headers={"Host": f"8000-{ids[1]}.wrenn.example"})
        assert echoed.status_code == 200, echoed.text  # the stand-in agent's traffic listener answers

        after = scrape(api)
        assert value(after, "wrenn_capsule_operations_total", operation="create", result="ok") == 2
        assert value(after, "wrenn_capsule_operations_total", operation="create", result="error") == 1
        assert (
            value(after, "wrenn_capsule_operation_failures_total", operation="create", reason="not_found")
            == 1
        )
        assert value(after, "wrenn_capsule_operations_total", operation="pause", result="ok") == 1
        assert value(after, "wrenn_capsule_operation_duration_seconds_count", operation="create") == 3
        assert value(after, "wrenn_capsule_operation_duration_seconds_count", operation="pause") == 1
        assert value(after, "wrenn_capsules", state="running") == 1
        assert value(after, "wrenn_capsules", state="paused") == 1
        assert value(after, "wrenn_host_reserved", resource="memory_mb") == 256  # the running one
        assert value(after, "wrenn_host_reserved", resource="slots") == 1
        assert value(after, "wrenn_proxy_requests_total", outcome="not_found") == 1
        assert value(after, "wrenn_proxy_requests_total", outcome="forwarded") == 1
        assert value(after, "wrenn_proxy_bytes_total", direction="in") == 1000
        assert value(after, "wrenn_proxy_bytes_total", direction="out") == len(echoed.content)

        assert api.delete(f"/v1/capsules/{ids[1]}", headers=jwt).status_code == 204
        last = scrape(api)
        assert value(last, "wrenn_capsule_operations_total", operation="destroy", result="ok") == 1
        assert value(last, "wrenn_capsules", state="running") == 0
        # no series is per capsule
        assert not any(capsule in str(key) for key in last for capsule in ids)


def test_metrics_registries_are_per_app(database_url: str, tmp_path: Path, fake_agent: FakeAgent) -> None:
    """Two apps in one process count apart (nothing in prometheus_client's global registry)."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent, metrics_token=TOKEN)
    with control_plane(settings) as one, control_plane(settings) as two:
        jwt = owner(one)
        one.post("/v1/capsules", json={"template": "minimal"}, headers=jwt)
        assert value(scrape(one), "wrenn_capsule_operations_total", operation="create", result="ok") == 1
        assert value(scrape(two), "wrenn_capsule_operations_total", operation="create", result="ok") == 0
        assert value(scrape(two), "wrenn_capsules", state="running") == 1  # the gauges: the shared database


DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Each family's sample names as Prometheus exposes them.
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed(text: str) -> set[str]:
    """Every metric name a query may use, from an exposition (a labelled counter or histogram that has not
    moved yet has its family's HELP and TYPE only)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in _SUFFIXES.get(family.type, ("",))
    }


def test_the_dashboard_and_alerts_use_only_metrics_we_serve(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    """docs/grafana/wrenn.json (valid JSON) and docs/wrenn-alerts.yml name only metrics that the control
    plane's or an agent's `/metrics` serves, and use most of them."""
    import asyncio

    import httpx
    import yaml
    from prometheus_client import CollectorRegistry

    from wrenn.agent._prometheus import Operations, with_metrics

    settings = events_settings(database_url, tmp_path / "cp", fake_agent, metrics_token=TOKEN)
    with control_plane(settings) as api:
        served = exposed(api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text)

    async def agent_metrics() -> str:
        registry = CollectorRegistry()
        Operations(registry)  # as the agent registers its lifecycle counters
        transport = httpx.ASGITransport(app=with_metrics(_nothing, lambda: [], slots=4, registry=registry))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
            return (await http.get("/metrics")).text

    served |= exposed(asyncio.run(agent_metrics()))
    dashboard = json.loads((DOCS / "grafana" / "wrenn.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DOCS / "wrenn-alerts.yml").read_text())
    queries += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = {name for q in queries for name in re.findall(r"\bwrenn_[a-z_]+", q)}
    assert named and named <= served, sorted(named - served)
    families = {n.removesuffix("_total").removesuffix("_bucket") for n in named}
    assert len(families) >= 12, families  # the dashboard covers the platform, not one corner of it
    scrape_config = yaml.safe_load((DOCS / "prometheus.yml").read_text())
    assert {job["job_name"] for job in scrape_config["scrape_configs"]} >= {
        "wrenn-control-plane",
        "wrenn-agent",
    }


async def _nothing(scope: dict[str, object], receive: object, send: object) -> None:
    raise AssertionError("only /metrics is asked")
