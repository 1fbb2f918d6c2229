"""Benchmark sandbox boot through the host agent against a bare QEMU boot, and idle sandboxes' host memory.

Starts a real host agent (`python -m wrenn.agent`, root, on a free loopback port, its own name prefix), then:

* cold boot: `CreateSandbox` (256 MiB, 1 vCPU, `cold_boot=true`: a real boot, not a restore of the shape's
  ready snapshot) until it returns RUNNING, which the agent answers only after envd in the guest answered
  `GET /health` and `POST /init`; then `DestroySandbox` (not timed);
* bare boot, the baseline: `qemu-system-x86_64` started by the agent's own driver (`QemuDriver.start`:
  same machine, accelerator, kernel, initrd and kernel arguments) on a fresh qcow2 overlay of the same
  image, but user-mode networking with a host port forwarded to envd, and no netns, cgroup, jail or
  seccomp; timed from spawn until `GET /health` answers 204. Agent and bare runs alternate, so load on
  the machine hits both the same;
* idle memory: N sandboxes created through the agent, left ~10 s to settle, then per VMM process PSS and
  RSS, and the host's MemAvailable drop since before the first create divided by N, next to the guest RAM.

Prints the tables and writes the same data, with every sample, to `bench/results/boot-<timestamp>.json`.
Everything is cleaned up at the end, also on errors and Ctrl-C: every sandbox destroyed, the agent sent
`Terminate`, bare QEMUs killed; leftovers (QEMU processes, network namespaces) are reported.

    .venv/bin/python bench/boot_bench.py [--runs 5] [--idle 3] [--data-dir /var/tmp/wrenn-test-data]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    MIB,
    AgentRun,
    MemRow,
    Row,
    Series,
    agent_client,
    agent_create,
    agent_destroy,
    agent_running,
    agent_spec,
    free_port,
    host_accelerator,
    idle_memory,
    memory_rows,
    memory_table,
    prepare_run,
    row_table,
    sigterm_cancels,
    user_net,
    vm_bench_parser,
    wait_envd,
    write_results,
)
from wrenn import images
from wrenn.agent import _disk
from wrenn.agent.vmm import Accelerator, VMSpec
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

MEMORY_MB = 256
VCPUS = 1
DISK_MB = 2048  # the image's own size: no online resize2fs in the guest, in either path
GUEST_IP = "10.0.2.15"  # QEMU user-mode networking: guest, gateway, DNS
GATEWAY = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"
TAG = f"bb{os.getpid() % 1000:03d}"
PREFIX = f"{TAG}x"  # the agent's name prefix: starts and ends with a letter


# --- the operations ------------------------------------------------------------------------------


def create_request(sandbox_id: str) -> pb.CreateSandboxRequest:
    # cold_boot: a real boot every time, not a restore of the shape's ready snapshot (bench/start.py
    # measures those).
    return pb.CreateSandboxRequest(
        sandbox_id=sandbox_id, template="minimal", vcpus=VCPUS, memory_mb=MEMORY_MB, disk_size_mb=DISK_MB,
        cold_boot=True,
    )  # fmt: skip


async def create(client: HostAgentServiceClient, run: AgentRun, sandbox_id: str) -> float:
    """CreateSandbox until RUNNING; the seconds it took."""
    elapsed, _ = await agent_create(client, run, create_request(sandbox_id))
    return elapsed


def bare_spec(image: images.Image, accelerator: Accelerator, vm_id: str, workdir: Path, port: int) -> VMSpec:
    """The agent's VM for this sandbox, with user-mode networking instead of its TAP and netns."""
    net = f"wrenn.ip={GUEST_IP}/24 wrenn.gw={GATEWAY} wrenn.dns={SLIRP_DNS}"  # QEMU's user network
    spec = agent_spec(image, accelerator, vm_id, workdir, VCPUS, MEMORY_MB, net, workdir / "rootfs.qcow2")
    return dataclasses.replace(spec, extra_args=user_net(port, GUEST_IP), backing=((image.rootfs, "raw"),))


async def bare_boot(image: images.Image, accelerator: Accelerator, run: AgentRun, vm_id: str) -> float:
    """Start QEMU (the agent's driver, without a jail) on a fresh overlay, time until envd's /health
    answers 204, kill it, remove the overlay."""
    run.vm_ids.add(vm_id)
    with tempfile.TemporaryDirectory(prefix=f"{vm_id}-", dir=run.work_dir) as tmp:
        workdir = Path(tmp)
        await _disk.create_overlay(image.rootfs, workdir / "rootfs.qcow2", 0)  # the image's own size
        port = free_port()
        start = time.perf_counter()
        vm = await QemuDriver(seccomp=False).start(bare_spec(image, accelerator, vm_id, workdir, port))
        run.bare[vm_id] = vm.pid
        try:
            await wait_envd("127.0.0.1", port, workdir, alive=lambda: vm.returncode is None)
            elapsed = time.perf_counter() - start
        finally:
            await vm.kill()
            run.bare.pop(vm_id, None)
    return elapsed


