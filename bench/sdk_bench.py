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
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from connectrpc.codec import proto_json_codec

from wrenn import Capsule
from wrenn.proto.envd.process.process_connect import ProcessClient
from wrenn.proto.envd.process.process_pb import ProcessConfig, StartRequest
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DATA_DIR = Path("/var/tmp/wrenn-test-data")
WRENN = [sys.executable, "-c", "from wrenn.cli import main; main()"]
MEMORY_MB = 256
ENVD_PORT = 49983
COMMAND_TIMEOUT_S = 30  # the SDK's default for `commands.run`; sent on every path
SHELL, SHELL_ARGS = "/bin/sh", ["-c", "true"]  # what the SDK's `run("true")` asks the control plane for


# --- statistics ----------------------------------------------------------------------------------


def p90(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=10, method="inclusive")[8]


@dataclasses.dataclass
class Series:
    name: str
    samples: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return p90(self.samples)


@dataclasses.dataclass
class Row:
    op: Series
    baseline: Series

    @property
    def ratio(self) -> float:
        return self.op.median / self.baseline.median

    @property
    def added(self) -> float:
        return self.op.median - self.baseline.median

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.op.name,
            "median_s": self.op.median,
            "p90_s": self.op.p90,
            "baseline": self.baseline.name,
            "baseline_median_s": self.baseline.median,
            "baseline_p90_s": self.baseline.p90,
            "ratio": self.ratio,
            "added_median_s": self.added,
            "samples_s": self.op.samples,
            "baseline_samples_s": self.baseline.samples,
        }


def fmt_time(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1e-3:
        return f"{sign}{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{sign}{seconds * 1e3:.2f} ms"
    return f"{sign}{seconds:.3f} s"


def table(rows: list[Row]) -> str:
    header = ["operation", "median", "p90", "baseline", "base median", "base p90", "ratio", "added"]
    lines = [
        [
            r.op.name,
            fmt_time(r.op.median),
            fmt_time(r.op.p90),
            r.baseline.name,
            fmt_time(r.baseline.median),
            fmt_time(r.baseline.p90),
            f"{r.ratio:.2f}x",
            ("+" if r.added >= 0 else "") + fmt_time(r.added),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {1, 2, 4, 5, 6, 7}

    def render(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([render(header), render(["-" * w for w in widths]), *(render(line) for line in lines)])


# --- the platform, and what it holds -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def other_agents() -> list[str]:
    """Host agents already running. `wrenn up`'s agent uses the default per-slot addresses, as every agent
    started without address ranges does: a boot in a shared slot fails, and foreign VMs skew the timings."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "wrenn.agent" in cmdline and "-m" in cmdline:
            found.append(f"pid {proc.info['pid']}: {' '.join(cmdline)[:200]}")
    return found


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


def platform_up(state: State) -> dict[str, Any]:
    ports = ["--port", str(free_port()), "--agent-port", str(free_port())]
    state.up_started = True
    print(f"wrenn up --detach --data-dir {state.data_dir} {' '.join(ports)}", file=sys.stderr)
    up = wrenn("up", "--detach", "--data-dir", str(state.data_dir), *ports, timeout=900)
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


@contextlib.contextmanager
def cleaned_up(state: State) -> Iterator[State]:
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        state.interrupted = True
        raise KeyboardInterrupt  # the same path as Ctrl-C: unwind, then clean up

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    failed = False
    try:
        yield state
    except BaseException:
        failed = not (state.interrupted or sys.exc_info()[0] is KeyboardInterrupt)
        raise
    finally:
        # Ctrl-C during the cleanup itself would leave the VM and the platform behind: hold it off until done.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup(state, keep_dir=failed)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


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


def envd_start(client: ProcessClient, token: str) -> Callable[[], Awaitable[None]]:
    request = StartRequest(process=ProcessConfig(cmd=SHELL, args=SHELL_ARGS))
    headers = {"X-Access-Token": token}

    async def op() -> None:
        kinds: list[str] = []
        exit_code: int | None = None
        async for response in client.start(request, headers=headers, timeout_ms=COMMAND_TIMEOUT_S * 1000):
            event = response.event.event if response.event is not None else None
            if event is None:
                continue
            kinds.append(event.field)
            if event.field == "end":
                exit_code = event.value.exit_code  # type: ignore[union-attr]
        if "end" not in kinds or exit_code != 0:
            raise RuntimeError(f"envd Start of `true`: events {kinds}, exit code {exit_code}")

    return op


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


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
               (envd_s, envd_start(envd, token))]  # fmt: skip
        for _ in range(warmup):  # connections, first-call paths in every process on the way
            for _, fn in ops:
                await fn()
        for i in range(runs):  # interleaved, and the order rotated, so drift and position hit all alike
            for series, fn in ops[i % len(ops) :] + ops[: i % len(ops)]:
                series.samples.append(await timed(fn))
    return [Row(sdk_s, envd_s), Row(agent_s, envd_s), Row(sdk_s, agent_s)]


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="measured runs of each path (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs of each path (default 3)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"where the built images are, linked from the private data dir (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--allow-other-agents",
        action="store_true",
        help="run even when another host agent is running (its slots collide with ours; timings skewed)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the host agent needs root")
    others = other_agents()
    if others and not args.allow_other_agents:
        listing = "\n  ".join(others)
        sys.exit(
            f"another host agent is running:\n  {listing}\nits network slots collide with this run's agent "
            "and its VMs skew the timings; wait for it to finish (or pass --allow-other-agents)"
        )
    (args.data_dir / "images").mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    state = State(shared_dir=args.data_dir, data_dir=make_data_dir(args.data_dir))
    try:
        with cleaned_up(state):
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
    except BaseException as exc:
        if state.interrupted or isinstance(exc, KeyboardInterrupt):
            print("interrupted; cleaned up (see any warning above)", file=sys.stderr)
            sys.exit(130)
        raise
    print(table(rows))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"sdk-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "started": started.isoformat(),
        "host": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
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
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
