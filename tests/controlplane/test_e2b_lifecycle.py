"""E2B's lifecycle, list, log and metric behaviours through the whole platform (control plane, traffic
proxy, host agent, real VMs), each driven by the unmodified `e2b` SDK as a program written for E2B does:

- a paused sandbox is not running (`is_running()`, envd's health through the proxy), and traffic wakes
  it only when it was created with auto-resume;
- `on_timeout` pauses or kills at the deadline, and a shortened timeout takes effect within a second;
- lists filter by state, metadata, start time and template, in either order, in pages that stay complete
  while sandboxes change; snapshot lists filter by sandbox and name, and page;
- logs are the sandbox's own (its console: envd's lines for every process started and ended), paged;
  metrics are kept over a pause and a kill and served for the paused and killed sandbox, one by one and in
  a batch.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.api import ApiClient
from e2b.api.client.api.sandboxes import (
    get_sandboxes_metrics,
    get_sandboxes_sandbox_id_logs,
    get_v_2_sandboxes_sandbox_id_logs,
)
from e2b.api.client.models import LogsDirection
from e2b.connection_config import ConnectionConfig

from tests.conftest import CONTROL_PLANE_DIRS

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]


@pytest.fixture(scope="module")
def opts(wrenn_server: tuple[str, str]) -> dict[str, Any]:
    base_url, api_key = wrenn_server
    return {"api_key": api_key, "api_url": base_url, "sandbox_url": base_url}


@pytest.fixture(scope="module")
def api(opts: dict[str, Any]) -> Iterator[Any]:
    """E2B's own generated API client, for the routes its SDK exposes no method for (logs, batch metrics)."""
    config = ConnectionConfig(
        api_key=opts["api_key"], api_url=opts["api_url"], sandbox_url=opts["sandbox_url"]
    )
    with ApiClient(config) as client:
        yield client


def _wait(what: str, probe: Any, timeout: float = 60, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, what
        time.sleep(every)
    return value


def test_a_paused_sandbox_is_not_running_and_wakes_only_with_auto_resume(opts: dict[str, Any]) -> None:
    plain = Sandbox.create(**opts)
    eager = Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True}, **opts)
    try:
        assert plain.get_info().lifecycle == {"on_timeout": "kill", "auto_resume": False}
        assert eager.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
        for sandbox in (plain, eager):
            sandbox.files.write("/home/user/kept.txt", "kept")
            assert sandbox.pause() is True
        assert plain.is_running() is False  # E2B's paused answer: its health probe says "not running"
        assert Sandbox.get_info(plain.sandbox_id, **opts).state == SandboxState.PAUSED  # and it stays paused
        assert eager.is_running() is True  # traffic woke it
        assert Sandbox.get_info(eager.sandbox_id, **opts).state == SandboxState.RUNNING
        again = Sandbox.connect(plain.sandbox_id, **opts)  # an explicit resume always works
        assert again.is_running() and again.files.read("/home/user/kept.txt") == "kept"
    finally:
        plain.kill()
        eager.kill()


def _late_seconds(base_url: str, sandbox_id: str) -> float:
    """How long after its deadline the control plane acted on the sandbox (its log's `late_s`, written once
    the pause or destroy has ended: a client can see the new state a moment before)."""
    found: list[str] = []
    for _ in range(300):
        log = (CONTROL_PLANE_DIRS[base_url] / "server.log").read_text()
        found = re.findall(rf"capsule timed out .*capsule={sandbox_id}.* late_s=([0-9.]+)", log)
        found = found or re.findall(rf"capsule timed out .*late_s=([0-9.]+).*capsule={sandbox_id}", log)
        if found:
            break
        time.sleep(0.1)
    assert found, f"no timeout of {sandbox_id} in the log"
    return float(found[-1])


def test_on_timeout_pauses_or_kills_within_a_second(opts: dict[str, Any]) -> None:
    doomed = Sandbox.create(timeout=300, **opts)
    sleeper = Sandbox.create(timeout=300, lifecycle={"on_timeout": "pause"}, **opts)
    sleeper.files.write("/home/user/state.txt", "survives")
    for sandbox in (doomed, sleeper):
        sandbox.set_timeout(2)  # shortened from 300 s
    set_at = time.monotonic()

    def gone() -> bool:
        return doomed.sandbox_id not in [s.sandbox_id for s in Sandbox.list(**opts).next_items()]

    _wait("the killed sandbox is gone", gone, timeout=10, every=0.1)
    assert time.monotonic() - set_at < 2 + 1.5
    _wait(
        "the sandbox paused at its deadline",
        lambda: Sandbox.get_info(sleeper.sandbox_id, **opts).state == SandboxState.PAUSED,
        timeout=60,
    )
    assert _late_seconds(opts["api_url"], doomed.sandbox_id) < 1.0
    assert _late_seconds(opts["api_url"], sleeper.sandbox_id) < 1.0
    woken = Sandbox.connect(sleeper.sandbox_id, timeout=60, **opts)
    assert woken.files.read("/home/user/state.txt") == "survives"
    woken.kill()