# --- the runs ------------------------------------------------------------------------------------


async def bench_boot(
    client: HostAgentServiceClient, image: images.Image, accelerator: Accelerator, run: AgentRun, runs: int
) -> tuple[Row, Series]:
    agent_s = Series("CreateSandbox -> RUNNING (agent)")
    bare_s = Series("bare qemu -> /health 204")
    destroy_s = Series("DestroySandbox")
    print(f"warm-up, then {runs} alternating agent/bare boots", file=sys.stderr)
    for i in range(runs + 1):  # run 0 is a warm-up on both paths (page cache of kernel, initrd, image)
        sandbox_id, bare_id = f"{TAG}-boot{i}", f"{TAG}-bare{i}"
        agent_t = await create(client, run, sandbox_id)
        destroy_t = await agent_destroy(client, run, sandbox_id)
        bare_t = await bare_boot(image, accelerator, run, bare_id)
        label = "warm-up" if i == 0 else f"run {i}/{runs}"
        print(f"  {label}: agent {agent_t:.2f} s, bare {bare_t:.2f} s", file=sys.stderr)
        if i > 0:
            agent_s.samples.append(agent_t)
            bare_s.samples.append(bare_t)
            destroy_s.samples.append(destroy_t)
    return Row(agent_s, bare_s), destroy_s


async def bench_idle(
    client: HostAgentServiceClient, run: AgentRun, n: int, settle_s: float
) -> tuple[list[MemRow], dict[str, Any]]:
    requests = [create_request(f"{TAG}-idle{i}") for i in range(n)]
    per_vm, raw = await idle_memory(client, run, requests, settle_s)
    names = [("VMM PSS", "pss_bytes"), ("VMM RSS", "rss_bytes")]
    return memory_rows(per_vm, raw, MEMORY_MB * MIB, names), raw


async def main_async(
    args: argparse.Namespace, run: AgentRun, image: images.Image
) -> tuple[list[Row], Series | None, list[MemRow], dict[str, Any], dict[str, Any]]:
    async with sigterm_cancels(run), agent_client(run) as client:
        accelerator, host = await host_accelerator(client)
        rows: list[Row] = []
        destroy_s: Series | None = None
        if args.runs > 0:
            row, destroy_s = await bench_boot(client, image, accelerator, run, args.runs)
            rows.append(row)
        mem_rows: list[MemRow] = []
        mem_raw: dict[str, Any] = {}
        if args.idle > 0:
            mem_rows, mem_raw = await bench_idle(client, run, args.idle, args.settle)
    return rows, destroy_s, mem_rows, mem_raw, host


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = vm_bench_parser(__doc__, idle=3)
    parser.add_argument("--runs", type=int, default=5, help="boots on each path, after a warm-up (default 5)")
    args = parser.parse_args(argv)
    if args.runs < 0 or args.idle < 0 or (args.runs == 0 and args.idle == 0):
        parser.error("--runs and --idle must be >= 0, and not both 0")
    if args.idle > 8:
        parser.error("--idle is at most 8 (the agent's slots)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    image, started, run = prepare_run(args, "boot-bench", PREFIX)
    with agent_running(run):
        rows, destroy_s, mem_rows, mem_raw, host = asyncio.run(main_async(args, run, image))
    if rows:
        print(row_table(rows))
    if mem_rows:
        if rows:
            print()
        print(memory_table(mem_rows, args.idle))
    report = {
        "host": host,
        "image": {"template": image.template, "version": image.version, "kernel": image.kernel_version},
        "config": {
            "runs": args.runs,
            "idle": args.idle,
            "settle_s": args.settle,
            "memory_mb": MEMORY_MB,
            "vcpus": VCPUS,
            "disk_size_mb": DISK_MB,
            "cold_boot": True,
            "statistic": "median, p90 of runs after one warm-up of each path, agent and bare alternating; "
            "ratio = agent median / bare median",
        },
        "rows": [r.to_json() for r in rows],
        "destroy_samples_s": destroy_s.samples if destroy_s is not None else [],
        "memory": [r.to_json() for r in mem_rows],
        "memory_raw": mem_raw,
    }
    write_results("boot", started, report)


if __name__ == "__main__":
    main()
