"""What the benchmarks share: statistics, formatting and tables, host state, the results file, cleanup that
runs whatever way a run ends, and a real host agent as a process, with every sandbox and bare QEMU it holds.

Not a benchmark itself: the scripts beside it import it (`python bench/<script>.py` puts `bench/` on
the path).
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psutil
from connectrpc.errors import ConnectError

from wrenn import images
from wrenn.agent._envd import EnvdClient, EnvdUnavailable
from wrenn.agent.network import GUEST_MAC
from wrenn.agent.vmm import Accelerator, VMSpec, console_tail
from wrenn.proto.envd.process.process_connect import ProcessClient
from wrenn.proto.envd.process.process_pb import ProcessConfig, StartRequest
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.auth import TOKEN_FILE, TokenInterceptor, TokenInterceptorSync, read_token
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient, HostAgentServiceClientSync

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DATA_DIR = Path("/var/tmp/wrenn-test-data")
MIB = 1 << 20
ENVD_PORT = 49983
BOOT_TIMEOUT_S = 300.0


# --- statistics ----------------------------------------------------------------------------------


def percentile(samples: list[float], pct: int) -> float:
    """The `pct`th percentile (1..99), interpolated between the samples as numpy's default does."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


@dataclasses.dataclass
class Series:
    name: str
    samples: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    def summary(self, pcts: tuple[int, ...] = (90,)) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": len(self.samples),
            "median_s": self.median,
            "min_s": min(self.samples),
            "max_s": max(self.samples),
            **{f"p{p}_s": percentile(self.samples, p) for p in pcts},
            "samples_s": self.samples,
        }


@dataclasses.dataclass
class Row:
    """An operation next to its baseline, measured in the same run."""

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


@dataclasses.dataclass
class MemRow:
    """One memory figure per idle sandbox (bytes), against the guest's RAM."""

    name: str
    samples: list[float]  # one per sandbox (the MemAvailable drop: a single value, total / N)
    guest_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def ratio(self) -> float:
        return self.median / self.guest_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "median_bytes": self.median,
            "min_bytes": min(self.samples),
            "max_bytes": max(self.samples),
            "guest_ram_bytes": self.guest_bytes,
            "ratio_to_guest_ram": self.ratio,
            "samples_bytes": self.samples,
        }


# --- formatting ----------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1e-3:
        return f"{sign}{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{sign}{seconds * 1e3:.2f} ms"
    return f"{sign}{seconds:.3f} s"


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def render_table(header: list[str], lines: list[list[str]], right: set[int]) -> str:
    """Columns padded to their widest cell; the columns in `right` aligned right."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def render(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([render(header), render(["-" * w for w in widths]), *(render(line) for line in lines)])


def row_table(rows: list[Row], *, added: bool = False) -> str:
    """Operations next to their baselines: medians, p90s, the ratio and (with `added`) the difference."""
    header = ["operation", "median", "p90", "baseline", "base median", "base p90", "ratio"]
    header += ["added"] if added else []
    lines = [
        [
            r.op.name,
            fmt_time(r.op.median),
            fmt_time(r.op.p90),
            r.baseline.name,
            fmt_time(r.baseline.median),
            fmt_time(r.baseline.p90),
            f"{r.ratio:.2f}x",
            *([("+" if r.added >= 0 else "") + fmt_time(r.added)] if added else []),
        ]
        for r in rows
    ]
    return render_table(header, lines, {1, 2, 4, 5, 6, 7})


def series_table(series: list[Series], pcts: tuple[int, ...] = (90,), title: str = "operation") -> str:
    header = [title, "n", "median", "min", "max", *(f"p{p}" for p in pcts)]
    lines = [
        [
            s.name,
            str(len(s.samples)),
            fmt_time(s.median),
            fmt_time(min(s.samples)),
            fmt_time(max(s.samples)),
            *(fmt_time(percentile(s.samples, p)) for p in pcts),
        ]
        for s in series
    ]
    return render_table(header, lines, set(range(1, len(header))))


def memory_table(rows: list[MemRow], n: int) -> str:
    header = [f"per idle sandbox (N={n})", "median", "min", "max", "guest RAM", "/ guest RAM"]
    lines = [
        [
            r.name,
            fmt_mib(r.median),
            fmt_mib(min(r.samples)),
            fmt_mib(max(r.samples)),
            fmt_mib(r.guest_bytes),
            f"{r.ratio:.2f}x",
        ]
        for r in rows
    ]
    return render_table(header, lines, {1, 2, 3, 4, 5})


# --- host state and the results file ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def vmm_pids(vm_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", f"-name {vm_id} "], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def other_agents() -> list[str]:
    """Host agents already running. Every agent started without address ranges of its own uses the same
    per-slot addresses (10.11.0.n, 10.12.0.2n/31), so one running beside ours fails our boots in a shared
    slot (`NetlinkError(17, 'File exists')`), and its VMs would skew the timings anyway."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "wrenn.agent" in cmdline and "-m" in cmdline:
            found.append(f"pid {proc.info['pid']}: {' '.join(cmdline)[:200]}")
    return found


