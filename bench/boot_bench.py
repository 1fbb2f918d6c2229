"""Benchmark sandbox boot through the host agent against a bare QEMU boot, and idle sandboxes' host memory.

Starts a real host agent (`python -m wrenn.agent`, root, on a free loopback port, its own name prefix), then:

* cold boot: `CreateSandbox` (256 MiB, 1 vCPU) until it returns RUNNING, which the agent answers only after
  envd in the guest answered `GET /health` and `POST /init`; then `DestroySandbox` (not timed);
* bare boot, the baseline: `qemu-system-x86_64` run directly with the agent's own command line
  (`QemuDriver.command`: same machine, accelerator, kernel, initrd and kernel arguments) on a fresh qcow2
  overlay of the same image, but user-mode networking with a host port forwarded to envd, and no netns,
  cgroup, `-runas` or seccomp; timed from spawn until `GET /health` answers 204. Agent and bare runs
  alternate, so load on the machine hits both the same;
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
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil
from connectrpc.errors import ConnectError

from wrenn import images
from wrenn.agent.vmm import Accelerator, VMSpec
from wrenn.agent.vmm.qemu import QemuDriver
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient, HostAgentServiceClientSync

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DATA_DIR = Path("/var/tmp/wrenn-test-data")
MEMORY_MB = 256
VCPUS = 1
DISK_MB = 2048  # the image's own size: no online resize2fs in the guest, in either path
ENVD_PORT = 49983
GUEST_IP = "10.0.2.15"  # QEMU user-mode networking: guest, gateway, DNS
GATEWAY = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"
BOOT_TIMEOUT_S = 300.0
MIB = 1 << 20
TAG = f"bb{os.getpid() % 1000:03d}"
PREFIX = f"{TAG}x"  # the agent's name prefix: starts and ends with a letter


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

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.op.name,
            "median_s": self.op.median,
            "p90_s": self.op.p90,
            "baseline": self.baseline.name,
            "baseline_median_s": self.baseline.median,
            "baseline_p90_s": self.baseline.p90,
            "ratio": self.ratio,
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


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


def render_table(header: list[str], lines: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def render(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([render(header), render(["-" * w for w in widths]), *(render(line) for line in lines)])


def boot_table(rows: list[Row]) -> str:
    header = ["operation", "median", "p90", "baseline", "base median", "base p90", "ratio"]
    lines = [
        [
            r.op.name,
            fmt_time(r.op.median),
            fmt_time(r.op.p90),
            r.baseline.name,
            fmt_time(r.baseline.median),
            fmt_time(r.baseline.p90),
            f"{r.ratio:.2f}x",
        ]
        for r in rows
    ]
    return render_table(header, lines, {1, 2, 4, 5, 6})


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


# --- host state ----------------------------------------------------------------------------------


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


def leftovers(vm_ids: set[str]) -> list[str]:
    found: list[str] = []
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if any(f"-name {vm_id} " in line for vm_id in vm_ids):
            found.append(f"qemu process: {line[:160]}")
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns: {line.split()[0]}" for line in out.splitlines() if line.startswith(PREFIX)]
    return found


def other_agents() -> list[str]:
    """Host agents already running. Every agent uses the same per-slot addresses (10.11.0.n, 10.12.0.2n/31),
    so one running beside ours fails our boots in a shared slot (`NetlinkError(17, 'File exists')`),
    and its VMs would skew the timings anyway."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "wrenn.agent" in cmdline and "-m" in cmdline:
            found.append(f"pid {proc.info['pid']}: {' '.join(cmdline)[:200]}")
    return found


# --- the agent as a real process, and what it holds ----------------------------------------------


