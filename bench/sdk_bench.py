"""Benchmark a command through the SDK against the same command sent to the agent and to envd directly.

Brings the whole platform up with `wrenn up --detach` (control plane on SQLite, host agent; a private data dir
whose `images` links to the shared one, free loopback ports), creates one capsule with the SDK
(`Capsule(memory_mb=256)`), then measures on that one VM, interleaved so that load on the machine hits every
path the same:

* SDK: `capsule.commands.run("true")`, i.e. `POST /v1/capsules/{id}/exec` on the control plane (REST), which
  calls the host agent's `Exec` RPC, which runs `process.Process/Start` on envd in the guest;
* agent: the host agent's `Exec` RPC directly (`HostAgentServiceClient`), `/bin/sh -c true`;
* direct envd, the baseline: envd's Connect API at `http://<host_ip>:49983` (`X-Access-Token`: the capsule's
  envd token, read from the control plane's SQLite database), `process.Process/Start` of `/bin/sh -c true`
  over connectrpc's async client (JSON codec, as the agent uses it) until the end event.

Prints a table (median, p90, ratio to direct envd, and the median time each layer adds) and writes the same
data, with every sample, to `bench/results/sdk-<timestamp>.json`. At the end, also on errors, Ctrl-C and
SIGTERM, the capsule is destroyed and `wrenn down` stops the platform; leftovers (a QEMU of the capsule, a
process of the data dir) are reported, and processes of the data dir are stopped by pid.

    .venv/bin/python bench/sdk_bench.py [--runs 30] [--warmup 3] [--data-dir /var/tmp/wrenn-test-data]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
from connectrpc.codec import proto_json_codec

from _common import (
    ENVD_PORT,
    REPO,
    Row,
    Series,
    envd_start,
    free_port,
    guarded,
    now,
    refuse_other_agents,
    row_table,
    timed,
    vm_bench_parser,
    write_results,
)
from wrenn import Capsule
from wrenn.proto.envd.process.process_connect import ProcessClient
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

WRENN = [sys.executable, "-c", "from wrenn.cli import main; main()"]
MEMORY_MB = 256
COMMAND_TIMEOUT_S = 30  # the SDK's default for `commands.run`; sent on every path
SHELL, SHELL_ARGS = "/bin/sh", ["-c", "true"]  # what the SDK's `run("true")` asks the control plane for


# --- the platform, and what it holds -------------------------------------------------------------


@dataclasses.dataclass
class State:
    """Everything to clean up, whatever way the run ends."""

    shared_dir: Path  # holds the images
    data_dir: Path  # the platform's own: wrenn.db, platform.json, logs, sandboxes
    capsule: Capsule | None = None
    capsule_id: str | None = None
    up_started: bool = False
    interrupted: bool = False


def make_data_dir(shared: Path) -> Path:
    """A private data dir whose `images` is the shared one (an agent removes every sandbox directory it
    does not own, so two agents must never share a data dir)."""
    directory = Path(tempfile.mkdtemp(prefix="wrenn-sdk-bench-", dir="/var/tmp"))
    (directory / "images").symlink_to((shared / "images").resolve())
    return directory


def wrenn(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WRENN, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def platform_up(state: State, *extra: str) -> dict[str, Any]:
    """`wrenn up --detach` on the state's data dir and free ports (plus `extra` arguments)."""
    ports = ["--port", str(free_port()), "--agent-port", str(free_port()), *extra]
    state.up_started = True
    print(f"wrenn up --detach --data-dir {state.data_dir} {' '.join(ports)}", file=sys.stderr)
    up = wrenn("up", "--detach", "--data-dir", str(state.data_dir), *ports, timeout=1800)
    if up.returncode != 0:
        raise RuntimeError(f"wrenn up failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-3000:]}")
    saved: dict[str, Any] = json.loads((state.data_dir / "platform.json").read_text())
    return saved


def envd_token(data_dir: Path, capsule_id: str) -> str:
    db = sqlite3.connect(f"file:{data_dir / 'wrenn.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT envd_token FROM sandboxes WHERE id=?", (capsule_id,)).fetchone()
    finally:
        db.close()
    if row is None or not row[0]:
        raise RuntimeError(f"no envd token for {capsule_id} in {data_dir / 'wrenn.db'}")
    return str(row[0])