def refuse_other_agents(allow: bool) -> None:
    others = other_agents()
    if others and not allow:
        listing = "\n  ".join(others)
        sys.exit(
            f"another host agent is running:\n  {listing}\nits network slots collide with this run's agent "
            "and its VMs skew the timings; wait for it to finish (or pass --allow-other-agents)"
        )


def check_vm_host(allow_other_agents: bool) -> None:
    """What every benchmark that starts VMs needs: root, QEMU, and the host to itself."""
    if os.geteuid() != 0:
        sys.exit("the host agent needs root")
    if shutil.which("qemu-system-x86_64") is None:
        sys.exit("qemu-system-x86_64 not found")
    refuse_other_agents(allow_other_agents)


def minimal_image(data_dir: Path) -> images.Image:
    image = images.find("minimal", data_dir)
    if image is None:
        print(f"building the minimal image under {data_dir} (once; takes minutes)", file=sys.stderr)
        image = images.build("minimal", data_dir, progress=True)
    return image


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_results(kind: str, started: datetime.datetime, report: dict[str, Any]) -> Path:
    """`bench/results/<kind>-<UTC timestamp>.json`, with the host's description added; prints its path."""
    host = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mem_total_bytes": psutil.virtual_memory().total,
        **report.pop("host", {}),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{kind}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"started": started.isoformat(), "host": host, **report}, indent=2) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")
    return out


def vm_bench_parser(doc: str | None, *, idle: int | None = None) -> argparse.ArgumentParser:
    """The options every benchmark that starts VMs has: --data-dir and --allow-other-agents; with `idle`,
    also --idle (that default) and --settle."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    if idle is not None:
        parser.add_argument(
            "--idle", type=int, default=idle, help=f"idle sandboxes for the memory figures (default {idle})"
        )
        parser.add_argument(
            "--settle", type=float, default=10.0, help="seconds the idle sandboxes settle (default 10)"
        )
    return parser


# --- operations ----------------------------------------------------------------------------------


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def envd_start(
    client: ProcessClient, cmd: str, args: list[str], headers: dict[str, str] | None = None
) -> Callable[[], Awaitable[None]]:
    """envd's `process.Process/Start` of a command that must exit 0, its stream consumed until `end`."""
    request = StartRequest(process=ProcessConfig(cmd=cmd, args=args))

    async def op() -> None:
        kinds: list[str] = []
        exit_code: int | None = None
        async for response in client.start(request, headers=headers, timeout_ms=30_000):
            event = response.event.event if response.event is not None else None
            if event is None:
                continue
            kinds.append(event.field)
            if event.field == "end":
                exit_code = event.value.exit_code  # type: ignore[union-attr]
        if "end" not in kinds or exit_code != 0:
            raise RuntimeError(f"envd Start of {[cmd, *args]}: events {kinds}, exit code {exit_code}")

    return op


# --- cleanup whatever way the run ends -----------------------------------------------------------


class Interruptible(Protocol):
    interrupted: bool  # set on SIGTERM (Ctrl-C raises KeyboardInterrupt)


