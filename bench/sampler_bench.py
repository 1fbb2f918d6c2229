"""What the agent's metrics sampler costs: the host agent's own CPU time with N idle sandboxes, sampling on
(`--metrics-interval 1`, the default) and off (`--metrics-interval 0`).

For each setting it starts a real host agent (loopback, its own prefix and networks), creates N sandboxes
of the `minimal` image (1 vCPU, 256 MB, a 1 GB disk), lets them settle, then reads the agent process's CPU
time (user + system, `psutil`; the agent alone, not its QEMUs) over a fixed window in which nothing is
asked of it. The difference between the two is the sampler's cost. Prints a table and writes it to
`bench/results/sampler-<UTC timestamp>.json`.

    .venv/bin/python bench/sampler_bench.py [--idle 10] [--window 60] [--settle 10] [--allow-other-agents]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import psutil

from _common import (
    AgentRun,
    agent_client,
    agent_create,
    agent_running,
    host_accelerator,
    prepare_run,
    render_table,
    vm_bench_parser,
    write_results,
)
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

TAG = f"sm{os.getpid() % 1000:03d}"
NETS = ("10.232.0.0/16", "10.233.0.0/16")
SETTINGS = (("on", "1"), ("off", "0"))
VCPUS, MEMORY_MB, DISK_MB = 1, 256, 1024


async def measure(run: AgentRun, idle: int, settle_s: float, window_s: float) -> dict[str, Any]:
    async with agent_client(run) as client:
        _, host = await host_accelerator(client)
        started = time.perf_counter()
        for i in range(idle):
            request = pb.CreateSandboxRequest(
                sandbox_id=f"cl-{TAG}{run.prefix[-1]}{i:02d}", template="minimal", vcpus=VCPUS,
                memory_mb=MEMORY_MB, disk_size_mb=DISK_MB, timeout_sec=0,
            )  # fmt: skip
            await agent_create(client, run, request)
        created_s = time.perf_counter() - started
        await asyncio.sleep(settle_s)
        assert run.agent is not None
        agent = psutil.Process(run.agent.pid)
        before, t0 = agent.cpu_times(), time.perf_counter()
        await asyncio.sleep(window_s)
        after, t1 = agent.cpu_times(), time.perf_counter()
    cpu_s = (after.user - before.user) + (after.system - before.system)
    return {"host": host, "created_s": created_s, "window_s": t1 - t0, "cpu_s": cpu_s,
            "cpu_pct_of_core": 100 * cpu_s / (t1 - t0), "load_avg": os.getloadavg()}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = vm_bench_parser(__doc__, idle=10)
    parser.add_argument("--window", type=float, default=60.0, help="seconds CPU time is read over (60)")
    args = parser.parse_args(argv)
    if not 1 <= args.idle <= 16:
        parser.error("--idle: 1 to 16")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    started = None
    for name, interval in SETTINGS:
        _, begun, run = prepare_run(
            args, "sampler-bench", f"{TAG}{name[1]}", slots=args.idle, nets=NETS,
            agent_args=("--metrics-interval", interval),
        )  # fmt: skip
        started = started or begun
        with agent_running(run):
            results[name] = asyncio.run(measure(run, args.idle, args.settle, args.window))
        print(f"sampling {name}: {results[name]['cpu_s']:.2f} s CPU in {results[name]['window_s']:.0f} s",
              file=sys.stderr)  # fmt: skip
    on, off = results["on"], results["off"]
    lines = [
        [name, f"{r['cpu_s']:.2f} s", f"{r['window_s']:.0f} s", f"{r['cpu_pct_of_core']:.2f} %",
         f"{r['cpu_pct_of_core'] / args.idle * 10:.2f} %"]
        for name, r in results.items()
    ]  # fmt: skip
    cost = on["cpu_pct_of_core"] - off["cpu_pct_of_core"]
    lines.append(["difference", f"{on['cpu_s'] - off['cpu_s']:.2f} s", "", f"{cost:.2f} %",
                  f"{cost / args.idle * 10:.2f} %"])  # fmt: skip
    header = ["sampling", "agent CPU", "window", "% of a core", f"per 10 idle (of {args.idle})"]
    print(render_table(header, lines, right={1, 2, 3, 4}))
    assert started is not None
    write_results("sampler", started, {
        "config": {"idle": args.idle, "window_s": args.window, "settle_s": args.settle, "vcpus": VCPUS,
                   "memory_mb": MEMORY_MB, "intervals": dict(SETTINGS)},
        "results": results, "sampler_cost_pct_of_core": cost,
    })  # fmt: skip


if __name__ == "__main__":
    main()
