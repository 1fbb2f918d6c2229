"""A capsule end to end: REST API -> control plane -> a real host agent -> a real VM (TCG here); and what
the platform tells about capsules of two sizes with real VMs (webhooks, stats, usage, metrics history,
/metrics)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.agent._agent import AgentProcess, running_agent
from tests.conftest import bootstrap_admin
from wrenn.controlplane import Settings, create_app

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]
PREFIX = f"wc{os.getpid() % 1000:03d}p"
METRICS_TOKEN = "scrape-" + "e" * 32


@pytest.fixture(scope="module")
def agent(image: object) -> Iterator[AgentProcess]:
    with running_agent(PREFIX) as process:
        yield process


@pytest.fixture(scope="module")
def api(agent: AgentProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("cp")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{root / 'wrenn.db'}",
        data_dir=root,
        local_agents=(agent.url,),
        local_agent_token_file=agent.token_file,
        # observability: webhooks to the test's receiver on loopback, retried fast; team samples taken by
        # the test itself (at instants it knows); /metrics behind a token
        webhook_allow_networks=("127.0.0.2/32",), events_interval_s=0.2, webhook_retry_s=(0.3,),
        stats_interval_s=3600, metrics_token=METRICS_TOKEN,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def teams(api: TestClient) -> dict[str, dict[str, str]]:
    out = {}
    for name in ("ada", "bob"):
        account = api.post(
            "/v1/auth/signup", json={"email": f"{name}@example.com", "password": "correct horse"}
        ).json()
        key = api.post(
            "/v1/api-keys", json={"name": "k"}, headers={"Authorization": f"Bearer {account['token']}"}
        )
        out[name] = {"X-API-Key": key.json()["key"]}
    return out


def test_a_capsule_end_to_end(api: TestClient, teams: dict[str, dict[str, str]], agent: AgentProcess) -> None:
    ada, bob = teams["ada"], teams["bob"]
    created = api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=ada)
    assert created.status_code == 201, created.text
    capsule = created.json()
    cid = capsule["id"]
    assert cid.startswith("cl-") and capsule["status"] == "running" and capsule["host_ip"] == ""  # not told
    assert [c["id"] for c in api.get("/v1/capsules", headers=ada).json()] == [cid]
    assert api.get("/v1/capsules", headers=bob).json() == []

    run = api.post(f"/v1/capsules/{cid}/exec", headers=ada, json={
        "cmd": "/bin/sh", "args": ["-c", 'python3 -c "print(6*7)"; pwd; echo "$X"; echo err >&2; exit 3'],
        "envs": {"X": "from-envs"}, "cwd": "/tmp",
    })  # fmt: skip
    assert run.status_code == 200, run.text
    body = run.json()
    assert (body["stdout"], body["stderr"], body["exit_code"], body["encoding"]) == (
        "42\n/tmp\nfrom-envs\n", "err\n", 3, "utf-8")  # fmt: skip
    binary = api.post(
        f"/v1/capsules/{cid}/exec", headers=ada, json={"cmd": "/bin/sh", "args": ["-c", "printf '\\377'"]}
    )
    assert binary.json()["encoding"] == "base64" and binary.json()["stdout"] == "/w=="

    for other in (f"/v1/capsules/{cid}", f"/v1/capsules/{cid}/processes"):  # bob cannot see or touch it
        assert api.get(other, headers=bob).status_code == 404
    assert api.post(f"/v1/capsules/{cid}/exec", headers=bob, json={"cmd": "true"}).status_code == 404
    assert api.delete(f"/v1/capsules/{cid}", headers=bob).status_code == 404

    wrote = api.post(f"/v1/capsules/{cid}/files/write", headers=ada, data={"path": "/home/user/a/b.txt"},
                     files={"file": ("b.txt", b"hello")})  # fmt: skip
    assert wrote.status_code == 204, wrote.text
    assert (
        api.post(f"/v1/capsules/{cid}/files/read", headers=ada, json={"path": "/home/user/a/b.txt"}).content
        == b"hello"
    )
    streamed = api.post(
        f"/v1/capsules/{cid}/files/stream/read", headers=ada, json={"path": "/home/user/a/b.txt"}
    )
    assert streamed.content == b"hello"
    listed = api.post(
        f"/v1/capsules/{cid}/files/list", headers=ada, json={"path": "/home/user", "depth": 2}
    ).json()
    assert {e["path"] for e in listed["entries"]} >= {"/home/user/a", "/home/user/a/b.txt"}
    entry = next(e for e in listed["entries"] if e["path"] == "/home/user/a/b.txt")
    assert entry["type"] == "file" and entry["size"] == 5 and entry["owner"] == "user"
    made = api.post(f"/v1/capsules/{cid}/files/mkdir", headers=ada, json={"path": "/home/user/new"})
    assert made.json()["entry"]["type"] == "directory"
    assert (
        api.post(f"/v1/capsules/{cid}/files/remove", headers=ada, json={"path": "/home/user/a"}).status_code
        == 204
    )
    missing = api.post(f"/v1/capsules/{cid}/files/read", headers=ada, json={"path": "/home/user/a/b.txt"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    bg = api.post(
        f"/v1/capsules/{cid}/exec",
        headers=ada,
        json={"cmd": "sleep", "args": ["600"], "background": True, "tag": "nap"},
    )
    assert bg.status_code == 202 and bg.json()["tag"] == "nap"
    procs = api.get(f"/v1/capsules/{cid}/processes", headers=ada).json()["processes"]
    assert any(p["tag"] == "nap" and p["cmd"] == "sleep" for p in procs)
    assert api.delete(f"/v1/capsules/{cid}/processes/nap", headers=ada).status_code == 204
    assert api.post(f"/v1/capsules/{cid}/ping", headers=ada).status_code == 204
    assert api.get(f"/v1/capsules/{cid}/metrics?range=5m", headers=ada).json()["sandbox_id"] == cid

    assert api.delete(f"/v1/capsules/{cid}", headers=ada).status_code == 204
    assert api.get(f"/v1/capsules/{cid}", headers=ada).json()["status"] == "stopped"
    assert api.get("/v1/capsules", headers=ada).json() == []
    assert api.delete(f"/v1/capsules/{cid}", headers=ada).status_code == 204  # twice is harmless
    again = api.post(f"/v1/capsules/{cid}/exec", headers=ada, json={"cmd": "true"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_a_drained_host_pauses_its_capsule_for_real(
    api: TestClient, teams: dict[str, dict[str, str]]
) -> None:
    """Drain and cordon with a real VM: the drain pauses it on its host through the pause path (a memory
    snapshot), the cordoned host takes no new capsule nor resumes it, and after `uncordon` it resumes
    with its files."""
    ada = teams["ada"]
    admin = bootstrap_admin(api.post, api.app.state.settings.data_dir, "root@example.com").json()  # type: ignore[attr-defined]
    as_admin = {"Authorization": f"Bearer {admin['token']}"}
    [host] = api.get("/v1/hosts", headers=as_admin).json()
    cid = api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=ada).json()["id"]
    wrote = api.post(f"/v1/capsules/{cid}/files/write", headers=ada, data={"path": "/home/user/kept.txt"},
                     files={"file": ("kept.txt", b"kept over the drain")})  # fmt: skip
    assert wrote.status_code == 204, wrote.text

    drained = api.post(f"/v1/hosts/{host['id']}/drain", json={"deadline_s": 120}, headers=as_admin)
    assert drained.status_code == 200, drained.text
    assert drained.json()["paused"] == [cid] and drained.json()["not_paused"] == {}
    assert api.get(f"/v1/capsules/{cid}", headers=ada).json()["status"] == "paused"
    refused = api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=ada)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_hosts_available"
    assert api.post(f"/v1/capsules/{cid}/resume", headers=ada).json()["error"]["code"] == "host_cordoned"

    assert api.post(f"/v1/hosts/{host['id']}/uncordon", headers=as_admin).status_code == 200
    assert api.post(f"/v1/capsules/{cid}/resume", headers=ada).status_code == 200
    read = api.post(f"/v1/capsules/{cid}/files/read", headers=ada, json={"path": "/home/user/kept.txt"})
    assert read.content == b"kept over the drain"
    assert api.delete(f"/v1/capsules/{cid}", headers=ada).status_code == 204


def test_what_the_platform_tells_about_capsules_of_two_sizes(api: TestClient, agent: AgentProcess) -> None:
    """Real VMs: one create's X-Request-Id is in the answer, the agent's log and envd's (the guest console);
    a webhook receiver gets signed created/paused/destroyed events (a 500 answered once is retried); the
    team's stats and today's usage match a sample worked out by hand; the metrics of a paused and a
    destroyed capsule are still served; /metrics parses and its counters moved by what was done."""
    import json
    import time
    from datetime import UTC, datetime

    from prometheus_client.parser import text_string_to_metric_families
    from sqlalchemy.ext.asyncio import AsyncSession

    from tests.controlplane._db import run
    from tests.controlplane._receiver import receiver
    from wrenn.controlplane.service import usage

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert r.status_code == 200, r.text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(r.text) for s in f.samples}  # fmt: skip

    def moved(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    token = api.post("/v1/auth/signup", json={"email": "cyd@example.com", "password": "correct horse"}).json()
    jwt = {"Authorization": f"Bearer {token['token']}"}
    with receiver() as hook:
        wanted = ["capsule.created", "capsule.paused", "capsule.destroyed"]
        channel = api.post("/v1/channels", json={"name": "hook", "provider": "webhook",
                                                 "config": {"url": hook.url}, "events": wanted}, headers=jwt)  # fmt: skip
        assert channel.status_code == 201, channel.text
        secret = channel.json()["secret"]
        hook.answers.append(500)
        before = scrape()
        request_id = f"req-e2e-{os.getpid()}"  # one create's id: in the answer, the agent's log and envd's
        small = api.post(
            "/v1/capsules",
            json={"template": "minimal", "vcpus": 1, "memory_mb": 256},
            headers=jwt | {"X-Request-Id": request_id},
        )
        assert small.headers["x-request-id"] == request_id
        large = api.post(
            "/v1/capsules", json={"template": "minimal", "vcpus": 2, "memory_mb": 512}, headers=jwt
        )
        assert small.status_code == 201 and large.status_code == 201, (small.text, large.text)
        ids = small.json()["id"], large.json()["id"]

        at = int(time.time()) // 10 * 10

        async def sample(session: AsyncSession) -> None:
            await usage.sample_teams(session, 10, now=at)

        run(api, sample)
        stats = api.get("/v1/capsules/stats", params={"range": "5m"}, headers=jwt).json()
        # by hand: 1 + 2 vCPUs, 256 + 512 MB; one 10 s sample is 3 * 10 / 60 CPU-minutes, 768 * 10 / 60 MB-minutes
        assert {k: v for k, v in stats["current"].items() if k != "sampled_at"} == {
            "running_count": 2, "vcpus_reserved": 3, "memory_mb_reserved": 768,
        }, stats  # fmt: skip
        assert stats["peaks"] == {"running_count": 2, "vcpus": 3, "memory_mb": 768}
        today = datetime.fromtimestamp(at, UTC).date().isoformat()
        used = api.get("/v1/capsules/usage", params={"from": today, "to": today}, headers=jwt).json()
        point = next(p for p in used["points"] if p["date"] == today)
        assert abs(point["cpu_minutes"] - 0.5) < 1e-6 and abs(point["ram_mb_minutes"] - 128.0) < 1e-6, used

        agent_lines = [line for line in agent.log.read_text().splitlines() if request_id in line]
        assert any("sandbox created" in line for line in agent_lines), agent_lines
        console = api.get(f"/v1/capsules/{ids[0]}/logs", headers=jwt).json()["logs"]
        envd_lines = [e["message"] for e in console if request_id in e["message"]]
        assert any("initialised" in line for line in envd_lines), [e["message"] for e in console][-30:]

        time.sleep(2.5)  # the agent samples every second: a few samples before the pause copies them
        assert api.post(f"/v1/capsules/{ids[0]}/pause", headers=jwt).status_code == 200
        for cid in ids[::-1]:
            assert api.delete(f"/v1/capsules/{cid}", headers=jwt).status_code == 204
        for cid in ids:  # paused then destroyed, destroyed while running: the history is served
            points = api.get(f"/v1/capsules/{cid}/metrics", params={"range": "10m"}, headers=jwt).json()[
                "points"
            ]
            assert points and all(p["mem_bytes"] > 0 for p in points), (cid, points)

        def done(got: list[Any]) -> bool:
            return sorted(json.loads(r.body)["event"] for r in got if r.answered == 200) == sorted(
                ["capsule.created"] * 2 + ["capsule.paused"] + ["capsule.destroyed"] * 2
            )

        got = hook.wait(done, timeout=30)
        assert all(r.verified(secret) for r in got) and not got[0].verified(secret + "x")
        first = got[0].headers["x-wrenn-delivery"]
        assert [r.answered for r in got if r.headers["x-wrenn-delivery"] == first] == [500, 200]
        assert {json.loads(r.body)["resource"]["id"] for r in got} == set(ids)

    deadline = time.monotonic() + 10  # a delivery is counted once its answer is back: just after the receiver
    while (
        moved(before, after := scrape(), "wrenn_channel_deliveries_total", provider="webhook", result="ok")
        < 5
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert moved(before, after, "wrenn_capsule_operations_total", operation="create", result="ok") == 2
    assert moved(before, after, "wrenn_capsule_operations_total", operation="pause", result="ok") == 1
    assert moved(before, after, "wrenn_capsule_operations_total", operation="destroy", result="ok") == 2
    assert moved(before, after, "wrenn_capsule_operation_duration_seconds_count", operation="create") == 2
    assert moved(before, after, "wrenn_channel_deliveries_total", provider="webhook", result="error") == 1
    assert moved(before, after, "wrenn_channel_deliveries_total", provider="webhook", result="ok") == 5


# Last in the module: it kills the agent.
def test_a_capsule_whose_agent_is_gone_says_so(
    api: TestClient, teams: dict[str, dict[str, str]], agent: AgentProcess
) -> None:
    ada = teams["ada"]
    cid = api.post("/v1/capsules", json={"memory_mb": 256}, headers=ada).json()["id"]
    agent.stop(signal.SIGKILL)  # the VM keeps running; its agent does not answer
    r = api.post(f"/v1/capsules/{cid}/exec", headers=ada, json={"cmd": "true"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable", r.text
