"""Starting a real host agent process for tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from wrenn.proto.hostagent.v1.auth import (
    HEADER,
    TOKEN_FILE,
    TokenInterceptor,
    TokenInterceptorSync,
    read_token,
)
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient, HostAgentServiceClientSync

#: The warm-pool agent the session shares (`pooled_agent` in tests/conftest.py): two stopped members of
#: this shape, restored from the ready snapshot its first create leaves.
POOL_PREFIX = f"wp{os.getpid() % 1000:03d}l"
POOL_ARGS = ("--pool-memory-mb", "1536", "--pool", "minimal/1/256/2048=2", "--pool-max", "2")
POOL_SHAPE: dict[str, object] = {"template": "minimal", "vcpus": 1, "memory_mb": 256, "disk_size_mb": 2048}


@dataclass
class AgentProcess:
    url: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    proxy_port: int = 0

    @property
    def proxy_url(self) -> str:
        """The traffic listener (`/proxy/...` only)."""
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def token(self) -> str:
        """The secret the agent requires (it created the file at start)."""
        return read_token(self.token_file)

    @property
    def token_file(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def headers(self) -> dict[str, str]:
        return {HEADER: self.token}

    def client(self) -> HostAgentServiceClient:
        """An async Connect client that sends the agent's secret."""
        return HostAgentServiceClient(self.url, interceptors=[TokenInterceptor(self.token)])

    def sync_client(self) -> HostAgentServiceClientSync:
        return HostAgentServiceClientSync(self.url, interceptors=[TokenInterceptorSync(self.token)])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_ready_dir(shared: Path) -> Path:
    """This test run's cache of ready snapshots, shared by its agents: the first agent to boot a shape
    makes its ready snapshot (as any agent would), and every later agent of the run restores it instead
    of booting the same image cold again. Per run (the pid), so a snapshot never crosses code versions;
    removed at the end of the session (tests/conftest.py)."""
    return shared / "ready-cache" / f"run-{os.getpid()}"


def private_data_dir(shared: Path, prefix: str, share_ready: bool = True) -> Path:
    """A data dir of the agent's own whose `images` is the shared one: an agent removes every sandbox
    directory it does not own, so two agents must never share a data dir (nor two test runs: the pid).
    Its `ready` is the run's shared cache unless `share_ready` is False (tests about making ready
    snapshots start from none; they probe the accelerator themselves too). Otherwise its
    `accelerator.json` is the shared one: the probe costs 20 s here (a guest that cannot boot under PVM),
    and its verdict is keyed to this machine's kernel, QEMU and KVM module, so the first agent of the
    first run probes and the others read it."""
    directory = Path(tempfile.gettempdir()) / f"wrenn-agent-{prefix}{os.getpid() % 100_000}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "images").symlink_to(shared / "images")
    if share_ready:
        (directory / "accelerator.json").symlink_to(shared / "accelerator.json")
        ready = shared_ready_dir(shared)
        ready.mkdir(mode=0o700, parents=True, exist_ok=True)
        ready.parent.chmod(0o700)
        (directory / "ready").symlink_to(ready)
    return directory


#: Where test agents of every run on this machine reserve their address ranges (one file per pair,
#: holding the reserving test run's pid).
_RESERVATIONS = Path("/run/wrenn-test-nets")
_RESERVED: dict[str, int] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_use_on_host() -> set[int]:
    """Second octets of 10.x addresses and routes in the root namespace: another agent's ranges (a
    developer's, a benchmark's, a platform's) even if it reserved nothing."""
    found: set[int] = set()
    for what in (["route"], ["addr"]):
        out = subprocess.run(["ip", "-4", "-o", *what], capture_output=True, text=True, check=False).stdout
        for word in out.split():
            if word.startswith("10."):
                with contextlib.suppress(ValueError, IndexError):
                    found.add(int(word.split(".")[1]))
    return found


