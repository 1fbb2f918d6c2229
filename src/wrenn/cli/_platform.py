"""The whole platform on one machine: `wrenn up`, `wrenn down`, `wrenn status`, `wrenn env`.

`up` builds the base image on first use, starts a supervisor (`_supervisor`) that starts and keeps running
a host agent and a control plane (SQLite) under the data directory, creates an admin account and an API
key on first start, runs a first capsule, and says what to do next. `up` is crash-only: of a platform
(partly) running it keeps what runs and has the rest restarted, never destroying a capsule. How to reach
the platform is recorded in `<data dir>/platform.json` (mode 0600, it holds the API key), the processes in
`<data dir>/supervisor.json`, so `down`, `status` and `env` find them again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console

from wrenn import images
from wrenn._shared.private import private_dir, write_private

if TYPE_CHECKING:
    from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClientSync

from . import _reboot, _systemd
from ._reboot import PAUSED_FILE
from ._supervisor import Service, State, answers, code_env, code_fingerprint, runs, shutdown, start_ticks

ADMIN_EMAIL = "admin@wrenn.local"
#: Where the control plane writes its one-time bootstrap token (`service/accounts.py` in the control plane;
#: the CLI imports nothing of it but this name).
BOOTSTRAP_FILE = "bootstrap-token"
DEFAULT_DATA_DIR = Path(os.environ.get("WRENN_DIR", "/var/lib/wrenn"))


class PlatformError(Exception):
    pass


@dataclass
class Platform:
    data_dir: str
    base_url: str
    api_key: str
    admin_email: str
    admin_password: str
    agent_url: str

    @staticmethod
    def state_file(data_dir: Path) -> Path:
        return data_dir / "platform.json"

    def save(self) -> None:
        write_private(self.state_file(Path(self.data_dir)), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, data_dir: Path) -> Platform | None:
        try:
            raw = json.loads(cls.state_file(data_dir).read_text())
            return cls(**{f.name: raw[f.name] for f in fields(cls)})
        except (OSError, ValueError, TypeError, KeyError):
            return None


def _legacy_state(data_dir: Path) -> State | None:
    """The processes a `wrenn up` from before the supervisor started (their pids in platform.json), for
    the supervisor to adopt and `down` to stop."""
    try:
        raw = json.loads(Platform.state_file(data_dir).read_text())
        pids = {"agent": int(raw["agent_pid"]), "controlplane": int(raw["server_pid"])}
        urls = {"agent": str(raw["agent_url"]), "controlplane": f"{raw['base_url']}/health"}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    services = []
    for name, pid in pids.items():
        try:
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        except OSError:
            argv = []
        log = str(data_dir / "logs" / ("agent.log" if name == "agent" else "server.log"))
        ticks = start_ticks(pid) if argv else 0
        services.append(Service(name, argv, log, ready_url=urls[name], pid=pid, start_ticks=ticks))
    return State(services)


def load_state(data_dir: Path) -> State | None:
    return State.load(data_dir) or _legacy_state(data_dir)


def agent_identity(data_dir: Path) -> list[str]:
    """The agent's name prefix and address ranges. The default data dir keeps the defaults; any other
    gets its own, derived from the path, so two platforms on one machine never touch each other's
    namespaces, links, cgroups or addresses (an agent cleans up everything under its prefix at start)."""
    if data_dir.resolve() == DEFAULT_DATA_DIR.resolve():
        return []
    digest = int(hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest(), 16)
    n = 140 + 2 * (digest % 40)
    prefix = "u" + "".join(chr(ord("a") + (digest >> (5 * i)) % 26) for i in range(3)) + "p"
    return ["--name-prefix", prefix, "--host-net", f"10.{n}.0.0/16", "--veth-net", f"10.{n + 1}.0.0/16"]


def _credentials(base_url: str, data_dir: Path, platform: Platform | None) -> tuple[str, str, str]:
    """(email, password, api key): the saved ones, or on first start the platform's first admin (made
    with the one-time bootstrap token the control plane wrote into the data directory) and a key."""
    if platform is not None:
        return platform.admin_email, platform.admin_password, platform.api_key
    lost = PlatformError(
        "an admin account exists but its credentials are lost (platform.json was removed): "
        "start over with a fresh --data-dir"
    )
    try:
        bootstrap = (data_dir / BOOTSTRAP_FILE).read_text().strip()
    except FileNotFoundError:
        raise lost from None
    password = secrets.token_urlsafe(18)
    r = httpx.post(
        f"{base_url}/v1/admin/bootstrap",
        json={"token": bootstrap, "email": ADMIN_EMAIL, "password": password, "name": "admin"},
    )
    if r.status_code in (401, 409):
        raise lost
    r.raise_for_status()
    token = r.json()["token"]
    key = httpx.post(
        f"{base_url}/v1/api-keys", json={"name": "wrenn up"}, headers={"Authorization": f"Bearer {token}"}
    )
    key.raise_for_status()
    return ADMIN_EMAIL, password, str(key.json()["key"])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _services(data_dir: Path, port: int, agent_port: int, proxy_port: int) -> list[Service]:
    logs = data_dir / "logs"
    agent = [
        "-m", "wrenn.agent", "--data-dir", str(data_dir), "--port", str(agent_port),
        "--proxy-port", str(proxy_port), *agent_identity(data_dir),
    ]  # fmt: skip
    agent_url = f"http://127.0.0.1:{agent_port}"
    server = [
        "-m", "wrenn.controlplane", "--port", str(port), "--data-dir", str(data_dir),
        "--local-agent", agent_url,
    ]  # fmt: skip
    services = [
        Service("agent", [sys.executable, *agent], str(logs / "agent.log"), ready_url=agent_url),
        Service("controlplane", [sys.executable, *server], str(logs / "server.log"),
                ready_url=f"http://127.0.0.1:{port}/health"),
    ]  # fmt: skip
    return _onto_this_installation(services)


def _onto_this_installation(services: list[Service]) -> list[Service]:
    """`services` run by this interpreter, environment and `wrenn` (what an upgrade changes)."""
    env, code = code_env(), code_fingerprint()
    for service in services:
        service.argv = [sys.executable, *service.argv[1:]]
        service.env, service.code = dict(env), code
    return services


def _upgrade(data_dir: Path, state: State, console: Console) -> bool:
    """Point `state` at this installation; when a process runs another, replace the supervisor (whose
    successor replaces those processes, agent first, VMs kept). Whether it did."""
    before = {s.name: s.running or s.spec() for s in state.services if runs(s.pid, s.start_ticks)}
    _onto_this_installation(state.services)
    older = [s.name for s in state.services if s.name in before and before[s.name] != s.spec()]
    if not older:
        return False
    console.print(
        f"Wrenn runs another installation: restarting {', '.join(older)} onto this one "
        "(capsules keep running)"
    )
    if state.supervised():
        _stop_supervisor(state)
        fresh = load_state(data_dir) or state  # the pids as the old supervisor left them
        for old, new in zip(fresh.services, state.services, strict=True):
            old.argv, old.env, old.code = new.argv, new.env, new.code
        state.services = fresh.services
    return True


def _supervise(data_dir: Path, state: State) -> subprocess.Popen[bytes]:
    """Start a supervisor over `state` (saved first: it reads what to run from the file)."""
    state.pid = state.start_ticks = 0
    state.save(data_dir)
    log = data_dir / "logs" / "supervisor.log"
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600), "ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "wrenn.cli._supervisor", str(data_dir)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives `up --detach`; stopped by `down`
        )  # fmt: skip


def _wait_ready(data_dir: Path, console: Console, supervisor: subprocess.Popen[bytes] | None) -> None:
    """Until every supervised process answers at its `ready_url`; an error naming the logs otherwise (at
    once when a process exits twice while it starts: the supervisor keeps trying, with growing delays)."""
    deadline = time.monotonic() + 180
    first = State.load(data_dir)
    restarts = {s.name: s.restarts for s in first.services} if first else {}
    with console.status("starting the host agent and the control plane (the agent's first start probes KVM)"):
        while time.monotonic() < deadline:
            state = State.load(data_dir)
            if (supervisor is not None and supervisor.poll() is not None) or (
                state is not None and state.pid and not state.supervised()
            ):
                raise PlatformError(f"the supervisor exited; its log: {data_dir / 'logs' / 'supervisor.log'}")
            for s in state.services if state else []:
                if s.restarts - restarts.get(s.name, 0) >= 2:
                    raise PlatformError(
                        f"the {TITLES.get(s.name, s.name)} {s.last_exit} as it started (the supervisor keeps "
                        f"trying; `wrenn down` stops it); its log: {s.log}"
                    )
            pending = [s for s in state.services if not _serves(s)] if state else [None]
            if not pending and not (data_dir / PAUSED_FILE).exists():  # resumed by the supervisor
                return
            time.sleep(0.3)
    logs = ", ".join(s.log for s in state.services) if state else str(data_dir / "logs")
    raise PlatformError(f"the platform did not answer within 180 s; the logs: {logs}")


def _serves(service: Service) -> bool:
    """Whether `service` runs what it should (not an older installation being replaced) and answers."""
    current = service.running in (None, service.spec()) and runs(service.pid, service.start_ticks)
    return current and answers(service.ready_url)


def start(
    data_dir: Path,
    port: int,
    agent_port: int,
    console: Console,
    proxy_port: int | None = None,
    templates: tuple[str, ...] = (),
    pause_deadline_s: float | None = None,
    supervised_by: str = "auto",
    systemd: _systemd.Systemd | None = None,
) -> Platform:
    """Bring the platform up and return how to reach it; idempotent. `templates`: base images built (or
    found up to date) besides `minimal`, e.g. `code-interpreter`.

    Crash-only: what still runs of a platform started before is kept as it is (with its capsules), a
    supervisor is started if none runs, and it restarts what has stopped. Only when nothing runs are the
    images brought up to date and the processes started afresh (with the ports given). A process that runs
    another installation of wrenn (an upgrade) is restarted onto this one; the VMs keep running.

    `supervised_by`: "systemd" installs and starts systemd units instead (`_systemd`), "self" supervises
    the processes itself, "auto" chooses systemd where it is the init system (or runs this data dir)."""
    if os.geteuid() != 0:
        raise PlatformError(
            "the host agent runs microVMs with their own network namespaces: run as root (sudo)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    saved = Platform.load(data_dir)
    state = load_state(data_dir)
    services = state.services if state else []
    running = [s.name for s in services if runs(s.pid, s.start_ticks, s.running_argv())]
    systemd = systemd or _systemd.Systemd()
    if _use_systemd(data_dir, supervised_by, systemd, bool(running) or bool(state and state.supervised())):
        try:
            proxy = proxy_port or agent_port + 1
            ports = (port, agent_port, proxy)
            return _start_systemd(data_dir, ports, console, templates, saved, systemd, pause_deadline_s)
        except _systemd.SystemdError as exc:
            raise PlatformError(str(exc)) from None
    supervisor = None
    if state is not None and (running or state.supervised()):
        if not all(s.argv for s in state.services):
            raise PlatformError(
                "a platform of an older wrenn is partly running here: `wrenn down`, then `wrenn up`"
            )
        if pause_deadline_s is not None:
            state.pause_deadline_s = pause_deadline_s
        supervised, everything = state.supervised(), len(running) == len(state.services)
        upgraded = _upgrade(data_dir, state, console)
        if not upgraded and supervised and everything and saved is not None:
            console.print(f"Wrenn is already running at {saved.base_url}")
            return saved
        if not (supervised and everything):
            stopped = [s.name for s in state.services if s.name not in running]
            console.print(
                f"Wrenn is partly running: keeping {', '.join(running) or 'nothing'}, "
                f"restarting {', '.join(stopped) or 'nothing'}{'' if supervised else ' and the supervisor'}"
            )
        if upgraded or not supervised:
            supervisor = _supervise(data_dir, state)
    else:
        state = _fresh(data_dir, port, agent_port, proxy_port or agent_port + 1, console, templates)
        state.pause_deadline_s = pause_deadline_s or state.pause_deadline_s
        supervisor = _supervise(data_dir, state)
    _wait_ready(data_dir, console, supervisor)
    agent = state.service("agent").ready_url
    base_url = state.service("controlplane").ready_url.removesuffix("/health")
    email, password, api_key = _credentials(base_url, data_dir, saved)
    platform = Platform(str(data_dir), base_url, api_key, email, password, agent)
    platform.save()
    return platform


def _use_systemd(data_dir: Path, supervised_by: str, systemd: _systemd.Systemd, self_running: bool) -> bool:
    """Whether `start` runs the platform under systemd (`--supervisor`; auto: where systemd is the init
    system, or this data dir's units are installed); an error when the other way runs it now."""
    installed = _systemd.installed_for(data_dir, systemd)
    try:
        chosen = "systemd" if installed and supervised_by == "auto" else _systemd.choose(supervised_by)
    except _systemd.SystemdError as exc:
        raise PlatformError(str(exc)) from None
    if chosen == "systemd" and self_running:
        raise PlatformError(
            f"Wrenn runs from {data_dir} under its own supervisor: `wrenn down` first, "
            "then `wrenn up --supervisor systemd`"
        )
    if chosen == "self" and installed:
        raise PlatformError(
            f"Wrenn runs from {data_dir} under systemd: `wrenn down` first, then `wrenn up --supervisor self`"
        )
    return chosen == "systemd"


def _fresh(
    data_dir: Path, port: int, agent_port: int, proxy_port: int, console: Console, templates: tuple[str, ...]
) -> State:
    """What to run when nothing runs: the images brought up to date, the ports free."""
    for p, what in ((port, "control plane"), (agent_port, "host agent"), (proxy_port, "agent's traffic")):
        if not _port_free(p):
            raise PlatformError(f"port {p} for the {what} is taken (choose another with --port/--agent-port)")
    _build_images(data_dir, console, templates)
    return State(_services(data_dir, port, agent_port, proxy_port))


def _build_images(data_dir: Path, console: Console, templates: tuple[str, ...]) -> None:
    """The base images brought up to date (`minimal` and `templates`)."""
    if images.find("minimal", data_dir) is None:
        console.print("Building the base image (once; about a minute).")
    try:
        for template in dict.fromkeys(("minimal", *templates)):
            if template != "minimal" and images.find(template, data_dir) is None:
                console.print(f"Building the {template} image (once; several minutes).")
            images.build(template, data_dir, progress=True, console=console)
    except images.BuildError as exc:
        raise PlatformError(str(exc)) from None


def _start_systemd(
    data_dir: Path,
    ports: tuple[int, int, int],
    console: Console,
    templates: tuple[str, ...],
    saved: Platform | None,
    systemd: _systemd.Systemd,
    pause_deadline_s: float | None = None,
) -> Platform:
    """`start` under systemd: the units installed and started, then the first admin as without, then
    `wrenn-capsules.service` (which resumes what the last shutdown paused)."""
    port, agent_port, _ = ports
    node = _node(data_dir, ports, pause_deadline_s)
    if not _systemd.installed_for(data_dir, systemd):
        for p in ports:
            if not _port_free(p):
                raise PlatformError(f"port {p} is taken (choose others with --port/--agent-port)")
    _build_images(data_dir, console, templates)
    with console.status("installing and starting the systemd units (wrenn-agent, wrenn-controlplane)"):
        _systemd.install(node, systemd)
        agent, base_url = f"http://127.0.0.1:{agent_port}", f"http://127.0.0.1:{port}"
        _systemd.wait_ready({_systemd.AGENT: agent, _systemd.CONTROLPLANE: f"{base_url}/health"})
    email, password, api_key = _credentials(base_url, node.controlplane_dir, saved)
    platform = Platform(str(data_dir), base_url, api_key, email, password, agent)
    platform.save()
    with console.status("starting wrenn-capsules (it resumes the capsules a shutdown paused)"):
        _systemd.start_capsules(node, systemd)
    return platform


def _node(
    data_dir: Path, ports: tuple[int, int, int], pause_deadline_s: float | None = None
) -> _systemd.Node:
    """What the units of `data_dir` are rendered with."""
    return _systemd.Node(
        data_dir, *ports, _systemd.installed_wrenn(), tuple(agent_identity(data_dir)),
        int(pause_deadline_s or 60),
    )  # fmt: skip


@contextlib.contextmanager
def _agent(data_dir: Path, url: str) -> Iterator[HostAgentServiceClientSync]:
    from wrenn.proto.hostagent.v1.auth import TOKEN_FILE, TokenInterceptorSync, read_token
    from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClientSync

    token = read_token(data_dir / TOKEN_FILE)
    with HostAgentServiceClientSync(url, interceptors=[TokenInterceptorSync(token)]) as client:
        yield client


def _stop_supervisor(state: State) -> None:
    """Stop the supervising only (SIGUSR1; SIGTERM would shut the node down)."""
    if state.supervised():
        os.kill(state.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and state.supervised():
            time.sleep(0.1)
        if state.supervised():
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)


def stop(
    data_dir: Path,
    console: Console,
    *,
    quiet: bool = False,
    pause: bool = False,
    deadline_s: float = 60,
    systemd: _systemd.Systemd | None = None,
) -> bool:
    """Stop what `up` started: the supervisor first (so it restarts nothing), then the control plane, and
    the agent, which destroys every capsule and removes its host rules. With `pause`, the running capsules
    are paused instead (within `deadline_s`; the rest are left running) and the next `up` resumes them.
    Under systemd the same, then the units are stopped and disabled."""
    systemd = systemd or _systemd.Systemd()
    if _systemd.installed_for(data_dir, systemd):
        try:
            _stop_systemd(data_dir, console, systemd, pause=pause, deadline_s=deadline_s)
        except _systemd.SystemdError as exc:
            raise PlatformError(str(exc)) from None
        return True
    state = load_state(data_dir)
    if state is None:
        if not quiet:
            console.print(f"Wrenn is not running from {data_dir}")
        return False
    _stop_supervisor(state)
    if pause:
        state = load_state(data_dir) or state
        report = shutdown(data_dir, state, deadline_s)
        for capsule_id, why in report.items():
            console.print(f"not paused, left as it is: {capsule_id} ({why})")
        console.print("Wrenn stopped; the capsules it paused resume at the next `wrenn up`.")
        return True
    alive = {s.name: s for s in state.services if runs(s.pid, s.start_ticks)}
    if "controlplane" in alive:
        os.kill(alive["controlplane"].pid, signal.SIGTERM)
    if "agent" in alive:
        from wrenn.proto.hostagent.v1 import hostagent_pb

        try:
            with _agent(data_dir, alive["agent"].ready_url) as client:
                client.terminate(hostagent_pb.TerminateRequest(), timeout_ms=120_000)
        except Exception:  # noqa: BLE001 - whatever happened, fall back to signals
            os.kill(alive["agent"].pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(runs(s.pid, s.start_ticks) for s in alive.values()):
        time.sleep(0.2)
    for service in alive.values():
        if runs(service.pid, service.start_ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGKILL)
    # The credentials stay (the database keeps the account): only the processes are gone.
    for service in state.services:
        service.pid = service.start_ticks = 0
    state.pid = state.start_ticks = 0
    state.save(data_dir)
    if not quiet:
        console.print("Wrenn stopped: every capsule destroyed, the agent's network rules removed.")
    return True


def _stop_systemd(
    data_dir: Path, console: Console, systemd: _systemd.Systemd, *, pause: bool, deadline_s: float
) -> None:
    """`stop` under systemd: the capsules paused (`pause`: recorded for `wrenn-capsules.service`, which
    resumes them at the next `wrenn up`) or destroyed (the agent's Terminate), then the units stopped and
    disabled (`wrenn-capsules.service` first, pausing nothing more; the control plane before the agent)."""
    platform = Platform.load(data_dir)
    if pause:
        record = private_dir(_systemd.capsules_dir(data_dir)) / PAUSED_FILE
        files = _reboot.Files(Platform.state_file(data_dir), record)
        for capsule_id, why in _reboot.pause_all(files, deadline_s).items():
            console.print(f"not paused, left as it is: {capsule_id} ({why})")
    _systemd.stop_capsules(data_dir, systemd)
    if not pause and platform is not None:
        from wrenn.proto.hostagent.v1 import hostagent_pb

        systemd.run("stop", _systemd.CONTROLPLANE)
        # not answering: systemd stops it (its VMs left running)
        with contextlib.suppress(Exception), _agent(data_dir, platform.agent_url) as client:
            client.terminate(hostagent_pb.TerminateRequest(), timeout_ms=120_000)
    _systemd.stop(systemd)
    if pause:
        console.print(
            "Wrenn stopped (systemd units disabled); the capsules it paused resume at the next `wrenn up`."
        )
    else:
        console.print("Wrenn stopped (systemd units disabled): every capsule destroyed.")


#: How `wrenn status` names the supervised processes.
TITLES = {"agent": "host agent", "controlplane": "control plane"}


@dataclass
class ProcessStatus:
    name: str
    pid: int
    running: bool
    uptime_s: float
    restarts: int | None  # None: the supervisor itself
    last_exit: str


def processes(data_dir: Path, systemd: _systemd.Systemd | None = None) -> list[ProcessStatus]:
    """The supervisor and each process it keeps, as they are now (under systemd: each unit, as systemd
    says, and no supervisor row: systemd is it)."""
    if _systemd.installed_for(data_dir, systemd or _systemd.Systemd()):
        try:
            units = _systemd.status(systemd or _systemd.Systemd())
        except _systemd.SystemdError as exc:
            raise PlatformError(str(exc)) from None
        titles = {_systemd.AGENT: TITLES["agent"], _systemd.CONTROLPLANE: TITLES["controlplane"]}
        return [
            ProcessStatus(titles.get(u.unit, u.unit), u.pid, u.running, u.uptime_s, u.restarts, u.last_exit)
            for u in units
        ]
    state = load_state(data_dir)
    if state is None:
        return []
    now = time.time()
    supervised = state.supervised()
    rows = [ProcessStatus("supervisor", state.pid if supervised else 0, supervised,
                          now - state.started_at if supervised else 0, None, "")]  # fmt: skip
    for s in state.services:
        alive = runs(s.pid, s.start_ticks)
        rows.append(ProcessStatus(TITLES.get(s.name, s.name), s.pid if alive else 0, alive,
                                  now - s.started_at if alive else 0, s.restarts, s.last_exit))  # fmt: skip
    return rows


def capsule_counts(platform: Platform) -> dict[str, int] | None:
    """Sandboxes on this host by status, as the agent reports them; None when it does not answer."""
    from wrenn.proto.hostagent.v1 import hostagent_pb

    try:
        with _agent(Path(platform.data_dir), platform.agent_url) as client:
            listed = client.list_sandboxes(hostagent_pb.ListSandboxesRequest(), timeout_ms=5_000)
    except Exception:  # noqa: BLE001 - down, or not answering: said as such
        return None
    counts: dict[str, int] = {}
    for sandbox in listed.sandboxes:
        name = hostagent_pb.SandboxStatus(sandbox.status).name.removeprefix("SANDBOX_STATUS_").lower()
        counts[name] = counts.get(name, 0) + 1
    return counts


def env_lines(platform: Platform) -> str:
    return f"export WRENN_BASE_URL={platform.base_url}\nexport WRENN_API_KEY={platform.api_key}"
