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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    fmt_time,
    host_accelerator,
    idle_memory,
    memory_rows,
    memory_table,
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
from wrenn.agent.network import NetworkConfig, NetworkManager
from wrenn.agent.vmm import Accelerator
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
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
KINDS = ("cold", "template", "bare")
TARGETS = {"cold / template": 8.0, "template / bare restore": 1.3, "PSS / guest RAM": 0.25}


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
) -> tuple[float, float]:
    """Restore the ready snapshot in a QEMU of our own, as the agent does, on a network made as the agent
    makes it: (seconds from spawn until envd's /health answered 204, seconds until the restore returned,
    after `cont`). The overlay and the network are made before, and removed after, the timing."""
    run.vm_ids.add(vm_id)
    with tempfile.TemporaryDirectory(prefix=f"{vm_id}-", dir=run.work_dir) as tmp:
        workdir = Path(tmp)
        overlay = await _disk.create_overlay(ready / "rootfs.qcow2", workdir / "rootfs.qcow2", DISK_MB)
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
            finally:
                await vm.kill()
                run.bare.pop(vm_id, None)
        finally:
            await network.teardown(net)
    return elapsed, restored


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
) -> dict[str, Any]:
    """Every kind once, in an order rotated by `i`; the samples go `into` the timings (none: a warm-up)."""
    order = KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]
    got: dict[str, Any] = {"round": i, "order": list(order)}
    t = into or Timings()
    for kind in order:
        if kind == "bare":
            total, cont = await bare_restore(image, accelerator, ready, network, run, f"{TAG}-bare{i}")
            t.bare.samples.append(total)
            t.bare_cont.samples.append(cont)
            got["bare"] = {"to_health_s": total, "to_cont_s": cont}
            continue
        cold = kind == "cold"
        sandbox_id = f"{TAG}-{kind}{i}"
        total, create_t, started_at = await create(client, run, sandbox_id, cold=cold)
        pause_t, resume_t = await pause_resume(client, sandbox_id)
        destroy_t = await agent_destroy(client, run, sandbox_id)
        (t.cold if cold else t.template).samples.append(total)
        (t.create_cold if cold else t.create_template).samples.append(create_t)
        (t.pause_cold if cold else t.pause_template).samples.append(pause_t)
        (t.resume_cold if cold else t.resume_template).samples.append(resume_t)
        t.destroy.samples.append(destroy_t)
        got[kind] = {
            "id": sandbox_id,
            "started_at": started_at,
            "to_command_s": total,
            "create_s": create_t,
            "pause_s": pause_t,
            "resume_to_command_s": resume_t,
            "destroy_s": destroy_t,
        }
    summary = ", ".join(
        f"{k} {got[k]['to_health_s' if k == 'bare' else 'to_command_s']:.2f} s" for k in order
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
            got = await one_round(
                client, image, accelerator, ready, network, run, i, None if warm else timings, label
            )
            rounds.append({**got, "warm_up": warm})
        assert run.agent_log is not None
        parts = breakdown(run.agent_log, [r["template"] for r in rounds if not r["warm_up"]])
        mem_rows: list[MemRow] = []
        mem_raw: dict[str, Any] = {}
        if args.idle > 0:
            mem_rows, mem_raw = await bench_idle(client, run, args.idle, args.settle)
        burst = await bench_concurrent(client, run, args.concurrent) if args.concurrent > 0 else None
    return {"host": host, "ready": ready, "ready_made_s": made_s, "timings": timings, "rounds": rounds,
            "parts": parts, "mem_rows": mem_rows, "mem_raw": mem_raw, "burst": burst}  # fmt: skip


# --- the report ----------------------------------------------------------------------------------


def ratio_rows(t: Timings, mem_rows: list[MemRow]) -> list[dict[str, Any]]:
    rows = [
        {"ratio": "cold / template", "value": t.cold.median / t.template.median, "target": ">= 8x",
         "met": t.cold.median / t.template.median >= TARGETS["cold / template"]},
        {"ratio": "template / bare restore", "value": t.template.median / t.bare.median, "target": "<= 1.3x",
         "met": t.template.median / t.bare.median <= TARGETS["template / bare restore"]},
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
    parser.add_argument(
        "--concurrent", type=int, default=20, help="creates at once from the template; 0 skips (default 20)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.idle < 0 or args.concurrent < 0:
        parser.error("--runs must be at least 1; --warmup, --idle and --concurrent at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    slots = max(args.concurrent, args.idle, 2) + 2
    json_log = ("--log-format", "json")  # read back for the breakdown of a create's time
    image, started, run = prepare_run(
        args, "start-bench", PREFIX, slots=slots, nets=AGENT_NETS, agent_args=json_log
    )
    with agent_running(run):
        got = asyncio.run(main_async(args, run, image))
    t: Timings = got["timings"]
    shown = [t.cold, t.create_cold, t.template, t.create_template, t.bare, t.bare_cont, t.resume_template,
             t.resume_cold, t.pause_template, t.pause_cold]  # fmt: skip
    print(f"start to first command (`true`), {MEMORY_MB} MiB / {VCPUS} vCPU, {args.runs} rounds")
    print(series_table(shown, (90,)))
    parts: list[Series] = got["parts"]
    if parts:
        print()
        print(series_table([t.template, *parts, t.bare, t.bare_cont], (90,), title="where the time goes"))
    burst: dict[str, Any] | None = got["burst"]
    if burst is not None:
        print()
        print(series_table([burst["latencies"]], (50, 95, 99), title="concurrent creates"))
        print(f"wall time of all {burst['n']}: {fmt_time(burst['wall_s'])}")
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
        "series": {s.name.strip(): s.summary((90,)) for s in t.all()},
        "template_create_breakdown": {s.name.strip(): s.summary((90,)) for s in parts},
        "rounds": got["rounds"],
        "concurrent": None
        if burst is None
        else {"n": burst["n"], "wall_s": burst["wall_s"], **burst["latencies"].summary((50, 95, 99))},
        "memory": [r.to_json() for r in mem_rows],
        "memory_raw": got["mem_raw"],
        "ratios": ratios,
    }
    write_results("start", started, report)


if __name__ == "__main__":
    main()