@dataclasses.dataclass
class State:
    """Everything to clean up, whatever way the run ends."""

    data_dir: Path  # the shared one: the image, the accelerator cache
    work_dir: Path  # the agent's own data dir (sandboxes, log) and the bare boots' overlays
    agent: subprocess.Popen[bytes] | None = None
    agent_port: int = 0
    agent_log: Path | None = None
    sandboxes: set[str] = dataclasses.field(default_factory=set)  # created (or being created) by us
    bare: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    vm_ids: set[str] = dataclasses.field(default_factory=set)  # every VM name used, for the final check
    interrupted: bool = False  # Ctrl-C or SIGTERM

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"


def start_agent(state: State) -> None:
    port = state.agent_port or free_port()
    log = state.work_dir / f"agent-{PREFIX}-{port}.log"
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrenn.agent", "--data-dir", str(state.work_dir), "--host", "127.0.0.1",
             "--port", str(port), "--name-prefix", PREFIX, "--slots", "8"],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    state.agent, state.agent_port, state.agent_log = proc, port, log
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


def make_work_dir(data_dir: Path) -> Path:
    """A private data dir for our agent: its `images` a link to the shared ones, the accelerator cache copied.

    Not the shared data dir itself: an agent that starts there (a test suite) removes every sandbox
    directory it does not own, ours included, while they boot.
    """
    work_dir = Path(tempfile.mkdtemp(prefix=f"wrenn-boot-bench-{PREFIX}-", dir="/var/tmp"))
    work_dir.chmod(0o755)
    (work_dir / "images").symlink_to((data_dir / "images").resolve())
    cache = data_dir / "accelerator.json"
    if cache.exists():
        shutil.copyfile(cache, work_dir / "accelerator.json")
    return work_dir


def cleanup(state: State, *, keep_dir: bool) -> None:
    """Kill bare QEMUs, destroy every sandbox, Terminate the agent; then report what is left, and remove our
    data dir unless something was left or `keep_dir` (after an error: the agent log is there)."""
    for proc in state.bare.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    state.bare.clear()
    if state.agent is not None:
        try:
            if state.agent.poll() is not None and state.sandboxes:
                # The agent died: a new one on the same prefix adopts what it left and destroys it below.
                print("agent is gone; restarting it to clean up", file=sys.stderr)
                start_agent(state)
            if state.agent.poll() is None:
                with HostAgentServiceClientSync(state.url) as client:
                    for sandbox_id in sorted(state.sandboxes):
                        try:
                            client.destroy_sandbox(
                                pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout_ms=60_000
                            )
                        except ConnectError as exc:  # already gone is fine; Terminate follows anyway
                            if exc.code.name != "NOT_FOUND":
                                print(f"destroy {sandbox_id}: {exc}", file=sys.stderr)
                    state.sandboxes.clear()
                    client.terminate(pb.TerminateRequest(), timeout_ms=120_000)
                state.agent.wait(60)
        except Exception as exc:  # fall through to the kill and the leftover check
            print(f"agent cleanup failed: {exc!r}; log: {state.agent_log}", file=sys.stderr)
        finally:
            if state.agent.poll() is None:
                state.agent.send_signal(signal.SIGTERM)
                try:
                    state.agent.wait(30)
                except subprocess.TimeoutExpired:
                    state.agent.kill()
                    state.agent.wait()
    left = leftovers(state.vm_ids)
    for item in left:
        print(f"WARNING: left running: {item}", file=sys.stderr)
    if left or keep_dir:
        print(f"kept the agent's data dir {state.work_dir} (log: {state.agent_log})", file=sys.stderr)
    else:
        shutil.rmtree(state.work_dir, ignore_errors=True)  # `images` is a link: removed, not followed


# --- the operations ------------------------------------------------------------------------------


def create_request(sandbox_id: str) -> pb.CreateSandboxRequest:
    return pb.CreateSandboxRequest(
        sandbox_id=sandbox_id, template="minimal", vcpus=VCPUS, memory_mb=MEMORY_MB, disk_size_mb=DISK_MB
    )


