"""The supervisor `wrenn up` starts: it keeps the host agent and the control plane running.

Crash-only: each process is restarted on its own when it exits, whatever the reason, and nothing else is
touched (a control plane crash never stops the agent, an agent crash leaves its VMs running and the next
agent adopts them). A process that dies within `STABLE_S` of its start is restarted after a growing delay
(0.5 s doubling to 30 s), so a process that cannot start does not spin.

Everything the supervisor knows is in `<data dir>/supervisor.json` (mode 0600): what to run (written by
`wrenn up` before it starts the supervisor) and what runs (pids, start times, restart counts, the last
exit), rewritten on every change. `wrenn status` reads it. A new supervisor (after the old one was killed)
adopts the processes that still run, recognised by pid, start time and command line, and starts the rest.

The supervisor itself stops on SIGTERM or SIGINT and leaves the processes running: `wrenn down` stops it
first, then the processes. Every process runs in its own session, so no signal to one reaches another.

Run as `python -m wrenn.cli._supervisor DATA_DIR`.
"""

from __future__ import annotations

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

from wrenn._shared import logs
from wrenn._shared.private import write_private

log = logging.getLogger("wrenn.supervisor")
STATE_FILE = "supervisor.json"
#: A process that ran this long before it exited is restarted at once; a shorter run backs off.
STABLE_S = 10.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
#: At the first start, how long a process with a `ready_url` may take before the next one starts anyway.
READY_WITHIN_S = 120.0


@dataclass
class Service:
    """One supervised process: what to run, and what runs."""

    name: str
    argv: list[str]
    log: str
    #: At the first start, the next service waits until this answers (the control plane registers the
    #: agent when it starts, so the agent comes first).
    ready_url: str = ""
    pid: int = 0
    #: The kernel's start time of `pid` (clock ticks since boot): a reused pid is not taken for ours.
    start_ticks: int = 0
    started_at: float = 0.0
    restarts: int = 0
    last_exit: str = ""


@dataclass
class State:
    services: list[Service]
    #: The supervisor's own pid and start time (as `Service`'s).
    pid: int = 0
    start_ticks: int = 0
    started_at: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

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


def _describe(status: int | None) -> str:
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

    def spawn(self, service: Service) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        with os.fdopen(os.open(service.log, flags, 0o600), "ab") as sink:
            proc = subprocess.Popen(
                service.argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own session: no signal to the supervisor reaches it
            )  # fmt: skip
        self.children[service.name] = proc
        service.pid, service.start_ticks, service.started_at = proc.pid, start_ticks(proc.pid), time.time()
        self.state.save(self.data_dir)
        log.info("started", extra={"service": service.name, "pid": proc.pid, "restarts": service.restarts})

    def exited(self, service: Service) -> str | None:
        """How `service` ended, or None while it runs."""
        proc = self.children.get(service.name)
        if proc is not None:
            code = proc.poll()
            return None if code is None else _describe(code)
        return None if runs(service.pid, service.start_ticks) else _describe(None)

    def wait_ready(self, service: Service) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while service.ready_url and time.monotonic() < deadline and not self.stopping.is_set():
            if self.exited(service) is not None:
                return
            try:
                httpx.get(service.ready_url, timeout=1)
                return
            except httpx.TransportError:
                self.stopping.wait(0.2)

    def first_start(self) -> None:
        """Adopt what still runs, start the rest in order."""
        for service in self.state.services:
            if runs(service.pid, service.start_ticks, service.argv):
                log.info("adopted", extra={"service": service.name, "pid": service.pid})
                continue
            if service.pid:  # it ran, and ended while nothing supervised it
                service.restarts, service.last_exit = service.restarts + 1, "ended while unsupervised"
            self.spawn(service)
            self.wait_ready(service)

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
        log.info("supervisor stopping; the processes keep running")


def main(argv: list[str]) -> None:
    data_dir = Path(argv[0])
    logs.configure()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its readiness polls
    state = State.load(data_dir)
    if state is None:
        raise SystemExit(f"wrenn supervisor: no readable {State.path(data_dir)}")
    supervisor = Supervisor(data_dir, state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    supervisor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
