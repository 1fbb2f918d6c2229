"""Two hosts behind one control plane, for real: two host agents on this machine, each in its own network
namespace, registered through the token flow and reached over mutual TLS, with a control plane process on
PostgreSQL. Capsules spread 2/2; a host killed with -9 has its capsules `missing`; started again, it adopts
its VMs, heartbeats, and the reconciler brings them back to `running`. A capsule paused long enough
hibernates into the hosts' shared cold storage and, its host gone, wakes on the other one.

The agents run under `nsenter --net` (not `ip netns exec`): they keep the machine's mount namespace, so
the sandbox namespaces they create under /run/netns and the cgroup tree stay visible to a restarted agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._netns import veth_netns
from tests.conftest import bootstrap_admin
from tests.controlplane.conftest import _free_port, _reset_postgres

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, VMs)")]
TAG = f"wh{os.getpid() % 100000}"
SHARED = Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))
AGENT_PORT = 50051


@dataclass
class Node:
    name: str  # "a" | "b"
    netns: str
    outside_ip: str  # the root namespace's end of the veth: how the agent reaches the control plane
    inside_ip: str  # the agent's address
    data_dir: Path
    prefix: str
    nets: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)


def _make_node(name: str, index: int, root: Path) -> Node:
    netns = f"{TAG}-{name}"
    outside, inside = f"10.250.0.{4 * index + 1}", f"10.250.0.{4 * index + 2}"
    # Not named after the agent's prefix: the agent drops input from links carrying its prefix.
    host_if, ns_if = f"v{TAG}{name}0", f"v{TAG}{name}1"
    veth_netns(netns, host_if, f"{outside}/30", ns_if, f"{inside}/30")
    data_dir = root / name
    data_dir.mkdir()
    (data_dir / "images").symlink_to(SHARED / "images")
    if (SHARED / "accelerator.json").exists():  # skip the probe: same machine, same verdict
        shutil.copy(SHARED / "accelerator.json", data_dir / "accelerator.json")
    n = 60 + 2 * index
    return Node(
        name, netns, outside, inside, data_dir, f"{TAG}{name}", [f"10.{n}.0.0/16", f"10.{n + 1}.0.0/16"]
    )


def _start_agent(node: Node, cp_port: int, token: str) -> None:
    node.log = node.data_dir.parent / f"agent-{node.name}.log"
    with node.log.open("ab") as sink:
        node.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{node.netns}", "--", sys.executable, "-m", "wrenn.agent",
             "--data-dir", str(node.data_dir), "--host", "0.0.0.0", "--port", str(AGENT_PORT),
             "--name-prefix", node.prefix, "--slots", "4", "--host-net", node.nets[0], "--veth-net", node.nets[1],
             "--cold-storage", str(node.data_dir.parent / "cold"),
             "--template-store", str(node.data_dir.parent / "store"),
             "--register", token, "--control-plane", f"http://{node.outside_ip}:{cp_port}",
             "--address", f"{node.inside_ip}:{AGENT_PORT}", "--heartbeat-interval", "1"],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _wait(what: str, check: Callable[[], Any], timeout: float, logs: list[Path] = ()) -> Any:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = check()
            if last:
                return last
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tails}")


def _host_of(database_url: str) -> dict[str, str]:
    """capsule id -> host id, straight from the database."""
    from sqlalchemy import select

    from wrenn.controlplane.db import Capsule, make_engine

    async def read() -> dict[str, str]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Capsule.id, Capsule.host_id))).all()
        await engine.dispose()
        return {cid: host for cid, host in rows}

    return asyncio.run(read())


@pytest.fixture
def platform(image: object, postgres_url: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    _reset_postgres(postgres_url)
    root = Path(tempfile.mkdtemp(prefix=f"wrenn-{TAG}-"))
    nodes: list[Node] = []
    cp: subprocess.Popen[bytes] | None = None
    cp_log = root / "cp.log"
    try:
        for i, name in enumerate(("a", "b")):
            nodes.append(_make_node(name, i, root))
        cp_port = _free_port()
        env = {
            **os.environ, "WRENN_MONITOR_INTERVAL_S": "1", "WRENN_HOST_TIMEOUT_S": "5",
            "WRENN_HIBERNATE_AFTER_S": "3", "WRENN_TEMPLATE_GC_GRACE_S": "0",
        }  # fmt: skip
        with cp_log.open("ab") as sink:
            cp = subprocess.Popen(
                [sys.executable, "-m", "wrenn.controlplane", "--host", "0.0.0.0", "--port", str(cp_port),
                 "--database-url", postgres_url, "--data-dir", str(root / "cp")],
                stdout=sink, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        base = f"http://127.0.0.1:{cp_port}"
        _wait(
            "the control plane",
            lambda: httpx.get(f"{base}/health", timeout=2).status_code == 200,
            60,
            [cp_log],
        )
        yield {
            "base": base,
            "cp_port": cp_port,
            "nodes": nodes,
            "database_url": postgres_url,
            "cp_dir": root / "cp",
            "cp_log": cp_log,
        }
    finally:
        for node in nodes:  # normally already gone (Terminate); never leave an agent or its VMs behind
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(30)
            for pid in _vmm_pids(node.data_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if cp is not None:
            cp.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                cp.wait(30)
        for node in nodes:
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"v{TAG}{node.name}0"], capture_output=True)
        if request.session.testsfailed:  # keep the logs for a post-mortem
            keep = Path(tempfile.gettempdir()) / f"wrenn-{TAG}-logs"
            keep.mkdir(exist_ok=True)
            for log in root.glob("*.log"):
                shutil.copy(log, keep / log.name)
        shutil.rmtree(root, ignore_errors=True)


def _vmm_pids(data_dir: Path) -> list[int]:
    """VMM processes whose command line names this data dir (leftovers after a failure)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if str(data_dir).encode() in cmdline and b"qemu" in cmdline:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Joined:
    user: dict[str, str]
    key: dict[str, str]
    host_ids: dict[str, str]
    logs: list[Path]


