"""The whole platform on one machine: `wrenn up`, `wrenn down`, `wrenn env`.

`up` builds the base image on first use, starts a host agent and a control plane (SQLite) under the data
directory, creates an admin account and an API key on first start, runs a first capsule, and says what
to do next. What it started is recorded in `<data dir>/platform.json` (mode 0600, it holds the API key),
so `down` and `env` find it again.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from rich.console import Console

from wrenn import images
from wrenn._shared.private import write_private

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
    agent_pid: int
    server_pid: int

    @staticmethod
    def state_file(data_dir: Path) -> Path:
        return data_dir / "platform.json"

    def save(self) -> None:
        write_private(self.state_file(Path(self.data_dir)), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, data_dir: Path) -> Platform | None:
        try:
            return cls(**json.loads(cls.state_file(data_dir).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> bool:
        return _alive(self.agent_pid) and _alive(self.server_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # root's alone: a failed boot's error quotes the guest's console
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600), "ab") as sink:
        return subprocess.Popen(
            [sys.executable, *args], stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives `up --detach` and is stopped only by `down`
        )  # fmt: skip


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PlatformError(f"the {what} exited with {proc.returncode}; its log: {log}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise PlatformError(f"the {what} did not answer within {within_s:.0f} s; its log: {log}")


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


def start(
    data_dir: Path,
    port: int,
    agent_port: int,
    console: Console,
    proxy_port: int | None = None,
    templates: tuple[str, ...] = (),
) -> Platform:
    """Bring the platform up (or find it running) and return how to reach it. `templates`: base images
    built (or found up to date) besides `minimal`, e.g. `code-interpreter`."""
    if os.geteuid() != 0:
        raise PlatformError(
            "the host agent runs microVMs with their own network namespaces: run as root (sudo)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    saved = Platform.load(data_dir)
    if saved is not None and saved.running():
        console.print(f"Wrenn is already running at {saved.base_url}")
        return saved
    if saved is not None:
        stop(data_dir, console, quiet=True)  # a half-running platform from before: start clean
    proxy_port = proxy_port or agent_port + 1
    for p, what in ((port, "control plane"), (agent_port, "host agent"), (proxy_port, "agent's traffic")):
        if not _port_free(p):
            raise PlatformError(f"port {p} for the {what} is taken (choose another with --port/--agent-port)")
    if images.find("minimal", data_dir) is None:
        console.print("Building the base image (once; about a minute).")
    try:
        for template in dict.fromkeys(("minimal", *templates)):
            if template != "minimal" and images.find(template, data_dir) is None:
                console.print(f"Building the {template} image (once; several minutes).")
            images.build(template, data_dir, progress=True, console=console)
    except images.BuildError as exc:
        raise PlatformError(str(exc)) from None
    logs = data_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    agent_url = f"http://127.0.0.1:{agent_port}"
    agent = _spawn(
        [
            "-m",
            "wrenn.agent",
            "--data-dir",
            str(data_dir),
            "--port",
            str(agent_port),
            "--proxy-port",
            str(proxy_port),
            *agent_identity(data_dir),
        ],
        logs / "agent.log",
    )
    with console.status("starting the host agent (its first start probes for KVM)"):
        _wait_http(agent_url, agent, logs / "agent.log", "host agent", 120)
    base_url = f"http://127.0.0.1:{port}"
    server = _spawn(
        [
            "-m",
            "wrenn.controlplane",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--local-agent",
            agent_url,
        ],
        logs / "server.log",
    )
    with console.status("starting the control plane"):
        _wait_http(f"{base_url}/health", server, logs / "server.log", "control plane", 60)
    email, password, api_key = _credentials(base_url, data_dir, saved)
    platform = Platform(str(data_dir), base_url, api_key, email, password, agent_url, agent.pid, server.pid)
    platform.save()
    return platform


def stop(data_dir: Path, console: Console, *, quiet: bool = False) -> bool:
    """Stop what `up` started: every capsule is destroyed, the agent removes its host rules."""
    platform = Platform.load(data_dir)
    if platform is None:
        if not quiet:
            console.print(f"Wrenn is not running from {data_dir}")
        return False
    if _alive(platform.server_pid):
        os.kill(platform.server_pid, signal.SIGTERM)
    if _alive(platform.agent_pid):
        from wrenn.proto.hostagent.v1 import hostagent_pb
        from wrenn.proto.hostagent.v1.auth import TOKEN_FILE, TokenInterceptorSync, read_token
        from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClientSync

        try:
            token = read_token(data_dir / TOKEN_FILE)
            with HostAgentServiceClientSync(
                platform.agent_url, interceptors=[TokenInterceptorSync(token)]
            ) as client:
                client.terminate(hostagent_pb.TerminateRequest(), timeout_ms=120_000)
        except Exception:  # noqa: BLE001 - whatever happened, fall back to signals
            os.kill(platform.agent_pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_alive(platform.agent_pid) or _alive(platform.server_pid)):
        time.sleep(0.2)
    for pid in (platform.agent_pid, platform.server_pid):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # The credentials stay (the database keeps the account): only the processes are gone.
    platform.agent_pid = platform.server_pid = 0
    platform.save()
    if not quiet:
        console.print("Wrenn stopped: every capsule destroyed, the agent's network rules removed.")
    return True


def env_lines(platform: Platform) -> str:
    return f"export WRENN_BASE_URL={platform.base_url}\nexport WRENN_API_KEY={platform.api_key}"