def _forked_child(parent: int) -> bool:
    """In a child forked from us (pyroute2 forks to enter a netns, and stops the child with SIGTERM): die
    of the signal as the default would, so that it does not reach our handlers."""
    if os.getpid() == parent:
        return False
    os._exit(128 + signal.SIGTERM)


@contextlib.contextmanager
def guarded(state: Interruptible, cleanup: Callable[[bool], None]) -> Iterator[None]:
    """Run the body, then `cleanup(failed)` however it ends: normally, on an error, on Ctrl-C or SIGTERM
    (both held off during the cleanup itself, which would otherwise leave VMs behind). Interrupted, it
    exits with 130 once clean; an error is raised again after the cleanup."""
    parent = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:  # outside the event loop
        if _forked_child(parent):
            return
        state.interrupted = True
        raise KeyboardInterrupt  # the same path as Ctrl-C: unwind, then clean up

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    interrupted = failed = False
    try:
        yield
    except BaseException as exc:
        interrupted = state.interrupted or isinstance(exc, KeyboardInterrupt)
        failed = not interrupted
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup(failed)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
        if interrupted:
            print("interrupted; cleaned up (see any warning above)", file=sys.stderr)
            sys.exit(130)  # replaces the KeyboardInterrupt being raised
        if failed and (others := other_agents()):  # one started during the run: the likely cause
            listing = "\n  ".join(others)
            print(f"note: another host agent is running:\n  {listing}", file=sys.stderr)


@contextlib.asynccontextmanager
async def sigterm_cancels(state: Interruptible) -> AsyncIterator[None]:
    """Inside the event loop: SIGTERM and Ctrl-C cancel the running task and mark the run interrupted.

    asyncio.run's own Ctrl-C handling raises KeyboardInterrupt only when the task ends cancelled, and
    connectrpc turns a cancelled call into `ConnectError(CANCELED)`: so the flag, which `guarded` reads.
    Plain handlers, not `loop.add_signal_handler`: that one routes signals through a wakeup fd that forked
    children inherit, so a child that pyroute2 stops with SIGTERM would cancel our run."""
    task = asyncio.current_task()
    assert task is not None
    loop, parent = asyncio.get_running_loop(), os.getpid()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if _forked_child(parent):
            return
        state.interrupted = True
        loop.call_soon_threadsafe(task.cancel)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- a real host agent, and what it holds ---------------------------------------------------------


@dataclasses.dataclass
class AgentRun:
    """A host agent started by a benchmark, and everything to clean up, whatever way the run ends."""

    data_dir: Path  # the shared one: the image, the accelerator cache
    work_dir: Path  # the agent's own data dir (sandboxes, ready snapshots, log), and the bare VMs' dirs
    prefix: str  # the agent's name prefix (netns, links, memory files, cgroups)
    slots: int = 8
    nets: tuple[str, str] | None = None  # the agent's --host-net and --veth-net (None: its defaults)
    agent_args: tuple[str, ...] = ()  # more arguments for the agent (e.g. --log-format json)
    agent: subprocess.Popen[bytes] | None = None
    agent_port: int = 0
    agent_log: Path | None = None
    sandboxes: set[str] = dataclasses.field(default_factory=set)  # created (or being created) by us
    bare: dict[str, int] = dataclasses.field(default_factory=dict)  # bare QEMUs we started: name -> pid
    vm_ids: set[str] = dataclasses.field(default_factory=set)  # every VM name used, for the final check
    #: Run once the bare QEMUs are dead (e.g. removing their networks); `netns_prefixes` are checked too.
    cleanups: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    netns_prefixes: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"


def make_work_dir(data_dir: Path, name: str) -> Path:
    """A private data dir for our agent: its `images` a link to the shared ones, the accelerator cache copied.

    Not the shared data dir itself: an agent that starts there (a test suite) removes every sandbox
    directory it does not own, ours included, while they boot.
    """
    work_dir = Path(tempfile.mkdtemp(prefix=f"wrenn-{name}-", dir="/var/tmp"))
    work_dir.chmod(0o755)
    (work_dir / "images").symlink_to((data_dir / "images").resolve())
    cache = data_dir / "accelerator.json"
    if cache.exists():
        shutil.copyfile(cache, work_dir / "accelerator.json")
    return work_dir