def _join(platform: dict[str, Any]) -> Joined:
    """The admin, an API key, and both hosts registered and online."""
    base, nodes = platform["base"], platform["nodes"]
    logs = [platform["cp_log"], *(n.data_dir.parent / f"agent-{n.name}.log" for n in nodes)]
    admin = bootstrap_admin(httpx.post, platform["cp_dir"], "root@example.com", base=base)
    user = {"Authorization": f"Bearer {admin.json()['token']}"}
    key = {"X-API-Key": httpx.post(f"{base}/v1/api-keys", json={"name": "k"}, headers=user).json()["key"]}
    host_ids: dict[str, str] = {}
    for node in nodes:
        created = httpx.post(f"{base}/v1/hosts", json={"type": "regular"}, headers=user).json()
        host_ids[node.name] = created["host"]["id"]
        _start_agent(node, platform["cp_port"], created["registration_token"])

    def all_online() -> bool:
        listed = {h["id"]: h for h in httpx.get(f"{base}/v1/hosts", headers=user, timeout=10).json()}
        return all(
            listed[h]["status"] == "online" and listed[h]["address"].startswith("https://")
            for h in host_ids.values()
        )

    _wait("both hosts registered and online", all_online, 180, logs)
    return Joined(user, key, host_ids, logs)