def _address_ranges(prefix: str) -> list[str]:
    """Disjoint address ranges per test agent, so that tests can run beside another agent (a developer's,
    a benchmark's, another checkout's tests): 10.<n>.0.0/16 for host addresses, 10.<n+1>.0.0/16 for veths.
    A hash of the prefix alone collided now and then (two live agents routing the same addresses: a
    create failed with EEXIST), so each pair is reserved, first come, for the life of the test run; a
    restarted agent of the same prefix keeps its pair (it adopts sandboxes on those addresses). n stays
    below 140, where `wrenn up`'s own platforms take theirs (cli/_platform.py)."""
    if prefix not in _RESERVED:
        _RESERVATIONS.mkdir(mode=0o700, parents=True, exist_ok=True)
        used = _in_use_on_host()
        start = int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % 60
        for i in range(60):
            n = 20 + 2 * ((start + i) % 60)
            if n in used or n + 1 in used or n in (60, 62):  # 10.60-63: tests/controlplane/test_two_hosts.py
                continue
            slot = _RESERVATIONS / str(n)
            with contextlib.suppress(FileNotFoundError, ValueError):
                if not _alive(int(slot.read_text() or 0)):
                    slot.unlink()
            try:
                fd = os.open(slot, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            _RESERVED[prefix] = n
            break
        else:
            raise RuntimeError("no free address range for a test agent (all 60 pairs in 10.20-10.139 taken)")
    n = _RESERVED[prefix]
    return ["--host-net", f"10.{n}.0.0/16", "--veth-net", f"10.{n + 1}.0.0/16"]


def start_agent(
    data_dir: Path,
    prefix: str,
    port: int | None = None,
    proxy_port: int | None = None,
    extra: Sequence[str] = (),
) -> AgentProcess:
    port = port or _free_port()
    proxy_port = proxy_port or _free_port()
    log = data_dir / f"agent-{prefix}-{port}.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrenn.agent", "--data-dir", str(data_dir), "--host", "0.0.0.0",
             "--port", str(port), "--proxy-port", str(proxy_port), "--name-prefix", prefix, "--slots", "8", *_address_ranges(prefix), *extra],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    agent = AgentProcess(f"http://127.0.0.1:{port}", port, data_dir, proc, log, proxy_port)
    deadline = time.monotonic() + 120  # the first start probes the accelerator
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return agent
        except OSError:
            time.sleep(0.2)
    agent.stop()
    raise RuntimeError(f"agent did not listen within 120 s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_agent(prefix: str, extra: Sequence[str] = (), share_ready: bool = True) -> Iterator[AgentProcess]:
    """A host agent on a private data dir over the shared test images; at the end, whatever happened,
    nothing is left: a live agent (or a new one, which adopts what a killed one left) is told to
    Terminate, which destroys every sandbox and removes its network rules."""
    from wrenn.proto.hostagent.v1 import hostagent_pb as pb

    shared = Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))
    data_dir = private_data_dir(shared, prefix, share_ready)
    process = start_agent(data_dir, prefix, extra=extra)
    try:
        yield process
    finally:
        if process.proc.poll() is not None:
            process.proc = start_agent(
                data_dir, prefix, port=process.port, proxy_port=process.proxy_port, extra=extra
            ).proc
        with process.sync_client() as client:
            client.terminate(pb.TerminateRequest())
        process.proc.wait(60)
        shutil.rmtree(data_dir, ignore_errors=True)


def pool_metrics(agent: AgentProcess) -> dict[str, float]:
    """The agent's `wrenn_agent_pool_*` samples, by name and labels."""
    import httpx

    text = httpx.get(f"{agent.url}/metrics", headers=agent.headers, timeout=10).text
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith("wrenn_agent_pool_")
    }


def wait_for_pool(agent: AgentProcess, members: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while pool_metrics(agent).get('wrenn_agent_pool_members{state="ready"}', 0) < members:
        if time.monotonic() > deadline:
            raise AssertionError(f"the pool did not fill to {members}: {pool_metrics(agent)}")
        time.sleep(0.5)


def unclaimed(agent: AgentProcess) -> list[str]:
    """Pool members (their directories): those without a `state.json`, which a claim writes."""
    return sorted(
        p.name for p in (agent.data_dir / "sandboxes").glob("_pool-*") if not (p / "state.json").exists()
    )


@contextlib.contextmanager
def pooled_agent_process() -> Iterator[AgentProcess]:
    """An agent with a warm pool (`POOL_ARGS`), once its first create of `POOL_SHAPE` booted (leaving the
    ready snapshot) and the pool is full."""
    from wrenn.proto.hostagent.v1 import hostagent_pb as pb

    with running_agent(POOL_PREFIX, extra=POOL_ARGS) as process:
        with process.sync_client() as client:
            request = pb.CreateSandboxRequest(sandbox_id="pl-boot", **POOL_SHAPE)  # type: ignore[arg-type]
            client.create_sandbox(request, timeout_ms=300_000)
            client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="pl-boot"))
        wait_for_pool(process, 2)
        yield process