async def agent_create(client: HostAgentServiceClient, state: State, sandbox_id: str) -> float:
    """CreateSandbox until RUNNING; the seconds it took."""
    state.sandboxes.add(sandbox_id)
    state.vm_ids.add(sandbox_id)
    start = time.perf_counter()
    response = await client.create_sandbox(create_request(sandbox_id), timeout_ms=int(BOOT_TIMEOUT_S * 1000))
    elapsed = time.perf_counter() - start
    sandbox = response.sandbox
    if sandbox is None or sandbox.status != pb.SandboxStatus.RUNNING:
        error = sandbox.error if sandbox is not None else "no sandbox in the response"
        raise RuntimeError(f"{sandbox_id} did not come up RUNNING: {error}")
    return elapsed


async def agent_destroy(client: HostAgentServiceClient, state: State, sandbox_id: str) -> float:
    start = time.perf_counter()
    await client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id=sandbox_id), timeout_ms=60_000)
    state.sandboxes.discard(sandbox_id)
    return time.perf_counter() - start


def bare_command(
    image: images.Image, accelerator: Accelerator, vm_id: str, workdir: Path, port: int
) -> list[str]:
    """The agent's QEMU command for this VM, with user-mode networking instead of its TAP and netns."""
    cmdline = " ".join(
        [
            "root=/dev/vda rw quiet",
            f"wrenn.ip={GUEST_IP}/24 wrenn.gw={GATEWAY} wrenn.dns={SLIRP_DNS}",
            f"wrenn.hostname={vm_id}",
            f"wrenn.time={int(time.time())}",
        ]
    )  # the agent's _spec() with the addresses of QEMU's user network
    spec = VMSpec(
        vm_id=vm_id,
        vcpus=VCPUS,
        memory_mib=MEMORY_MB,
        kernel=image.vmlinuz,
        initrd=image.initrd,
        cmdline=cmdline,
        rootfs=workdir / "rootfs.qcow2",
        rootfs_format="qcow2",
        workdir=workdir,
        accelerator=accelerator,
        tap=None,
        netns=None,
        extra_args=(
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-{GUEST_IP}:{ENVD_PORT}",
            "-device", "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:05",
        ),
    )  # fmt: skip
    return QemuDriver(run_as=None, seccomp=False).command(spec)


async def bare_boot(image: images.Image, accelerator: Accelerator, state: State, vm_id: str) -> float:
    """Spawn QEMU on a fresh overlay, time until envd's /health answers 204, kill it, remove the overlay."""
    state.vm_ids.add(vm_id)
    with tempfile.TemporaryDirectory(prefix=f"{vm_id}-", dir=state.work_dir) as tmp:
        workdir = Path(tmp)
        overlay = workdir / "rootfs.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "lazy_refcounts=on",
                "-b",
                str(image.rootfs),
                "-F",
                "raw",
                str(overlay),
            ],
            check=True,
        )  # fmt: skip  (the agent's _disk.create_overlay, at the image's own size)
        port = free_port()
        cmd = bare_command(image, accelerator, vm_id, workdir, port)
        url = f"http://127.0.0.1:{port}/health"
        with (workdir / "qemu.log").open("wb") as log:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        state.bare[vm_id] = proc
        try:
            # The agent's own probe (EnvdClient.wait_healthy): 1 s timeout, 0.1 s between tries.
            async with httpx.AsyncClient(timeout=1.0) as probe:
                while True:
                    if proc.poll() is not None:
                        said = (workdir / "qemu.log").read_text(errors="replace")[-2000:]
                        console = (workdir / "console.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"bare qemu exited with {proc.returncode}: {said}\n{console}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await probe.get(url)).status_code == 204:
                            elapsed = time.perf_counter() - start
                            break
                    if time.perf_counter() - start > BOOT_TIMEOUT_S:
                        raise RuntimeError(f"bare boot: envd did not answer within {BOOT_TIMEOUT_S:.0f} s")
                    await asyncio.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            state.bare.pop(vm_id, None)
    return elapsed