def test_lists_filter_order_and_page(opts: dict[str, Any]) -> None:
    tag = f"list-{os.getpid()}"
    made = [Sandbox.create(metadata={"suite": tag, "n": str(i)}, **opts) for i in range(3)]
    try:
        made[1].pause()
        ids = [s.sandbox_id for s in made]
        query = SandboxQuery(metadata={"suite": tag})

        def everything(order: str, **extra: Any) -> list[str]:
            """Page by page, one sandbox a page; one of them is paused or resumed between two pages."""
            paginator = Sandbox.list(
                query=SandboxQuery(metadata={"suite": tag}, **extra), limit=1, order=order, **opts
            )
            seen = []
            while paginator.has_next:
                seen += [s.sandbox_id for s in paginator.next_items()]
                if len(seen) == 1:
                    made[2].pause() if order == "asc" else Sandbox.connect(made[2].sandbox_id, **opts)
            return seen

        assert everything("asc") == ids
        assert everything("desc") == ids[::-1]
        running = Sandbox.list(
            query=SandboxQuery(metadata={"suite": tag}, state=[SandboxState.RUNNING]), **opts
        )
        assert [s.sandbox_id for s in running.next_items()] == [ids[0], ids[2]]
        after = datetime.now(UTC) - timedelta(hours=1)
        recent = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, started_after=after), **opts)
        assert len(recent.next_items()) == 3
        future = Sandbox.list(
            query=SandboxQuery(metadata={"suite": tag}, started_after=datetime.now(UTC)), **opts
        )
        assert future.next_items() == []
        by_template = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, template="base"), **opts)
        assert len(by_template.next_items()) == 3
        none = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, template="no-such-template"), **opts)
        assert none.next_items() == []
        assert query.metadata  # the filter alone sees only these
    finally:
        for sandbox in made:
            sandbox.kill()


def test_snapshot_lists_filter_and_page(opts: dict[str, Any]) -> None:
    sandbox = Sandbox.create(**opts)
    other = Sandbox.create(**opts)
    try:
        names = [sandbox.create_snapshot(name=f"snap-{os.getpid()}-{i}").snapshot_id for i in range(3)]
        other.create_snapshot(name=f"other-{os.getpid()}")
        pages = Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id, limit=2, **opts)
        seen = []
        while pages.has_next:
            seen.append([s.snapshot_id for s in pages.next_items()])
        assert seen == [names[:2], names[2:]]
        assert [s.snapshot_id for s in sandbox.list_snapshots(**opts).next_items()] == names
        named = Sandbox.list_snapshots(name=f"team/{names[1]}:default", **opts).next_items()
        assert [s.snapshot_id for s in named] == [names[1]]
        for name in (*names, f"other-{os.getpid()}"):
            assert Sandbox.delete_snapshot(name, **opts)
    finally:
        sandbox.kill()
        other.kill()


def test_logs_are_the_sandboxes_own_and_paged(opts: dict[str, Any], api: Any) -> None:
    sandbox = Sandbox.create(**opts)
    try:
        sandbox.commands.run("echo logged")
        found = _wait(
            "envd's line for the command",
            lambda: [
                e
                for e in get_v_2_sandboxes_sandbox_id_logs.sync(sandbox.sandbox_id, client=api).logs
                if "process started" in e.message
            ],
            timeout=20,
        )
        entry = found[-1]
        assert entry.level.value == "info" and entry.timestamp.tzinfo is not None
        everything = get_v_2_sandboxes_sandbox_id_logs.sync(sandbox.sandbox_id, client=api, limit=10000).logs
        assert {e.fields["source"] for e in everything} <= {"envd", "kernel", "console"}
        cursor = int(everything[1].timestamp.timestamp() * 1000)
        forward = get_v_2_sandboxes_sandbox_id_logs.sync(
            sandbox.sandbox_id, client=api, cursor=cursor, limit=2
        ).logs
        assert len(forward) == 2 and all(int(e.timestamp.timestamp() * 1000) >= cursor for e in forward)
        newest = get_v_2_sandboxes_sandbox_id_logs.sync(
            sandbox.sandbox_id, client=api, limit=3, direction=LogsDirection.BACKWARD
        ).logs
        assert [e.message for e in newest] == [e.message for e in everything[-3:][::-1]]
        v1 = get_sandboxes_sandbox_id_logs.sync(sandbox.sandbox_id, client=api, limit=5)
        assert len(v1.logs) == len(v1.log_entries) == 5 and v1.logs[0].line == everything[0].message
    finally:
        sandbox.kill()


def test_metrics_are_kept_over_a_pause(opts: dict[str, Any], api: Any) -> None:
    sandbox = Sandbox.create(**opts)
    try:
        running = _wait("samples", lambda: sandbox.get_metrics(), timeout=30)
        sandbox.pause()
        kept = Sandbox.get_metrics(sandbox.sandbox_id, **opts)
        assert (
            kept and kept[0].timestamp == running[0].timestamp and kept[-1].timestamp >= running[-1].timestamp
        )
        batch = get_sandboxes_metrics.sync(client=api, sandbox_ids=[sandbox.sandbox_id, "cl-nosuchsandbox"])
        latest = batch.sandboxes[sandbox.sandbox_id]
        assert list(batch.sandboxes) == [sandbox.sandbox_id] and latest["timestampUnix"] == int(
            kept[-1].timestamp.timestamp()
        )
        again = Sandbox.connect(sandbox.sandbox_id, **opts)
        after = _wait("new samples", lambda: len(again.get_metrics()) > len(kept), timeout=30)
        assert after and again.get_metrics()[0].timestamp == kept[0].timestamp  # the kept window comes first
        newest = again.get_metrics()[-1].timestamp
        assert again.kill()
        killed = Sandbox.get_metrics(sandbox.sandbox_id, **opts)  # copied before the kill: served after it
        assert killed[0].timestamp == kept[0].timestamp and killed[-1].timestamp >= newest
    finally:
        sandbox.kill()
