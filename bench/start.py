"""How fast sandboxes start: a cold boot, a create from the template's ready snapshot, a resume, and a bare
QEMU restore of the same snapshot, in one run against one host agent, with the same `minimal` image and
shape (512 MiB, 1 vCPU); then the host memory of idle sandboxes made from the template, and a burst of
concurrent creates.

Starts a real host agent (`python -m wrenn.agent`, root, a free loopback port, its own name prefix and data
dir, its own address ranges), makes the shape's ready snapshot with one untimed create, then in rounds (kinds
interleaved, the order rotated each round, so load on the machine hits every kind alike; the first
`--warmup` rounds are not counted):

* cold: `CreateSandbox(cold_boot=true)` + `Exec true`, timed from the request until the Exec returns;
  then `PauseSandbox` (timed on its own: RAM file copied) and `ResumeSandbox` + `Exec true` (timed);
  `DestroySandbox` untimed;
* template: `CreateSandbox` (restores the ready snapshot; `from_snapshot` must be true) + `Exec true`;
  then pause (its RAM file copied, as any sandbox's) and resume the same way;
* bare: `qemu-system-x86_64` started by this script with the agent's own command line and restore
  (`QemuDriver.restore`: `-incoming defer`, `x-ignore-shared`, `getfd`, `migrate-incoming fd:`, `cont`) of
  the same ready snapshot, its `memory` copied into a RAM file of its own, a fresh overlay on its disk, in a
  netns with a TAP made by the agent's own `NetworkManager` (a prefix and address ranges of ours; user-mode
  networking cannot restore the snapshot: its virtio-net state requires the TAP's `vnet_hdr`), but no
  cgroup, jail or seccomp; timed from spawn until envd answers `GET /health` 204 (overlay and network
  are made before the timing, and removed after it).

A create from the template is broken down from the agent's own log (`--log-format json`: when QEMU started,
was restored, and envd answered `/health` and `/init`). Then N idle sandboxes from the template (PSS, RSS of
each VMM, and of its PSS the template RAM's share; MemAvailable drop / N; against the guest RAM), and M
concurrent creates from the template (each one's latency; the wall time of all).

Prints the tables and the ratios next to their targets (reported, not asserted), and writes every sample to
`bench/results/start-<timestamp>.json`. Everything is cleaned up at the end, also on errors, Ctrl-C and
SIGTERM: sandboxes destroyed, the agent sent `Terminate`, bare QEMUs killed, the private data dir removed
(kept with the agent log after an error); leftovers (QEMU processes, network namespaces) are reported.

    .venv/bin/python bench/start.py [--runs 5] [--idle 5] [--concurrent 20] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from _common import (
    ENVD_PORT,
    MIB,
    AgentRun,
    MemRow,
    Series,
    agent_client,
    agent_create,
    agent_destroy,
    agent_running,
    agent_spec,
    envd_start,
    fmt_time,
    guarded,
    host_accelerator,
    idle_memory,
    kill_bare,
    memory_rows,
    memory_table,
    now,
    prepare_run,
    render_table,
    series_table,
    sigterm_cancels,
    vm_bench_parser,
    wait_envd,
    write_results,
)
from wrenn import images
from wrenn.agent import _disk
from wrenn.agent._envd import EnvdClient
from wrenn.agent.network import NetworkConfig, NetworkManager
from wrenn.agent.vmm import Accelerator
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.auth import HEADER, TOKEN_FILE, read_token
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

MEMORY_MB = 512
VCPUS = 1
DISK_MB = 2048  # the image's own size: no online resize2fs in the guest
TAG = f"sb{os.getpid() % 1000:03d}"
PREFIX = f"{TAG}x"  # the agent's name prefix: starts and ends with a letter
#: Address ranges of our agent and of the bare QEMUs' network: apart from every other agent's (the tests'
#: are 10.20-10.219 and 10.236/10.237; an agent's default 10.11/10.12), so neither collides with one.
AGENT_NETS = ("10.250.0.0/16", "10.251.0.0/16")
BARE_NETS = ("10.253.0.0/24", "10.254.0.0/24")
BARE_PREFIX = f"{TAG}b"
#: "pool" is a create that takes the warm pool's one member, then at once a create that finds the pool empty
#: ("template": the plain restore), then both paused and resumed once the pool has refilled.
KINDS = ("cold", "pool", "bare")
TARGETS = {
    "cold / template": 8.0,
    "template / bare restore": 1.3,
    "PSS / guest RAM": 0.25,
    "pool / bare": 0.5,
}
#: The agent's warm pool: one member of our shape (so the create right after a claim finds none).
POOL_ARGS = (
    "--pool-memory-mb",
    "2048",
    "--pool",
    f"minimal/{VCPUS}/{MEMORY_MB}/{DISK_MB}=1",
    "--pool-max",
    "1",
)
#: What the E2B SDK sends as a first command (`commands.run("true")` runs it in a login shell).
SDK_COMMAND = ("/bin/bash", ["-l", "-c", "true"])


# --- the operations ------------------------------------------------------------------------------


def create_request(sandbox_id: str, *, cold: bool) -> pb.CreateSandboxRequest:
    return pb.CreateSandboxRequest(
        sandbox_id=sandbox_id, template="minimal", vcpus=VCPUS, memory_mb=MEMORY_MB, disk_size_mb=DISK_MB,
        cold_boot=cold,
    )  # fmt: skip


async def exec_true(client: HostAgentServiceClient, sandbox_id: str) -> None:
    response = await client.exec(pb.ExecRequest(sandbox_id=sandbox_id, cmd="true"), timeout_ms=60_000)
    if not response.exited or response.exit_code != 0:
        raise RuntimeError(f"Exec `true` in {sandbox_id}: {response}")


async def create(
    client: HostAgentServiceClient, run: AgentRun, sandbox_id: str, *, cold: bool
) -> tuple[float, float, float]:
    """CreateSandbox + Exec `true`: (seconds until the Exec returned, seconds of the CreateSandbox alone,
    the wall-clock time it started)."""
    started_at = time.time()
    start = time.perf_counter()
    create_t, info = await agent_create(client, run, create_request(sandbox_id, cold=cold))
    if info.from_snapshot == cold:
        how = "restored a snapshot" if cold else "booted"
        raise RuntimeError(f"{sandbox_id} {how}: from_snapshot={info.from_snapshot}, cold_boot={cold}")
    await exec_true(client, sandbox_id)
    return time.perf_counter() - start, create_t, started_at


async def pause_resume(client: HostAgentServiceClient, sandbox_id: str) -> tuple[float, float]:
    """PauseSandbox, then ResumeSandbox + Exec `true`: (pause seconds, resume-to-command seconds)."""
    start = time.perf_counter()
    paused = (
        await client.pause_sandbox(pb.PauseSandboxRequest(sandbox_id=sandbox_id), timeout_ms=120_000)
    ).sandbox
    pause_t = time.perf_counter() - start
    if paused is None or paused.status != pb.SandboxStatus.PAUSED:
        raise RuntimeError(f"{sandbox_id} did not pause: {paused}")
    start = time.perf_counter()
    request = pb.ResumeSandboxRequest(sandbox_id=sandbox_id)
    resumed = (await client.resume_sandbox(request, timeout_ms=300_000)).sandbox
    if resumed is None or resumed.status != pb.SandboxStatus.RUNNING:
        raise RuntimeError(f"{sandbox_id} did not resume: {resumed}")
    await exec_true(client, sandbox_id)
    return pause_t, time.perf_counter() - start


def ready_dir(run: AgentRun, accelerator: Accelerator, image: images.Image) -> Path:
    """Where the agent keeps the ready snapshot of our shape (its `_ready_dir`)."""
    shape = f"{VCPUS}cpu-{MEMORY_MB}m-{DISK_MB}d"
    return run.work_dir / "ready" / f"qemu-{accelerator.value}" / f"{image.template}-{image.version}" / shape


def bare_network(run: AgentRun) -> NetworkManager:
    """The agent's own network code with a prefix and address ranges of ours, one slot: the bare QEMUs'
    netns, veth and TAP (removed at the end, however the run ends)."""
    manager = NetworkManager(
        NetworkConfig(slots=1, prefix=BARE_PREFIX, host_net=BARE_NETS[0], veth_net=BARE_NETS[1])
    )
    run.netns_prefixes.append(BARE_PREFIX)

    def remove() -> None:
        if removed := asyncio.run(manager.uninstall()):
            print(f"removed bare QEMU networks left over: {removed}", file=sys.stderr)

    run.cleanups.append(remove)
    return manager


async def bare_restore(
    image: images.Image,
    accelerator: Accelerator,
    ready: Path,
    network: NetworkManager,
    run: AgentRun,
    vm_id: str,
    disk_mb: int = DISK_MB,
) -> tuple[float, float, float]:
    """Restore the ready snapshot in a QEMU of our own, as the agent does, on a network made as the agent
    makes it: (seconds from spawn until envd's /health answered 204, seconds until the restore returned,
    after `cont`, and the floor: `floor_command` in that VM). The overlay and the network are made before,
    and removed after, the timing."""
    run.vm_ids.add(vm_id)
    with tempfile.TemporaryDirectory(prefix=f"{vm_id}-", dir=run.work_dir) as tmp:
        workdir = Path(tmp)
        overlay = await _disk.create_overlay(ready / "rootfs.qcow2", workdir / "rootfs.qcow2", disk_mb)
        net = await network.setup(1, allow_internet=False)
        try:
            spec = agent_spec(
                image, accelerator, vm_id, workdir, VCPUS, MEMORY_MB, net.kernel_cmdline(), overlay
            )
            spec = dataclasses.replace(
                spec,
                tap=net.tap,
                mac=net.mac,
                netns=net.netns,
                memory_file=workdir / "memory",
                backing=tuple(_disk.backing_chain(ready / "rootfs.qcow2")),
            )  # fmt: skip  (the agent's spec for a sandbox from the ready snapshot: RAM a file of its own)
            start = time.perf_counter()
            vm = await QemuDriver(seccomp=False).restore(spec, ready)
            restored = time.perf_counter() - start
            run.bare[vm_id] = vm.pid
            try:
                await wait_envd(net.host_ip, ENVD_PORT, workdir, alive=lambda: vm.returncode is None)
                elapsed = time.perf_counter() - start
                floor = await floor_command(vm, net.host_ip)
            finally:
                await vm.kill()
                run.bare.pop(vm_id, None)
        finally:
            await network.teardown(net)
    return elapsed, restored, floor


def pool_metrics(run: AgentRun) -> dict[str, float]:
    """The agent's `wrenn_agent_pool_*` samples, by name with labels."""
    headers = {HEADER: read_token(run.work_dir / TOKEN_FILE)}
    text = httpx.get(f"{run.url}/metrics", headers=headers, timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("wrenn_agent_pool_"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def pool_hits(run: AgentRun) -> tuple[float, float]:
    m = pool_metrics(run)
    return m.get('wrenn_agent_pool_creates_total{result="hit"}', 0), m.get(
        'wrenn_agent_pool_creates_total{result="miss"}', 0
    )


async def wait_pool(run: AgentRun, members: int, timeout_s: float = 300) -> float:
    """Until the pool holds `members` ready members; the seconds that took."""
    start = time.perf_counter()
    while pool_metrics(run).get('wrenn_agent_pool_members{state="ready"}', 0) < members:
        if time.perf_counter() - start > timeout_s:
            raise RuntimeError(
                f"the warm pool did not reach {members} in {timeout_s:.0f} s: {pool_metrics(run)}"
            )
        await asyncio.sleep(0.1)
    return time.perf_counter() - start


async def floor_command(vm: Any, host_ip: str) -> float:
    """The floor of a pooled create: this VM, restored ahead, warmed once with the SDK's first command and
    stopped (QMP `stop`) like a pool member; then `cont` and the same command straight to its envd (no RPC,
    no /init, no proxy): seconds from `cont` until the command's end event."""
    async with EnvdClient(host_ip, access_token=None) as envd:
        command = envd_start(envd.process, *SDK_COMMAND, headers=envd.headers("user"))
        await command()
        await vm.pause()
        start = time.perf_counter()
        await vm.resume()
        await command()
        return time.perf_counter() - start


# --- the runs ------------------------------------------------------------------------------------


class Timings:
    """Every series the rounds fill, in the order of the table."""

    def __init__(self) -> None:
        self.cold = Series("cold boot -> first command")
        self.create_cold = Series("  CreateSandbox alone (cold)")
        self.template = Series("from template -> first command")
        self.create_template = Series("  CreateSandbox alone (template)")
        self.bare = Series("bare QEMU restore -> /health 204")
        self.bare_cont = Series("  bare: spawn -> restored, cont")
        self.pool = Series("from the warm pool -> first command")
        self.create_pool = Series("  CreateSandbox alone (pool)")
        self.floor = Series("floor: stopped VM cont + `bash -l -c true` to envd")
        self.refill = Series("pool refilled after a claim")
        self.resume_template = Series("resume -> first command (template clone)")
        self.resume_cold = Series("resume -> first command (cold-booted)")
        self.pause_template = Series("PauseSandbox (template clone)")
        self.pause_cold = Series("PauseSandbox (cold-booted)")
        self.destroy = Series("DestroySandbox")

    def all(self) -> list[Series]:
        return list(vars(self).values())


async def one_round(
    client: HostAgentServiceClient,
    image: images.Image,
    accelerator: Accelerator,
    ready: Path,
    network: NetworkManager,
    run: AgentRun,
    i: int,
    into: Timings | None,
    label: str,
    wanted: tuple[str, ...] = KINDS,
) -> dict[str, Any]:
    """Every kind once, in an order rotated by `i`; the samples go `into` the timings (none: a warm-up)."""
    kinds = tuple(k for k in KINDS if k in wanted)
    order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
    got: dict[str, Any] = {"round": i, "order": list(order)}
    t = into or Timings()
    for kind in order:
        if kind == "bare":
            total, cont, floor = await bare_restore(image, accelerator, ready, network, run, f"{TAG}-bare{i}")
            t.bare.samples.append(total)
            t.bare_cont.samples.append(cont)
            t.floor.samples.append(floor)
            got["bare"] = {"to_health_s": total, "to_cont_s": cont, "floor_s": floor}
            continue
        made: list[tuple[str, str, tuple[float, float, float]]] = []
        if kind == "pool":
            await wait_pool(run, 1)
            for which in ("pool", "template"):  # a claim, then a create that finds the pool empty
                hits, misses = pool_hits(run)
                sandbox_id = f"{TAG}-{which}{i}"
                made.append((which, sandbox_id, await create(client, run, sandbox_id, cold=False)))
                after = pool_hits(run)
                if (after[0] - hits, after[1] - misses) != ((1, 0) if which == "pool" else (0, 1)):
                    raise RuntimeError(f"{sandbox_id}: pool hits/misses {hits, misses} -> {after}")
            t.refill.samples.append(await wait_pool(run, 1))  # pauses and resumes timed without a refill
        else:
            sandbox_id = f"{TAG}-cold{i}"
            made.append(("cold", sandbox_id, await create(client, run, sandbox_id, cold=True)))
        for which, sandbox_id, (total, create_t, started_at) in made:
            pause_t, resume_t = await pause_resume(client, sandbox_id)
            destroy_t = await agent_destroy(client, run, sandbox_id)
            series = {
                "cold": (t.cold, t.create_cold, t.pause_cold, t.resume_cold),
                "template": (t.template, t.create_template, t.pause_template, t.resume_template),
                "pool": (t.pool, t.create_pool, t.pause_template, t.resume_template),
            }[which]
            for target, value in zip(series, (total, create_t, pause_t, resume_t), strict=True):
                target.samples.append(value)
            t.destroy.samples.append(destroy_t)
            got[which] = {
                "id": sandbox_id,
                "started_at": started_at,
                "to_command_s": total,
                "create_s": create_t,
                "pause_s": pause_t,
                "resume_to_command_s": resume_t,
                "destroy_s": destroy_t,
            }
    shown = [k for k in got if k in (*KINDS, "template")]
    summary = ", ".join(
        f"{k} {got[k]['to_health_s' if k == 'bare' else 'to_command_s']:.2f} s" for k in shown
    )
    print(f"  {label}: {summary}", file=sys.stderr)
    return got


def guest_ram(memory_dir: Path) -> Callable[[int], dict[str, int]]:
    """Per VMM: PSS and Private_Dirty of its mapping of its RAM file (`<memory dir>/*.mem`, its own copy of
    the template's memory): the pages it holds, and of them those the guest wrote."""

    def figures(pid: int) -> dict[str, int]:
        for m in psutil.Process(pid).memory_maps(grouped=True):
            if m.path.startswith(f"{memory_dir}/") and m.path.endswith(".mem"):
                return {
                    "guest_ram_pss_bytes": int(m.pss),
                    "guest_ram_private_dirty_bytes": int(m.private_dirty),
                }
        return {"guest_ram_pss_bytes": 0, "guest_ram_private_dirty_bytes": 0}

    return figures


async def bench_idle(
    client: HostAgentServiceClient, run: AgentRun, n: int, settle_s: float
) -> tuple[list[MemRow], dict[str, Any]]:
    requests = [create_request(f"{TAG}-idle{i}", cold=False) for i in range(n)]
    per_vm, raw = await idle_memory(client, run, requests, settle_s, more=guest_ram(Path("/dev/shm")))
    names = [
        ("VMM PSS", "pss_bytes"),
        ("  of which guest RAM (its RAM file)", "guest_ram_pss_bytes"),
        ("  of it written by the guest (Private_Dirty)", "guest_ram_private_dirty_bytes"),
        ("VMM RSS", "rss_bytes"),
    ]
    return memory_rows(per_vm, raw, MEMORY_MB * MIB, names), raw


async def bench_concurrent(client: HostAgentServiceClient, run: AgentRun, n: int) -> dict[str, Any]:
    """`n` CreateSandbox from the template at once: each one's latency and the wall time of all."""
    ids = [f"{TAG}-burst{i}" for i in range(n)]
    print(f"{n} concurrent creates from the template", file=sys.stderr)
    start = time.perf_counter()
    results = await asyncio.gather(
        *(agent_create(client, run, create_request(sid, cold=False)) for sid in ids), return_exceptions=True
    )
    wall = time.perf_counter() - start
    errors = [f"{sid}: {r!r}" for sid, r in zip(ids, results, strict=True) if isinstance(r, BaseException)]
    latencies = [r[0] for r in results if not isinstance(r, BaseException)]
    booted = [
        sid
        for sid, r in zip(ids, results, strict=True)
        if not isinstance(r, BaseException) and not r[1].from_snapshot
    ]
    await asyncio.gather(
        *(agent_destroy(client, run, sid) for sid in ids if sid in run.sandboxes), return_exceptions=True
    )
    if errors or booted:
        raise RuntimeError(
            f"concurrent creates: {len(errors)} failed {errors[:3]}; booted instead of restored: {booted}"
        )
    return {
        "n": n,
        "wall_s": wall,
        "latencies": Series(f"{n} concurrent CreateSandbox (template)", latencies),
    }


def agent_log(log: Path) -> tuple[dict[str, dict[str, dict[str, Any]]], list[tuple[float, str]]]:
    """The agent's JSON log: per VM its first record of each message (a create's, not a resume's), and the
    times and first lines of its HTTP requests to envd (httpx logs each one as its answer arrives)."""
    events: dict[str, dict[str, dict[str, Any]]] = {}
    requests: list[tuple[float, str]] = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if record.get("logger") == "httpx":
                requests.append((record["ts"], record["msg"]))
            elif vm := record.get("sandbox") or record.get("vm"):
                events.setdefault(vm, {}).setdefault(record["msg"], record)
    return events, requests


def answered(requests: list[tuple[float, str]], request: str, after: float, until: float) -> float | None:
    """When the agent's first `request` ("METHOD URL") between `after` and `until` was answered."""
    prefix = f"HTTP Request: {request} "
    return next((ts for ts, msg in requests if after <= ts <= until and msg.startswith(prefix)), None)


def breakdown(log: Path, creates: list[dict[str, Any]]) -> list[Series]:
    """Where each measured create from the template spent its time, from the agent's log (its own
    timestamps and its requests to envd) and our client-side times."""
    before = Series("  request -> QEMU spawn (RPC, slot, netns/TAP/rules, overlay)")
    restore = Series("  QEMU spawn -> restored (QMP, load state, cont)")
    health = Series("  cont -> envd /health 204 (cgroup, guest wakes; probed every 20 ms)")
    init = Series("  /health -> /init answered")
    rest = Series("  /init answered -> CreateSandbox returned")
    first = Series("  first Exec `true` after that")
    events, requests = agent_log(log)
    for create in creates:
        sandbox_id, client_start = create["id"], create["started_at"]
        total, create_t = create["to_command_s"], create["create_s"]
        ev = events.get(sandbox_id, {})
        started, restored, running = (
            ev.get("qemu started"),
            ev.get("qemu restored"),
            ev.get("sandbox running"),
        )
        if started is None or restored is None or running is None:
            print(f"no agent log records for {sandbox_id}: breakdown incomplete", file=sys.stderr)
            continue
        envd, until = f"http://{running['host_ip']}:{ENVD_PORT}", running["ts"]
        healthy = answered(requests, f"GET {envd}/health", restored["ts"], until)
        inited = answered(requests, f"POST {envd}/init", healthy, until) if healthy is not None else None
        if healthy is None or inited is None:
            print(f"no envd requests of {sandbox_id} in the agent log: breakdown incomplete", file=sys.stderr)
            continue
        before.samples.append(started["ts"] - client_start)
        restore.samples.append(restored["ts"] - started["ts"])
        health.samples.append(healthy - restored["ts"])
        init.samples.append(inited - healthy)
        rest.samples.append(create_t - (inited - client_start))
        first.samples.append(total - create_t)
    return [s for s in (before, restore, health, init, rest, first) if s.samples]


async def main_async(args: argparse.Namespace, run: AgentRun, image: images.Image) -> dict[str, Any]:
    async with sigterm_cancels(run), agent_client(run) as client:
        accelerator, host = await host_accelerator(client)
        ready = ready_dir(run, accelerator, image)
        network = bare_network(run)
        await network.start()
        print("making the ready snapshot (one untimed create of the shape)", file=sys.stderr)
        warm_id = f"{TAG}-ready"
        start = time.perf_counter()
        _, info = await agent_create(client, run, create_request(warm_id, cold=False))
        made_s = time.perf_counter() - start
        await exec_true(client, warm_id)
        await agent_destroy(client, run, warm_id)
        if info.from_snapshot or not (ready / "vmstate").is_file():
            raise RuntimeError(f"the agent made no ready snapshot in {ready} (see {run.agent_log})")
        print(f"  ready snapshot made in {made_s:.2f} s (cold boot + checkpoint): {ready}", file=sys.stderr)
        timings = Timings()
        rounds = []
        print(
            f"{args.warmup} warm-up round(s), then {args.runs} rounds of {', '.join(KINDS)}", file=sys.stderr
        )
        for i in range(args.warmup + args.runs):
            warm = i < args.warmup
            label = "warm-up" if warm else f"run {i - args.warmup + 1}/{args.runs}"
            kinds = tuple(k for k in KINDS if not (args.skip_cold and k == "cold"))
            got = await one_round(
                client, image, accelerator, ready, network, run, i, None if warm else timings, label, kinds
            )
            rounds.append({**got, "warm_up": warm})
        assert run.agent_log is not None
        parts = breakdown(run.agent_log, [r["template"] for r in rounds if not r["warm_up"]])
        await wait_pool(run, 1)
        await asyncio.sleep(3)  # measured at least once since it stopped
        metrics = pool_metrics(run)
        pooled_pss = (
            metrics['wrenn_agent_pool_memory_bytes{kind="pss"}']
            / metrics['wrenn_agent_pool_members{state="ready"}']
        )
        print(f"  a pooled (stopped) VM's PSS: {pooled_pss / MIB:.0f} MiB", file=sys.stderr)
        mem_rows: list[MemRow] = []
        mem_raw: dict[str, Any] = {}
        if args.idle > 0:
            mem_rows, mem_raw = await bench_idle(client, run, args.idle, args.settle)
        burst = None
        if args.concurrent > 0:
            hits = pool_hits(run)
            burst = await bench_concurrent(client, run, args.concurrent)
            after = pool_hits(run)
            burst["pool_hits"], burst["pool_misses"] = after[0] - hits[0], after[1] - hits[1]
    return {"host": host, "ready": ready, "ready_made_s": made_s, "timings": timings, "rounds": rounds,
            "parts": parts, "mem_rows": mem_rows, "mem_raw": mem_raw, "burst": burst,
            "pooled_pss_bytes": pooled_pss}  # fmt: skip


# --- the report ----------------------------------------------------------------------------------


def ratio_rows(t: Timings, mem_rows: list[MemRow]) -> list[dict[str, Any]]:
    rows = [] if not t.cold.samples else [
        {"ratio": "cold / template", "value": t.cold.median / t.template.median, "target": ">= 8x",
         "met": t.cold.median / t.template.median >= TARGETS["cold / template"]},
    ]  # fmt: skip
    rows += [
        {"ratio": "template / bare restore", "value": t.template.median / t.bare.median, "target": "<= 1.3x",
         "met": t.template.median / t.bare.median <= TARGETS["template / bare restore"]},
        {"ratio": "pool / bare restore", "value": t.pool.median / t.bare.median, "target": "<= 0.5x",
         "met": t.pool.median / t.bare.median <= TARGETS["pool / bare"]},
        {"ratio": "pool / floor", "value": t.pool.median / t.floor.median, "target": "(reported)",
         "met": True},
    ]  # fmt: skip
    if mem_rows:
        pss = mem_rows[0].ratio
        rows.append({"ratio": "PSS / guest RAM (idle capsule from the template)", "value": pss,
                     "target": "< 0.25", "met": pss < TARGETS["PSS / guest RAM"]})  # fmt: skip
    return rows


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = [[r["ratio"], f"{r['value']:.2f}x", r["target"], "met" if r["met"] else "MISSED"] for r in rows]
    return render_table(["ratio (medians)", "value", "target", "result"], lines, {1})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = vm_bench_parser(__doc__, idle=5)
    parser.add_argument("--runs", type=int, default=5, help="measured rounds of every kind (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds, not counted (default 1)")
    parser.add_argument("--skip-cold", action="store_true", help="no cold boots in the rounds (seconds each)")
    parser.add_argument(
        "--concurrent", type=int, default=20, help="creates at once from the template; 0 skips (default 20)"
    )
    parser.add_argument("--tti", action="store_true", help="time to interactive through the whole platform")
    parser.add_argument("--tti-runs", type=int, default=20, help="--tti: sequential creates (default 20)")
    parser.add_argument("--bursts", type=int, nargs="+", default=[10, 20], help="--tti: burst sizes (10 20)")
    parser.add_argument("--floor-runs", type=int, default=10, help="--tti: floor measurements (default 10)")
    parser.add_argument("--pool-memory-mb", type=int, default=TTI_POOL_MB, help="--tti: the pool's budget")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.idle < 0 or args.concurrent < 0:
        parser.error("--runs must be at least 1; --warmup, --idle and --concurrent at least 0")
    return args


# --- time to interactive: the e2b SDK through the whole platform ---------------------------------

#: The platform's warm pool for `--tti`: the shape the control plane gives `Sandbox.create()` (1 vCPU,
#: 512 MiB, 5120 MiB disk, template `minimal`), as many members as the largest burst.
TTI_POOL_MB = 8192


def tti_once(opts: dict[str, Any]) -> dict[str, Any]:
    """`Sandbox.create()` then `commands.run("true")` with the unmodified e2b SDK; killed after (untimed)."""
    from e2b import Sandbox

    start = time.perf_counter()
    sandbox = Sandbox.create(**opts)
    created = time.perf_counter()
    try:
        result = sandbox.commands.run("true")
        done = time.perf_counter()
        if result.exit_code != 0:
            raise RuntimeError(f"`true` in {sandbox.sandbox_id} exited {result.exit_code}")
    finally:
        sandbox.kill()
    return {
        "id": sandbox.sandbox_id,
        "tti_s": done - start,
        "create_s": created - start,
        "run_s": done - created,
    }


def agent_log_fields(log: Path) -> dict[str, dict[str, str]]:
    """The agent's text log: per sandbox, the fields of its `sandbox running` line."""
    found: dict[str, dict[str, str]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " sandbox running " in line:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            if "sandbox" in fields:
                found[fields["sandbox"]] = fields
    return found


def platform_cpu_s(data_dir: Path) -> float:
    """CPU seconds (user + system) the platform's own processes (agent, control plane) have used."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        cmdline = proc.info["cmdline"] or []
        if "--data-dir" in cmdline and str(data_dir) in cmdline and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


def tti_main(args: argparse.Namespace) -> None:
    """`--tti`: `wrenn up` with a warm pool, then sequential and burst time-to-interactive, and the floor."""
    from concurrent.futures import ThreadPoolExecutor

    from sdk_bench import State, cleanup, platform_up, prepare

    started = now()
    pool = max(args.bursts)
    os.environ.update(
        {
            "WRENN_AGENT_POOL_MEMORY_MB": str(args.pool_memory_mb),
            "WRENN_AGENT_POOL": f"minimal={pool}",
            "WRENN_AGENT_POOL_MAX": str(pool),
        }
    )  # fmt: skip  (the agent `wrenn up` starts reads them)
    state: State = prepare(args)
    results: dict[str, Any] = {}
    with guarded(state, lambda failed: cleanup(state, keep_dir=failed)):
        saved = platform_up(state)
        base = saved["base_url"]
        opts = {"api_key": saved["api_key"], "api_url": base, "sandbox_url": base}
        agent = AgentRun(args.data_dir, state.data_dir, "tti")
        agent.agent_port = int(saved["agent_url"].rsplit(":", 1)[1])
        print("first create (boots, makes the ready snapshot)", file=sys.stderr)
        results["first"] = tti_once(opts)
        fill_s = asyncio.run(wait_pool(agent, pool, timeout_s=900))
        print(f"  pool of {pool} filled in {fill_s:.1f} s", file=sys.stderr)
        results["pool_fill_s"] = fill_s
        metrics = pool_metrics(agent)
        pss = metrics['wrenn_agent_pool_memory_bytes{kind="pss"}'] / pool
        results["pooled_vm_pss_bytes"] = pss
        hits0, misses0 = pool_hits(agent)
        cpu0 = platform_cpu_s(state.data_dir)
        sequential = [tti_once(opts) for _ in range(args.tti_runs)]
        cpu1 = platform_cpu_s(state.data_dir)
        hits1, misses1 = pool_hits(agent)
        results["sequential"] = {"samples": sequential, "pool_hits": hits1 - hits0,
                                 "pool_misses": misses1 - misses0,
                                 "platform_cpu_s_per_create": (cpu1 - cpu0) / len(sequential)}  # fmt: skip
        for n in args.bursts:
            results[f"refill_before_burst{n}_s"] = asyncio.run(wait_pool(agent, pool, timeout_s=900))
            hits0, misses0 = pool_hits(agent)
            begin = time.perf_counter()
            with ThreadPoolExecutor(n) as workers:
                burst = list(workers.map(lambda _: tti_once(opts), range(n)))
            wall = time.perf_counter() - begin
            hits1, misses1 = pool_hits(agent)
            results[f"burst{n}"] = {"samples": burst, "wall_s": wall, "pool_hits": hits1 - hits0,
                                    "pool_misses": misses1 - misses0}  # fmt: skip
        results["refill_after_bursts_s"] = asyncio.run(wait_pool(agent, pool, timeout_s=900))
        fields = agent_log_fields(state.data_dir / "logs" / "agent.log")
        results["agent"] = {s["id"]: fields.get(s["id"], {}) for s in sequential}
        results["floor"] = asyncio.run(tti_floor(args, state.data_dir))
    tti_report(args, started, results)


async def tti_floor(args: argparse.Namespace, data_dir: Path) -> list[float]:
    """The floor, on the platform agent's own ready snapshot: `floor_command` in bare QEMUs."""
    image = images.find("minimal", args.data_dir)
    assert image is not None
    (ready,) = data_dir.glob(f"ready/qemu-*/{image.template}-{image.version}/1cpu-512m-5120d")
    accelerator = Accelerator(ready.parent.parent.name.rsplit("-", 1)[1])  # qemu-<major.minor>-<accelerator>
    run = AgentRun(args.data_dir, data_dir, "ttib")
    config = NetworkConfig(slots=1, prefix=BARE_PREFIX, host_net=BARE_NETS[0], veth_net=BARE_NETS[1])
    network = NetworkManager(config)
    await network.start()
    floors = []
    try:
        for i in range(args.floor_runs):
            floors.append(
                (await bare_restore(image, accelerator, ready, network, run, f"{TAG}-floor{i}", 5120))[2]
            )
    finally:
        kill_bare(run)
        await network.uninstall()
    return floors


def tti_report(args: argparse.Namespace, started: Any, results: dict[str, Any]) -> None:
    seq = results["sequential"]
    rows = [Series(f"sequential TTI (n={len(seq['samples'])})", [s["tti_s"] for s in seq["samples"]]),
            Series("  Sandbox.create()", [s["create_s"] for s in seq["samples"]]),
            Series("  commands.run('true') (first command, through the proxy)",
                   [s["run_s"] for s in seq["samples"]])]  # fmt: skip
    agent = [f for f in results["agent"].values() if f]
    for key, name in (("boot_s", "    agent CreateSandbox (claim + /init)"),
                      ("policy_ms", "      network policy"),
                      ("resume_ms", "      VMM cont"), ("init_ms", "      guest envd /init")):  # fmt: skip
        values = [float(f[key]) / (1000 if key.endswith("_ms") else 1) for f in agent if key in f]
        if values:
            rows.append(Series(name, values))
    if agent:
        rest = [
            s["create_s"] - float(results["agent"][s["id"]]["boot_s"])
            for s in seq["samples"]
            if results["agent"][s["id"]]
        ]
        rows.append(Series("    SDK + control plane (create minus the agent's part)", rest))
    for n in args.bursts:
        burst = results[f"burst{n}"]
        rows.append(Series(f"burst of {n}: TTI", [s["tti_s"] for s in burst["samples"]]))
    rows.append(Series("floor: pooled VM cont + `bash -l -c true` to envd", results["floor"]))
    print(series_table(rows, (50, 95, 99), title="time to interactive (e2b SDK, whole platform)"))
    print(
        f"pool hits/misses: sequential {seq['pool_hits']:.0f}/{seq['pool_misses']:.0f}, "
        + ", ".join(
            f"burst {n} {results[f'burst{n}']['pool_hits']:.0f}/{results[f'burst{n}']['pool_misses']:.0f} "
            f"(wall {fmt_time(results[f'burst{n}']['wall_s'])})"
            for n in args.bursts
        )
    )
    print(
        "platform CPU (agent + control plane) per sequential create: "
        f"{seq['platform_cpu_s_per_create'] * 1000:.0f} ms"
    )
    print(
        f"pool of {max(args.bursts)} filled in {results['pool_fill_s']:.1f} s; refilled after the bursts in "
        f"{results['refill_after_bursts_s']:.1f} s; "
        f"a pooled VM's PSS {results['pooled_vm_pss_bytes'] / MIB:.0f} MiB"
    )
    floor = statistics.median(results["floor"])
    print(
        f"sequential TTI p50 / floor p50: {rows[0].median / floor:.2f}x (target 1.3x); p50 vs E2B's 491 ms: "
        f"{rows[0].median * 1000:.0f} ms"
    )
    report = {"config": {"tti_runs": args.tti_runs, "bursts": args.bursts, "pool": max(args.bursts),
                         "pool_memory_mb": args.pool_memory_mb},
              "series": {r.name.strip(): r.summary((50, 95, 99)) for r in rows}, "raw": results}  # fmt: skip
    write_results("tti", started, report)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tti:
        tti_main(args)
        return
    slots = max(args.concurrent, args.idle, 2) + 2
    agent_args = ("--log-format", "json", *POOL_ARGS)  # the log is read back for the breakdown
    image, started, run = prepare_run(
        args, "start-bench", PREFIX, slots=slots, nets=AGENT_NETS, agent_args=agent_args
    )
    with agent_running(run):
        got = asyncio.run(main_async(args, run, image))
    t: Timings = got["timings"]
    shown = [t.cold, t.create_cold, t.template, t.create_template, t.pool, t.create_pool, t.bare, t.bare_cont,
             t.floor, t.refill, t.resume_template, t.resume_cold, t.pause_template, t.pause_cold]  # fmt: skip
    print(f"start to first command (`true`), {MEMORY_MB} MiB / {VCPUS} vCPU, {args.runs} rounds")
    print(series_table([x for x in shown if x.samples], (50, 95, 99)))
    print(f"host memory of one pooled (stopped) VM, its VMM's PSS: {got['pooled_pss_bytes'] / MIB:.0f} MiB")
    parts: list[Series] = got["parts"]
    if parts:
        print()
        print(series_table([t.template, *parts, t.bare, t.bare_cont], (90,), title="where the time goes"))
    burst: dict[str, Any] | None = got["burst"]
    if burst is not None:
        print()
        print(series_table([burst["latencies"]], (50, 95, 99), title="concurrent creates"))
        wall, hits, misses = fmt_time(burst["wall_s"]), burst["pool_hits"], burst["pool_misses"]
        print(f"wall time of all {burst['n']}: {wall}; pool hits {hits:.0f}, misses {misses:.0f}")
    mem_rows: list[MemRow] = got["mem_rows"]
    if mem_rows:
        print()
        print(memory_table(mem_rows, args.idle))
    ratios = ratio_rows(t, mem_rows)
    print()
    print(ratio_table(ratios))
    report = {
        "host": got["host"],
        "image": {"template": image.template, "version": image.version, "kernel": image.kernel_version},
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "idle": args.idle,
            "settle_s": args.settle,
            "concurrent": args.concurrent,
            "memory_mb": MEMORY_MB,
            "vcpus": VCPUS,
            "disk_size_mb": DISK_MB,
            "statistic": "median, min, max, p90 of the rounds after the warm-up(s), kinds interleaved (order "
            "rotated each round); ratios of medians; targets reported, not asserted",
        },
        "ready_snapshot": {
            "path": str(got["ready"].relative_to(run.work_dir)),
            "made_s": got["ready_made_s"],
        },
        "series": {s.name.strip(): s.summary((50, 95, 99)) for s in t.all() if s.samples},
        "pooled_vm_pss_bytes": got["pooled_pss_bytes"],
        "pool_args": list(POOL_ARGS),
        "template_create_breakdown": {s.name.strip(): s.summary((90,)) for s in parts},
        "rounds": got["rounds"],
        "concurrent": None
        if burst is None
        else {
            "n": burst["n"],
            "wall_s": burst["wall_s"],
            "pool_hits": burst["pool_hits"],
            "pool_misses": burst["pool_misses"],
            **burst["latencies"].summary((50, 95, 99)),
        },
        "memory": [r.to_json() for r in mem_rows],
        "memory_raw": got["mem_raw"],
        "ratios": ratios,
    }
    write_results("start", started, report)


if __name__ == "__main__":
    main()