def vmm_memory(sandbox_id: str) -> tuple[int, int]:
    """(PSS, RSS) of the sandbox's VMM process, in bytes."""
    pids = vmm_pids(sandbox_id)
    if len(pids) != 1:
        raise RuntimeError(f"expected one VMM process for {sandbox_id}, found {pids}")
    info = psutil.Process(pids[0]).memory_full_info()
    return int(info.pss), int(info.rss)


# --- the runs ------------------------------------------------------------------------------------


async def bench_boot(
    client: HostAgentServiceClient, image: images.Image, accelerator: Accelerator, state: State, runs: int
) -> tuple[Row, Series]:
    agent_s = Series("CreateSandbox -> RUNNING (agent)")
    bare_s = Series("bare qemu -> /health 204")
    destroy_s = Series("DestroySandbox")
    print(f"warm-up, then {runs} alternating agent/bare boots", file=sys.stderr)
    for i in range(runs + 1):  # run 0 is a warm-up on both paths (page cache of kernel, initrd, image)
        sandbox_id, bare_id = f"{TAG}-boot{i}", f"{TAG}-bare{i}"
        agent_t = await agent_create(client, state, sandbox_id)
        destroy_t = await agent_destroy(client, state, sandbox_id)
        bare_t = await bare_boot(image, accelerator, state, bare_id)
        label = "warm-up" if i == 0 else f"run {i}/{runs}"
        print(f"  {label}: agent {agent_t:.2f} s, bare {bare_t:.2f} s", file=sys.stderr)
        if i > 0:
            agent_s.samples.append(agent_t)
            bare_s.samples.append(bare_t)
            destroy_s.samples.append(destroy_t)
    return Row(agent_s, bare_s), destroy_s


async def bench_idle(
    client: HostAgentServiceClient, state: State, n: int, settle_s: float
) -> tuple[list[MemRow], dict[str, Any]]:
    ids = [f"{TAG}-idle{i}" for i in range(n)]
    before = mem_available()
    print(f"creating {n} idle sandboxes", file=sys.stderr)
    for sandbox_id in ids:  # one after the other: what is measured is each one idle, not a boot storm
        await agent_create(client, state, sandbox_id)
    await asyncio.sleep(settle_s)
    per_vm = {sandbox_id: vmm_memory(sandbox_id) for sandbox_id in ids}
    after = mem_available()
    guest = MEMORY_MB * MIB
    drop_per = (before - after) / n
    rows = [
        MemRow("VMM PSS", [float(pss) for pss, _ in per_vm.values()], guest),
        MemRow("VMM RSS", [float(rss) for _, rss in per_vm.values()], guest),
        MemRow("MemAvailable drop / N", [drop_per], guest),
    ]
    raw = {
        "mem_available_before_bytes": before,
        "mem_available_after_bytes": after,
        "per_sandbox": {sid: {"pss_bytes": pss, "rss_bytes": rss} for sid, (pss, rss) in per_vm.items()},
    }
    for sandbox_id in ids:
        await agent_destroy(client, state, sandbox_id)
    return rows, raw