def start_agent(run: AgentRun) -> None:
    """`python -m wrenn.agent` on loopback with the run's data dir, prefix and slots; back once it listens."""
    port = run.agent_port or free_port()
    log = run.work_dir / f"agent-{run.prefix}-{port}.log"
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    nets = ["--host-net", run.nets[0], "--veth-net", run.nets[1]] if run.nets else []
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrenn.agent", "--data-dir", str(run.work_dir), "--host", "127.0.0.1",
             "--port", str(port), "--proxy-port", str(free_port()), "--name-prefix", run.prefix,
             "--slots", str(run.slots), *nets,
             *run.agent_args],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    run.agent, run.agent_port, run.agent_log = proc, port, log
    deadline = time.monotonic() + 120  # the first start may probe the accelerator
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"agent did not listen within 120 s:\n{log.read_text()[-3000:]}")


def agent_client(run: AgentRun) -> HostAgentServiceClient:
    """A client of our agent that sends its secret (the file it made at start)."""
    token = read_token(run.work_dir / TOKEN_FILE)
    return HostAgentServiceClient(run.url, interceptors=[TokenInterceptor(token)])


def agent_client_sync(run: AgentRun) -> HostAgentServiceClientSync:
    return HostAgentServiceClientSync(
        run.url, interceptors=[TokenInterceptorSync(read_token(run.work_dir / TOKEN_FILE))]
    )


def leftovers(run: AgentRun) -> list[str]:
    """QEMU processes of our VM names and network namespaces of our prefix still there."""
    found: list[str] = []
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if any(f"-name {vm_id} " in line for vm_id in run.vm_ids) or f"/{run.prefix}-_pool-" in line:
            found.append(f"qemu process: {line[:160]}")
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    prefixes = (run.prefix, *run.netns_prefixes)
    found += [f"netns: {line.split()[0]}" for line in out.splitlines() if line.startswith(prefixes)]
    return found