def test_two_hosts_spread_fail_and_come_back(platform: dict[str, Any]) -> None:
    base, nodes = platform["base"], platform["nodes"]
    a = nodes[0]
    joined = _join(platform)
    user, key, host_ids, logs = joined.user, joined.key, joined.host_ids, joined.logs

    def hosts() -> dict[str, dict[str, Any]]:
        return {h["id"]: h for h in httpx.get(f"{base}/v1/hosts", headers=user, timeout=10).json()}

    assert (a.data_dir / "host-credentials.json").stat().st_mode & 0o777 == 0o600

    # Four capsules: the least-loaded scheduler spreads them 2/2.
    def create(_: int) -> dict[str, Any]:
        r = httpx.post(f"{base}/v1/capsules", json={"memory_mb": 256}, headers=key, timeout=600)
        assert r.status_code == 201, r.text
        return dict(r.json())

    with ThreadPoolExecutor(2) as pool:
        capsules = [c["id"] for c in pool.map(create, range(4))]
    placed = _host_of(platform["database_url"])
    on_a = sorted(c for c in capsules if placed[c] == host_ids["a"])
    on_b = sorted(c for c in capsules if placed[c] == host_ids["b"])
    assert len(on_a) == 2 and len(on_b) == 2, placed
    for cid in capsules:  # each one answers through its own host, over mutual TLS
        r = httpx.post(f"{base}/v1/capsules/{cid}/exec", headers=key, timeout=120,
                       json={"cmd": "/bin/sh", "args": ["-c", "echo $((6*7))"]})  # fmt: skip
        assert r.status_code == 200 and r.json()["stdout"] == "42\n", r.text

    def status(cid: str) -> str:
        return str(httpx.get(f"{base}/v1/capsules/{cid}", headers=key, timeout=10).json()["status"])

    # Host a dies (kill -9: its VMs keep running): after the host timeout, its capsules are missing.
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait(10)
    _wait("host a's capsules missing", lambda: all(status(c) == "missing" for c in on_a), 60, logs)
    assert hosts()[host_ids["a"]]["status"] == "unreachable"
    assert all(status(c) == "running" for c in on_b)
    r = httpx.post(f"{base}/v1/capsules/{on_a[0]}/exec", headers=key, json={"cmd": "true"}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable", r.text

    # It comes back with its saved credentials (the token is spent), adopts its VMs and heartbeats.
    _start_agent(a, platform["cp_port"], "spent-token")
    _wait("host a's capsules running again", lambda: all(status(c) == "running" for c in on_a), 180, logs)
    assert hosts()[host_ids["a"]]["status"] == "online"
    r = httpx.post(f"{base}/v1/capsules/{on_a[0]}/exec", headers=key, timeout=120,
                   json={"cmd": "/bin/sh", "args": ["-c", "echo back"]})  # fmt: skip
    assert r.status_code == 200 and r.json()["stdout"] == "back\n", r.text

    # A capsule paused for longer than hibernate_after_s goes to the cold storage both hosts share. With its
    # host gone, resuming it wakes it on the other host: memory (a counting process), files and all.
    sleeper = on_a[1]
    counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.2; done"
    r = httpx.post(f"{base}/v1/capsules/{sleeper}/exec", headers=key, timeout=120,
                   json={"cmd": "/bin/sh", "args": ["-c", counter], "background": True})  # fmt: skip
    assert r.status_code == 202, r.text
    r = httpx.post(f"{base}/v1/capsules/{sleeper}/exec", headers=key, timeout=120,
                   json={"cmd": "/bin/sh", "args": ["-c", "echo kept > ~/hib.txt; sleep 1; cat /tmp/n"]})  # fmt: skip
    before = int(r.json()["stdout"])
    r = httpx.post(f"{base}/v1/capsules/{sleeper}/pause", headers=key, timeout=300)
    assert r.status_code == 200 and r.json()["status"] == "paused", r.text
    _wait("the paused capsule hibernated", lambda: status(sleeper) == "hibernated", 180, logs)
    cold = a.data_dir.parent / "cold"
    assert (cold / f"{sleeper}.tar.zst").is_file()
    assert not (a.data_dir / "sandboxes" / sleeper).exists()  # nothing of it is left on its host
    a.proc.kill()
    a.proc.wait(10)
    _wait("host a unreachable", lambda: hosts()[host_ids["a"]]["status"] == "unreachable", 60, logs)
    r = httpx.post(f"{base}/v1/capsules/{sleeper}/resume", headers=key, timeout=600)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert _host_of(platform["database_url"])[sleeper] == host_ids["b"]
    r = httpx.post(f"{base}/v1/capsules/{sleeper}/exec", headers=key, timeout=120,
                   json={"cmd": "/bin/sh", "args": ["-c", "cat ~/hib.txt; sleep 1; cat /tmp/n"]})  # fmt: skip
    kept, after = r.json()["stdout"].split()
    assert kept == "kept" and int(after) > before, r.text  # the process counted on, on another host
    assert not (cold / f"{sleeper}.tar.zst").exists()
    _start_agent(a, platform["cp_port"], "spent-token")
    _wait("host a online again", lambda: hosts()[host_ids["a"]]["status"] == "online", 120, logs)

    # Deleting the hosts (force) stops their capsules and terminates both agents.
    for name, host_id in host_ids.items():
        r = httpx.delete(f"{base}/v1/hosts/{host_id}?force=true", headers=user, timeout=120)
        assert r.status_code == 204, (name, r.text)
    for node in nodes:
        assert node.proc is not None
        node.proc.wait(60)
        assert not _vmm_pids(node.data_dir)
    assert all(status(c) == "stopped" for c in capsules)


def test_a_template_built_on_one_host_starts_on_the_other(platform: dict[str, Any]) -> None:
    """Its files go to the template store both hosts mount; the other host fetches and checks them the
    first time one of its capsules needs them. Deleting the template removes them again."""
    base, nodes = platform["base"], platform["nodes"]
    joined = _join(platform)
    key, logs = joined.key, joined.logs
    config = {
        "name": "shared",
        "recipe": [
            "WORKDIR /home/user",
            "RUN echo built here > built.txt",
            "START python3 -m http.server 8000",
        ],
        "healthcheck": "--timeout=60s curl -sf localhost:8000/",
        "memory_mb": 256,
        "disk_size_mb": 2048,
    }
    r = httpx.post(f"{base}/v1/templates/builds", json=config, headers=key, timeout=30)
    assert r.status_code == 201, r.text
    build_id = r.json()["id"]

    def ready() -> bool:
        got = httpx.get(f"{base}/v1/templates/builds/{build_id}", headers=key, timeout=10).json()
        assert got["status"] in ("waiting", "building", "ready"), got
        return bool(got["status"] == "ready")

    _wait("the build", ready, 600, logs)
    store = nodes[0].data_dir.parent / "store"
    published = {p.name for p in store.iterdir() if len(p.name) == 64}
    assert published, "nothing was published to the template store"

    # Two capsules: one on each host (least loaded first), both from the build's snapshot.
    def create(_: int) -> str:
        made = httpx.post(f"{base}/v1/capsules", json={"template": "shared"}, headers=key, timeout=600)
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    capsules = [create(0), create(1)]
    placed = _host_of(platform["database_url"])
    assert {placed[c] for c in capsules} == set(joined.host_ids.values()), placed
    for cid in capsules:
        ran = httpx.post(f"{base}/v1/capsules/{cid}/exec", headers=key, timeout=120,
                         json={"cmd": "/bin/sh", "args": ["-c", "cat built.txt; curl -s -o /dev/null -w '%{http_code}' localhost:8000/"]})  # fmt: skip
        assert ran.status_code == 200 and ran.json()["stdout"] == "built here\n200", ran.text
    for node in nodes:  # each host holds its own checked copy
        assert {p.name for p in (node.data_dir / "blobs").iterdir()} & published
    for cid in capsules:
        assert httpx.delete(f"{base}/v1/capsules/{cid}", headers=key, timeout=60).status_code == 204

    # Deleted: its ready snapshot is gone from the store and from both hosts' caches.
    result = _build_result(platform["database_url"], build_id)
    snapshot = {result["memory"]["sha256"], result["vmstate"]["sha256"]}
    r = httpx.delete(f"{base}/v1/templates/shared", headers=key, timeout=120)
    assert r.status_code == 204, r.text
    assert not snapshot & {p.name for p in store.iterdir()}
    for node in nodes:
        assert not snapshot & {p.name for p in (node.data_dir / "blobs").iterdir()}
        assert not (node.data_dir / "templates" / build_id).exists()


def _build_result(database_url: str, build_id: str) -> dict[str, Any]:
    from wrenn.controlplane.db import TemplateBuild, make_engine

    async def read() -> dict[str, Any]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            from sqlalchemy import select

            row = (
                await conn.execute(select(TemplateBuild.result).where(TemplateBuild.id == build_id))
            ).scalar_one()
        await engine.dispose()
        return dict(row)

    return asyncio.run(read())