async def main_async(
    args: argparse.Namespace, state: State, image: images.Image
) -> tuple[list[Row], Series | None, list[MemRow], dict[str, Any], dict[str, Any]]:
    task = asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:  # inside the loop: cancel the run, as asyncio.run does on Ctrl-C
        state.interrupted = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    async with HostAgentServiceClient(state.url) as client:
        info = await client.get_host_info(pb.GetHostInfoRequest())
        accelerator = Accelerator.KVM if info.accelerator == pb.Accelerator.KVM else Accelerator.TCG
        host = {"accelerator": accelerator.value, "accelerator_reason": info.accelerator_reason,
                "vmm_version": info.vmm_version}  # fmt: skip
        print(f"agent up: {accelerator.value} ({info.accelerator_reason[:80]})", file=sys.stderr)
        rows: list[Row] = []
        destroy_s: Series | None = None
        if args.runs > 0:
            row, destroy_s = await bench_boot(client, image, accelerator, state, args.runs)
            rows.append(row)
        mem_rows: list[MemRow] = []
        mem_raw: dict[str, Any] = {}
        if args.idle > 0:
            mem_rows, mem_raw = await bench_idle(client, state, args.idle, args.settle)
    return rows, destroy_s, mem_rows, mem_raw, host


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="boots on each path, after a warm-up (default 5)")
    parser.add_argument(
        "--idle", type=int, default=3, help="idle sandboxes for the memory figures (default 3)"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds the idle sandboxes settle (default 10)"
    )
    parser.add_argument(
        "--allow-other-agents",
        action="store_true",
        help="run even when another host agent is running (its slots collide with ours; timings skewed)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"agent data dir (default {DEFAULT_DATA_DIR})"
    )
    args = parser.parse_args(argv)
    if args.runs < 0 or args.idle < 0 or (args.runs == 0 and args.idle == 0):
        parser.error("--runs and --idle must be >= 0, and not both 0")
    if args.idle > 8:
        parser.error("--idle is at most 8 (the agent's slots)")
    return args


@contextlib.contextmanager
def cleaned_up(state: State) -> Iterator[State]:
    def on_sigterm(signum: int, frame: FrameType | None) -> None:  # outside the event loop
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
        # Ctrl-C during the cleanup itself would leave VMs behind: hold it off until done.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cleanup(state, keep_dir=failed)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the host agent needs root")
    if shutil.which("qemu-system-x86_64") is None:
        sys.exit("qemu-system-x86_64 not found")
    others = other_agents()
    if others and not args.allow_other_agents:
        listing = "\n  ".join(others)
        sys.exit(
            f"another host agent is running:\n  {listing}\nits network slots collide with this run's agent "
            "and its VMs skew the timings; wait for it to finish (or pass --allow-other-agents)"
        )
    data_dir: Path = args.data_dir
    image = images.find("minimal", data_dir)
    if image is None:
        print(f"building the minimal image under {data_dir} (once; takes minutes)", file=sys.stderr)
        image = images.build("minimal", data_dir, progress=True)
    started = datetime.datetime.now(datetime.UTC)
    state = State(data_dir=data_dir, work_dir=make_work_dir(data_dir))
    try:
        with cleaned_up(state):
            start_agent(state)
            rows, destroy_s, mem_rows, mem_raw, host = asyncio.run(main_async(args, state, image))
    except BaseException as exc:
        if state.interrupted or isinstance(exc, KeyboardInterrupt):
            print("interrupted; cleaned up (see any warning above)", file=sys.stderr)
            sys.exit(130)
        if others := other_agents():  # started during the run: the likely cause of a failed boot
            listing = "\n  ".join(others)
            print(f"note: another host agent started during the run:\n  {listing}", file=sys.stderr)
        raise
    if rows:
        print(boot_table(rows))
    if mem_rows:
        if rows:
            print()
        print(memory_table(mem_rows, args.idle))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"boot-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "started": started.isoformat(),
        "host": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "mem_total_bytes": psutil.virtual_memory().total,
            **host,
        },
        "image": {"template": image.template, "version": image.version, "kernel": image.kernel_version},
        "config": {
            "runs": args.runs,
            "idle": args.idle,
            "settle_s": args.settle,
            "memory_mb": MEMORY_MB,
            "vcpus": VCPUS,
            "disk_size_mb": DISK_MB,
            "statistic": "median, p90 of runs after one warm-up of each path, agent and bare alternating; "
            "ratio = agent median / bare median",
        },
        "rows": [r.to_json() for r in rows],
        "destroy_samples_s": destroy_s.samples if destroy_s is not None else [],
        "memory": [r.to_json() for r in mem_rows],
        "memory_raw": mem_raw,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