def sandbox_vmm_pids(run: AgentRun, sandbox_id: str) -> list[int]:
    """The VMM of one of our agent's sandboxes, as its `state.json` records it (a sandbox claimed from the
    warm pool runs in a VMM named after the pool member, not after itself)."""
    for state_file in run.work_dir.glob("sandboxes/*/state.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads(state_file.read_text())
            if state["params"]["sandbox_id"] == sandbox_id and isinstance(state.get("vmm_pid"), int):
                return [state["vmm_pid"]] if psutil.pid_exists(state["vmm_pid"]) else []
    return vmm_pids(sandbox_id)


def kill_bare(run: AgentRun) -> None:
    for pid in run.bare.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # already reaped (by asyncio's child watcher)
            os.waitpid(pid, 0)
    run.bare.clear()


def cleanup_agent(run: AgentRun, *, keep_dir: bool) -> None:
    """Kill bare QEMUs, destroy every sandbox, Terminate the agent; then report what is left, and remove our
    data dir unless something was left or `keep_dir` (after an error: the agent log is there)."""
    kill_bare(run)
    for step in run.cleanups:
        try:
            step()
        except Exception as exc:  # the leftover check below reports what it left
            print(f"cleanup step failed: {exc!r}", file=sys.stderr)
    run.cleanups.clear()
    if run.agent is not None:
        try:
            if run.agent.poll() is not None and run.sandboxes:
                # The agent died: a new one on the same prefix adopts what it left and destroys it below.
                print("agent is gone; restarting it to clean up", file=sys.stderr)
                start_agent(run)
            if run.agent.poll() is None:
                with agent_client_sync(run) as client:
                    for sandbox_id in sorted(run.sandboxes):
                        try:
                            client.destroy_sandbox(
                                pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout_ms=60_000
                            )
                        except ConnectError as exc:  # already gone is fine; Terminate follows anyway
                            if exc.code.name != "NOT_FOUND":
                                print(f"destroy {sandbox_id}: {exc}", file=sys.stderr)
                    run.sandboxes.clear()
                    client.terminate(pb.TerminateRequest(), timeout_ms=120_000)
                run.agent.wait(60)
        except Exception as exc:  # fall through to the kill and the leftover check
            print(f"agent cleanup failed: {exc!r}; log: {run.agent_log}", file=sys.stderr)
        finally:
            if run.agent.poll() is None:
                run.agent.send_signal(signal.SIGTERM)
                try:
                    run.agent.wait(30)
                except subprocess.TimeoutExpired:
                    run.agent.kill()
                    run.agent.wait()
    left = leftovers(run)
    for item in left:
        print(f"WARNING: left running: {item}", file=sys.stderr)
    if left or keep_dir:
        print(f"kept the agent's data dir {run.work_dir} (log: {run.agent_log})", file=sys.stderr)
    else:
        shutil.rmtree(run.work_dir, ignore_errors=True)  # `images` is a link: removed, not followed


def prepare_run(
    args: argparse.Namespace, name: str, prefix: str, *, slots: int = 8,
    nets: tuple[str, str] | None = None, agent_args: tuple[str, ...] = (),
) -> tuple[images.Image, datetime.datetime, AgentRun]:  # fmt: skip
    """Check the host (`check_vm_host`), find or build the image, and make the run's private data dir:
    the image, the start time, and the run, whose agent `agent_running` starts."""
    check_vm_host(args.allow_other_agents)
    image = minimal_image(args.data_dir)
    work_dir = make_work_dir(args.data_dir, f"{name}-{prefix}")
    run = AgentRun(args.data_dir, work_dir, prefix, slots=slots, nets=nets, agent_args=agent_args)
    return image, now(), run


@contextlib.contextmanager
def agent_running(run: AgentRun) -> Iterator[AgentRun]:
    """Start the run's agent; at the end, however it comes, clean up everything it and we hold."""
    with guarded(run, lambda failed: cleanup_agent(run, keep_dir=failed)):
        start_agent(run)
        yield run


async def host_accelerator(client: HostAgentServiceClient) -> tuple[Accelerator, dict[str, Any]]:
    """The accelerator the agent uses, and the host's facts for the results file."""
    info = await client.get_host_info(pb.GetHostInfoRequest())
    accelerator = Accelerator.KVM if info.accelerator == pb.Accelerator.KVM else Accelerator.TCG
    print(f"agent up: {accelerator.value} ({info.accelerator_reason[:80]})", file=sys.stderr)
    host = {"accelerator": accelerator.value, "accelerator_reason": info.accelerator_reason,
            "vmm_version": info.vmm_version}  # fmt: skip
    return accelerator, host


async def agent_create(
    client: HostAgentServiceClient, run: AgentRun, request: pb.CreateSandboxRequest
) -> tuple[float, pb.SandboxInfo]:
    """CreateSandbox until RUNNING; the seconds it took, and the sandbox."""
    run.sandboxes.add(request.sandbox_id)
    run.vm_ids.add(request.sandbox_id)
    start = time.perf_counter()
    response = await client.create_sandbox(request, timeout_ms=int(BOOT_TIMEOUT_S * 1000))
    elapsed = time.perf_counter() - start
    sandbox = response.sandbox
    if sandbox is None or sandbox.status != pb.SandboxStatus.RUNNING:
        error = sandbox.error if sandbox is not None else "no sandbox in the response"
        raise RuntimeError(f"{request.sandbox_id} did not come up RUNNING: {error}")
    return elapsed, sandbox


async def agent_destroy(client: HostAgentServiceClient, run: AgentRun, sandbox_id: str) -> float:
    start = time.perf_counter()
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout_ms=60_000)
    run.sandboxes.discard(sandbox_id)
    return time.perf_counter() - start


# --- bare QEMU beside the agent ------------------------------------------------------------------


