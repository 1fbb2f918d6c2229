"""The supervisor `wrenn up` starts: it keeps the host agent and the control plane running.

Crash-only: each process is restarted on its own when it exits, whatever the reason, and nothing else is
touched (a control plane crash never stops the agent, an agent crash leaves its VMs running and the next
agent adopts them). A process that dies within `STABLE_S` of its start is restarted after a growing delay
(0.5 s doubling to 30 s), so a process that cannot start does not spin.

Everything the supervisor knows is in `<data dir>/supervisor.json` (mode 0600): what to run (written by
`wrenn up` before it starts the supervisor) and what runs (pids, start times, restart counts, the last
exit), rewritten on every change. `wrenn status` reads it. A new supervisor (after the old one was killed)
adopts the processes that still run, recognised by pid, start time and command line, and starts the rest.

SIGTERM or SIGINT (what an init system sends at shutdown) is an orderly shutdown of the node: the running
capsules are paused through the control plane within `pause_deadline_s` (`_reboot`; those not paused by
then are logged and left as they are), then the control plane and the agent are stopped (SIGTERM: the agent
leaves what still runs as it is), and the next start resumes the capsules the shutdown paused. SIGUSR1
stops only the supervising and leaves the processes running: `wrenn up` and `wrenn down` send it before
they act themselves. Every process runs in its own session, so no signal to one reaches another.

Upgrade in place: each service records what it runs (`argv`, `env`, `code`: a fingerprint of the installed
`wrenn` package) and what its process was started with (`running`). A new supervisor (which `wrenn up`
starts when the installation it runs from differs) stops a process whose `running` differs from what to
run (SIGTERM: the agent leaves its VMs running) and starts the new one, agent first: it adopts the VMs.

Run as `python -m wrenn.cli._supervisor DATA_DIR`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

import wrenn
from wrenn._shared import logs
from wrenn._shared.private import write_private

from . import _reboot

log = logging.getLogger("wrenn.supervisor")
STATE_FILE = "supervisor.json"
#: Held (flock) by the running supervisor: a second one for the same data dir exits at once.
LOCK_FILE = "supervisor.lock"
#: A process that ran this long before it exited is restarted at once; a shorter run backs off.
STABLE_S = 10.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
#: At the first start, how long a process with a `ready_url` may take before the next one starts anyway.
READY_WITHIN_S = 120.0
#: How long an orderly shutdown waits for a process to exit after SIGTERM before SIGKILL.
STOP_WITHIN_S = 30.0


def code_fingerprint() -> str:
    """What identifies the installed `wrenn` package: where it is, and each module's size and mtime."""
    root = Path(wrenn.__file__).resolve().parent
    digest = hashlib.sha256(str(root).encode())
    for module in sorted(root.rglob("*.py")):
        info = module.stat()
        digest.update(f"{module.relative_to(root)}:{info.st_size}:{info.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def code_env() -> dict[str, str]:
    """The environment that decides which `wrenn` a process imports besides its interpreter."""
    return {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}


@dataclass
class Service:
    """One supervised process: what to run, and what runs."""

    name: str
    argv: list[str]
    log: str
    #: At the first start, the next service waits until this answers (the control plane registers the
    #: agent when it starts, so the agent comes first).
    ready_url: str = ""
    #: Environment over the supervisor's (`code_env`; an empty value unsets it).
    env: dict[str, str] = field(default_factory=dict)
    #: `code_fingerprint()` of the installation `argv` runs.
    code: str = ""
    #: What the running process was started with (`spec()` then); None: as `spec()` (an older state file).
    running: dict[str, object] | None = None
    pid: int = 0
    #: The kernel's start time of `pid` (clock ticks since boot): a reused pid is not taken for ours.
    start_ticks: int = 0
    started_at: float = 0.0
    restarts: int = 0
    last_exit: str = ""

    def spec(self) -> dict[str, object]:
        return {"argv": self.argv, "env": self.env, "code": self.code}

    def running_argv(self) -> list[str]:
        return list(self.running["argv"]) if self.running else self.argv  # type: ignore[call-overload]


@dataclass
class State:
    services: list[Service]
    #: The supervisor's own pid and start time (as `Service`'s).
    pid: int = 0
    start_ticks: int = 0
    started_at: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    #: At an orderly shutdown, how long pausing the capsules may take.
    pause_deadline_s: float = 60.0

    @staticmethod
    def path(data_dir: Path) -> Path:
        return data_dir / STATE_FILE

    @classmethod
    def load(cls, data_dir: Path) -> State | None:
        try:
            raw = json.loads(cls.path(data_dir).read_text())
            services = [Service(**s) for s in raw.pop("services")]
            return cls(services=services, **raw)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save(self, data_dir: Path) -> None:
        write_private(self.path(data_dir), json.dumps(asdict(self), indent=1))

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def supervised(self) -> bool:
        """Whether the supervisor that wrote this still runs."""
        return runs(self.pid, self.start_ticks)


def start_ticks(pid: int) -> int:
    """The start time of `pid` (field 22 of /proc/PID/stat), 0 when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return 0 if fields[0] == "Z" else int(fields[19])


def runs(pid: int, ticks: int, argv: list[str] | None = None) -> bool:
    """Whether `pid` is still the process recorded with start time `ticks` (and command line `argv`)."""
    if pid <= 0 or ticks <= 0 or start_ticks(pid) != ticks:
        return False
    if argv is None:
        return True
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]
    except OSError:
        return False


def answers(url: str) -> bool:
    """Whether anything answers HTTP at `url` (any status: the process is up)."""
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True


def describe(status: int | None) -> str:
    """How a process ended: its exit status, or minus the signal that killed it (None: not known)."""
    if status is None:
        return "exited (not our child: no status)"
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exited with {status}"


class Supervisor:
    def __init__(self, data_dir: Path, state: State) -> None:
        self.data_dir = data_dir
        self.state = state
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()
        #: Set with `stopping` by SIGTERM/SIGINT: pause the capsules and stop the processes.
        self.shutdown = threading.Event()

    def spawn(self, service: Service) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        env = {**os.environ, **service.env}
        for name in [n for n, v in service.env.items() if not v]:
            env.pop(name, None)
        with os.fdopen(os.open(service.log, flags, 0o600), "ab") as sink:
            proc = subprocess.Popen(
                service.argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own session: no signal to the supervisor reaches it
            )  # fmt: skip
        self.children[service.name] = proc
        service.running = service.spec()
        service.pid, service.start_ticks, service.started_at = proc.pid, start_ticks(proc.pid), time.time()
        self.state.save(self.data_dir)
        log.info("started", extra={"service": service.name, "pid": proc.pid, "restarts": service.restarts})

    def exited(self, service: Service) -> str | None:
        """How `service` ended, or None while it runs."""
        proc = self.children.get(service.name)
        if proc is not None:
            code = proc.poll()
            return None if code is None else describe(code)
        return None if runs(service.pid, service.start_ticks) else describe(None)

    def wait_ready(self, service: Service) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while service.ready_url and time.monotonic() < deadline and not self.stopping.is_set():
            if self.exited(service) is not None or answers(service.ready_url):
                return
            self.stopping.wait(0.2)

    def first_start(self) -> None:
        """Adopt what still runs, start the rest in order."""
        for service in self.state.services:
            if runs(service.pid, service.start_ticks, service.running_argv()):
                if service.running in (None, service.spec()):
                    log.info("adopted", extra={"service": service.name, "pid": service.pid})
                    continue
                log.info("upgrading: replaced by a new installation", extra={"service": service.name})
                stop_process(service)
                service.last_exit = "replaced by a new installation"
            elif service.pid:  # it ran, and ended while nothing supervised it
                service.restarts, service.last_exit = service.restarts + 1, "ended while unsupervised"
            self.spawn(service)
            self.wait_ready(service)
        try:
            _reboot.resume_paused(self.data_dir)
        except Exception:
            log.exception("resuming the capsules paused at shutdown failed")

    def run(self) -> None:
        self.state.pid, self.state.start_ticks = os.getpid(), start_ticks(os.getpid())
        self.state.started_at = time.time()
        self.state.save(self.data_dir)
        self.first_start()
        due: dict[str, float] = {}
        while not self.stopping.wait(0.5):
            for service in self.state.services:
                if service.name in due:
                    if time.monotonic() >= due[service.name]:
                        del due[service.name]
                        service.restarts += 1
                        self.spawn(service)
                    continue
                how = self.exited(service)
                if how is None:
                    continue
                self.children.pop(service.name, None)
                ran = time.time() - service.started_at
                quick = self.state.failures.get(service.name, 0) + 1 if ran < STABLE_S else 0
                self.state.failures[service.name] = quick
                delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2**quick)
                service.pid, service.start_ticks, service.last_exit = 0, 0, how
                self.state.save(self.data_dir)
                log.warning(
                    "exited; restarting",
                    extra={"service": service.name, "how": how, "ran_s": round(ran, 1), "in_s": delay},
                )
                due[service.name] = time.monotonic() + delay
        if self.shutdown.is_set():
            shutdown(self.data_dir, self.state)
        else:
            log.info("supervisor stopping; the processes keep running")


def stop_process(service: Service) -> None:
    """SIGTERM, then SIGKILL after `STOP_WITHIN_S` (the agent leaves its VMs running on SIGTERM)."""
    if not runs(service.pid, service.start_ticks):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WITHIN_S
    while time.monotonic() < deadline and runs(service.pid, service.start_ticks):
        time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(service.pid, os.WNOHANG)  # our child's zombie, if it is one
    if runs(service.pid, service.start_ticks):
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGKILL)


def shutdown(data_dir: Path, state: State, deadline_s: float | None = None) -> dict[str, str]:
    """An orderly stop of the node: its running capsules paused (within the deadline; the rest logged and
    left as they are), then the control plane and the agent stopped. {capsule id: why not paused}."""
    started = time.monotonic()
    not_paused = _reboot.pause_all(data_dir, state.pause_deadline_s if deadline_s is None else deadline_s)
    for service in reversed(state.services):  # the control plane first: it would see the agent go
        stop_process(service)
        service.pid = service.start_ticks = 0
        service.last_exit = "stopped at shutdown"
    state.pid = state.start_ticks = 0
    state.save(data_dir)
    log.info("node shut down", extra={"seconds": round(time.monotonic() - started, 1)})
    return not_paused


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0])
    logs.configure()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its readiness polls
    # One supervisor per data dir, whatever starts it: two would each replace the other's processes.
    lock = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"wrenn supervisor: another one supervises {data_dir}") from None
    state = State.load(data_dir)
    if state is None:
        raise SystemExit(f"wrenn supervisor: no readable {State.path(data_dir)}")
    supervisor = Supervisor(data_dir, state)

    def shut_down(*_: object) -> None:
        supervisor.shutdown.set()
        supervisor.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shut_down)
    signal.signal(signal.SIGUSR1, lambda *_: supervisor.stopping.set())
    supervisor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