def data_dir_pids(data_dir: Path) -> list[int]:
    """Processes started with this data dir (the agent, the control plane) that are still running."""
    out = subprocess.run(["pgrep", "-f", f"--data-dir {data_dir}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def leftovers(state: State) -> list[str]:
    found: list[str] = []
    if state.capsule_id is not None:
        out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
        found += [f"qemu process: {line[:160]}" for line in out.splitlines() if state.capsule_id in line]
    found += [f"process of the data dir: pid {pid}" for pid in data_dir_pids(state.data_dir)]
    return found


def stop_pids(pids: list[int]) -> None:
    """SIGTERM (the agent then destroys its VMs and removes its host rules), SIGKILL after 30 s."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=30)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def cleanup(state: State, *, keep_dir: bool) -> None:
    if state.capsule is not None:
        try:
            state.capsule.destroy()
            print(f"destroyed capsule {state.capsule_id}", file=sys.stderr)
        except Exception as exc:  # `wrenn down` destroys it anyway
            print(f"destroying capsule {state.capsule_id} failed: {exc!r}", file=sys.stderr)
    if state.up_started:
        try:
            down = wrenn("down", "--data-dir", str(state.data_dir), timeout=300)
            if down.returncode != 0:
                print(f"wrenn down failed ({down.returncode}):\n{down.stderr[-2000:]}", file=sys.stderr)
            else:
                print("wrenn down: platform stopped", file=sys.stderr)
        except subprocess.TimeoutExpired:
            print("wrenn down did not finish within 300 s", file=sys.stderr)
        # `up` interrupted before it saved platform.json leaves its agent and server to `down`'s blind spot.
        if pids := data_dir_pids(state.data_dir):
            print(f"stopping processes left of the data dir: {pids}", file=sys.stderr)
            stop_pids(pids)
    if left := leftovers(state):
        keep_dir = True
        print("WARNING, left behind:\n  " + "\n  ".join(left), file=sys.stderr)
    else:
        print("verified: no QEMU of the capsule, no process of the data dir", file=sys.stderr)
    if keep_dir:
        print(f"kept {state.data_dir} (logs under logs/)", file=sys.stderr)
    else:
        shutil.rmtree(state.data_dir, ignore_errors=True)


# --- the operations ------------------------------------------------------------------------------


def sdk_run(capsule: Capsule) -> Callable[[], Awaitable[None]]:
    async def op() -> None:  # the SDK is synchronous: it blocks the loop, which has nothing else to do
        result = capsule.commands.run("true", timeout=COMMAND_TIMEOUT_S)
        if result.exit_code != 0:
            raise RuntimeError(f"SDK run of `true`: exit code {result.exit_code}, stderr {result.stderr!r}")

    return op


def agent_exec(client: HostAgentServiceClient, capsule_id: str) -> Callable[[], Awaitable[None]]:
    request = pb.ExecRequest(sandbox_id=capsule_id, cmd=SHELL, args=SHELL_ARGS, timeout_sec=COMMAND_TIMEOUT_S)

    async def op() -> None:
        response = await client.exec(request, timeout_ms=(COMMAND_TIMEOUT_S + 30) * 1000)
        if not response.exited or response.exit_code != 0:
            raise RuntimeError(f"agent Exec of `true`: {response}")

    return op


async def measure(
    capsule: Capsule, agent_url: str, envd_url: str, token: str, runs: int, warmup: int
) -> list[Row]:
    sdk_s = Series("SDK commands.run (REST -> agent -> envd)")
    agent_s = Series("agent Exec RPC (-> envd)")
    envd_s = Series("direct envd Process/Start")
    async with (
        HostAgentServiceClient(agent_url) as agent,
        ProcessClient(envd_url, codec=proto_json_codec()) as envd,
    ):
        ops = [(sdk_s, sdk_run(capsule)), (agent_s, agent_exec(agent, capsule.capsule_id)),
               (envd_s, envd_start(envd, SHELL, SHELL_ARGS, {"X-Access-Token": token}))]  # fmt: skip
        for _ in range(warmup):  # connections, first-call paths in every process on the way
            for _, fn in ops:
                await fn()
        for i in range(runs):  # interleaved, and the order rotated, so drift and position hit all alike
            for series, fn in ops[i % len(ops) :] + ops[: i % len(ops)]:
                series.samples.append(await timed(fn))
    return [Row(sdk_s, envd_s), Row(agent_s, envd_s), Row(sdk_s, agent_s)]


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = vm_bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=30, help="measured runs of each path (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs of each path (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1, --warmup at least 0")
    return args


def prepare(args: argparse.Namespace) -> State:
    """Root, no other host agent (unless allowed), and a private data dir over `--data-dir`'s images."""
    if os.geteuid() != 0:
        sys.exit("the host agent needs root")
    refuse_other_agents(args.allow_other_agents)
    (args.data_dir / "images").mkdir(parents=True, exist_ok=True)
    return State(shared_dir=args.data_dir, data_dir=make_data_dir(args.data_dir))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = now()
    state = prepare(args)
    with guarded(state, lambda failed: cleanup(state, keep_dir=failed)):
        saved = platform_up(state)
        began = time.perf_counter()
        state.capsule = Capsule(memory_mb=MEMORY_MB, api_key=saved["api_key"], base_url=saved["base_url"])
        state.capsule_id = state.capsule.capsule_id
        state.capsule.wait_ready(timeout=300)
        create_s = time.perf_counter() - began
        info = state.capsule.get_info()
        if not info.host_ip:
            raise RuntimeError(f"capsule {info.id} has no host_ip: {info}")
        envd_url = f"http://{info.host_ip}:{ENVD_PORT}"
        token = envd_token(state.data_dir, info.id)
        print(f"capsule {info.id} running in {create_s:.1f} s; envd at {envd_url}", file=sys.stderr)
        rows = asyncio.run(
            measure(state.capsule, saved["agent_url"], envd_url, token, args.runs, args.warmup)
        )
    print(row_table(rows, added=True))
    report = {
        "capsule": {"id": state.capsule_id, "memory_mb": MEMORY_MB, "create_to_running_s": create_s},
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "command": [SHELL, *SHELL_ARGS],
            "statistic": "median, p90 of runs after the warm-ups, the three paths interleaved "
            "(order rotated); ratio = op median / baseline median; added = op median - baseline median",
        },
        "rows": [r.to_json() for r in rows],
    }
    write_results("sdk", started, report)


if __name__ == "__main__":
    main()