def user_net(port: int, guest_ip: str) -> tuple[str, ...]:
    """QEMU user-mode networking (no netns, no TAP) with host port `port` forwarded to envd in the guest,
    on the NIC the agent gives its VMs (same device, same MAC)."""
    return (
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-{guest_ip}:{ENVD_PORT}",
        "-device", f"virtio-net-device,netdev=net0,mac={GUEST_MAC}",
    )  # fmt: skip


async def wait_envd(host: str, port: int, workdir: Path, alive: Callable[[], bool]) -> None:
    """Until envd at `host:port` answers `GET /health` with 204, polled as the agent polls (its own probe:
    1 s timeout, 0.1 s between tries); the end of QEMU's log and of the console on failure."""
    async with EnvdClient(host, access_token=None, port=port) as envd:
        try:
            await envd.wait_healthy(BOOT_TIMEOUT_S, alive=alive)
        except EnvdUnavailable as exc:
            said = (workdir / "qemu.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bare qemu: {exc}: {said}\n{console_tail(workdir / 'console.log')}") from None


async def idle_memory(
    client: HostAgentServiceClient,
    run: AgentRun,
    requests: list[pb.CreateSandboxRequest],
    settle_s: float,
    more: Callable[[int], dict[str, int]] = lambda pid: {},
) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """Create the sandboxes one after the other (each one idle is measured, not a boot storm), let them
    settle, then per VMM its PSS and RSS (and `more(pid)`), and the host's MemAvailable drop per sandbox;
    destroy them. Returns the per-VMM figures and the raw data for the results file."""
    before = mem_available()
    print(f"creating {len(requests)} idle sandboxes, then {settle_s:.0f} s to settle", file=sys.stderr)
    for request in requests:
        _, info = await agent_create(client, run, request)
        if info.from_snapshot == request.cold_boot:
            raise RuntimeError(f"{request.sandbox_id}: from_snapshot={info.from_snapshot} with {request}")
    await asyncio.sleep(settle_s)
    per_vm: dict[str, dict[str, int]] = {}
    for request in requests:
        pids = sandbox_vmm_pids(run, request.sandbox_id)
        if len(pids) != 1:
            raise RuntimeError(f"expected one VMM process for {request.sandbox_id}, found {pids}")
        info = psutil.Process(pids[0]).memory_full_info()
        per_vm[request.sandbox_id] = {"pss_bytes": int(info.pss), "rss_bytes": int(info.rss), **more(pids[0])}
    after = mem_available()
    for request in requests:
        await agent_destroy(client, run, request.sandbox_id)
    raw = {
        "mem_available_before_bytes": before,
        "mem_available_after_bytes": after,
        "mem_available_drop_per_sandbox_bytes": (before - after) / len(requests),
        "per_sandbox": per_vm,
    }
    return per_vm, raw


def memory_rows(
    per_vm: dict[str, dict[str, int]], raw: dict[str, Any], guest_bytes: int, names: list[tuple[str, str]]
) -> list[MemRow]:
    """A row per (name, key of the per-VMM figures), and the MemAvailable drop / N."""
    rows = [MemRow(name, [float(v[key]) for v in per_vm.values()], guest_bytes) for name, key in names]
    drop = MemRow("MemAvailable drop / N", [raw["mem_available_drop_per_sandbox_bytes"]], guest_bytes)
    return [*rows, drop]


def agent_spec(
    image: images.Image, accelerator: Accelerator, vm_id: str, workdir: Path, vcpus: int, memory_mb: int,
    net_cmdline: str, rootfs: Path,
) -> VMSpec:  # fmt: skip
    """The VMSpec the agent's `_spec()` makes for a QEMU sandbox, without a network (set it with
    `dataclasses.replace`: tap/mac/netns, or `extra_args`) and with guest RAM in anonymous memory."""
    cmdline = f"root=/dev/vda rw quiet {net_cmdline} wrenn.hostname={vm_id} wrenn.time={int(time.time())}"
    return VMSpec(
        vm_id=vm_id, vcpus=vcpus, memory_mib=memory_mb, kernel=image.vmlinuz, initrd=image.initrd,
        cmdline=cmdline, rootfs=rootfs, rootfs_format="qcow2", workdir=workdir, accelerator=accelerator,
    )  # fmt: skip
