"""Shared fixtures. envd runs as a real process (python -m wrenn.envd --dev) on loopback."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TEST_USER = "wrenn-envd-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Envd:
    """A running envd process and what a client needs to talk to it."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    access_token: str | None = None
    user: str = "root"
    workdir: Path = field(default_factory=lambda: Path("/"))

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Access-Token": self.access_token} if self.access_token else {}

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def init(self, **body: object) -> httpx.Response:
        """POST /init with the current token; remembers a new token, user and workdir."""
        r = httpx.post(f"{self.url}/init", json=body, headers=self.headers, timeout=10)
        if r.status_code == 204:
            if "accessToken" in body:
                self.access_token = body["accessToken"] or None  # type: ignore[assignment]
            if "defaultUser" in body:
                self.user = str(body["defaultUser"])
            if "defaultWorkdir" in body:
                self.workdir = Path(str(body["defaultWorkdir"]))
        return r

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_envd(tmp: Path, *extra: str) -> Envd:
    port = free_port()
    log_path = tmp / f"envd-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrenn.envd", "--dev", "--host", "127.0.0.1", "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    envd = Envd(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log_path=log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envd exited with {proc.returncode}:\n{envd.log()}")
        try:
            if httpx.get(f"{envd.url}/health", timeout=1).status_code == 204:
                return envd
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    envd.stop()
    raise RuntimeError(f"envd did not answer /health within 20 s:\n{envd.log()}")


@pytest.fixture(scope="session")
def test_user() -> Iterator[pwd.struct_passwd]:
    """A non-root user for processes and file ownership; created for the session when missing."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    created = False
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", TEST_USER], check=True)
        created = True
        entry = pwd.getpwnam(TEST_USER)
    yield entry
    if created:
        subprocess.run(["userdel", "--remove", TEST_USER], check=False, capture_output=True)


@pytest.fixture(scope="session")
def envd_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wrenn-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def envd(envd_tmp: Path, test_user: pwd.struct_passwd) -> Iterator[Envd]:
    """One envd for the session, initialised as the platform would: token, default user, workdir.

    Tests that change its global state (token, default user) use `fresh_envd` instead.
    """
    server = start_envd(envd_tmp)
    workdir = envd_tmp / "work"
    workdir.mkdir()
    os.chown(workdir, test_user.pw_uid, test_user.pw_gid)
    r = server.init(
        accessToken=secrets.token_urlsafe(24),
        defaultUser=test_user.pw_name,
        defaultWorkdir=str(workdir),
        envVars={"WRENN_TEST": "1"},
    )
    assert r.status_code == 204, r.text
    yield server
    server.stop()


@pytest.fixture
def fresh_envd(envd_tmp: Path) -> Iterator[Envd]:
    """A new, uninitialised envd (no token, default user = the invoking user)."""
    server = start_envd(envd_tmp)
    yield server
    server.stop()


@pytest.fixture
def workdir(envd: Envd, test_user: pwd.struct_passwd) -> Iterator[Path]:
    """A fresh directory owned by the test user, removed afterwards."""
    path = Path(tempfile.mkdtemp(dir=envd.workdir))
    os.chown(path, test_user.pw_uid, test_user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- guest images (tests/images) -----------------------------------------------------------------

from wrenn.images import Image  # noqa: E402  (kept with the image fixtures)

#: Where the session's guest image is built. CI keeps it between its image-build and test stages, and a
#: developer's later runs reuse it: a build whose inputs did not change is a no-op.
IMAGE_DATA_DIR = Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))


@pytest.fixture(scope="session")
def image_data_dir() -> Iterator[Path]:
    """The shared data dir; at the end of the session, the run's ready snapshots go (tests/agent/_agent.py
    shares them between the run's agents), and those of runs whose process is gone."""
    yield IMAGE_DATA_DIR
    for run in (IMAGE_DATA_DIR / "ready-cache").glob("run-*"):
        pid = int(run.name.removeprefix("run-")) if run.name.removeprefix("run-").isdigit() else 0
        if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def image(image_data_dir: Path) -> Image:
    """The `minimal` guest image, built (or found up to date) once per session."""
    if os.geteuid() != 0:
        pytest.skip("building a guest image needs root (debootstrap, chroot)")
    from wrenn.images import build

    return build("minimal", image_data_dir)


@pytest.fixture(scope="session")
def pooled_agent(image: Image) -> Iterator[Any]:
    """A host agent with a warm pool of two stopped VMs (docs/pool.md), shared by tests/agent/test_pool.py
    and tests/security/test_pool.py: one first boot for both."""
    from tests.agent._agent import pooled_agent_process

    if os.geteuid() != 0:
        pytest.skip("the host agent needs root")
    with pooled_agent_process() as agent:
        yield agent


@pytest.fixture(scope="module")
def wrenn_server(image: Image) -> Iterator[tuple[str, str]]:
    """The platform as a user meets it: a control plane process (SQLite) over a real host agent that boots
    real VMs. Yields (base URL, API key). Module-scoped: two agents on one host would collide."""
    from tests.agent._agent import running_agent

    if os.geteuid() != 0:
        pytest.skip("the host agent needs root")
    with running_agent(f"ws{os.getpid() % 1000:03d}k") as agent:
        yield from _control_plane(agent.url, agent.token_file)


def bootstrap_admin(
    post: Callable[..., Any], data_dir: Path, email: str, password: str = "correct horse", base: str = ""
) -> Any:
    """The platform's first admin, made with the bootstrap token the control plane wrote into its data
    directory (no sign-up makes an admin). `post` is a client's post (httpx or a TestClient)."""
    token = (data_dir / "bootstrap-token").read_text().strip()
    r = post(f"{base}/v1/admin/bootstrap", json={"token": token, "email": email, "password": password})
    assert r.status_code == 201, r.text
    return r


#: Each running test control plane's data directory (its SQLite database is `wrenn.db` there), by base URL.
CONTROL_PLANE_DIRS: dict[str, Path] = {}


def start_control_plane(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m wrenn.controlplane *args` on a free port, its data and its `server.log` under `root`, once
    its `/health` answers: its process and base URL. One that exits or does not answer within 30 s is
    stopped, and a RuntimeError shows its log."""
    port = free_port()
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "wrenn.controlplane", "--port", str(port), "--data-dir", str(root), *args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait(10)
            raise RuntimeError(f"the control plane did not start:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.1)


def _control_plane(
    agent_url: str, token_file: Path, root: Path | None = None, database_url: str | None = None
) -> Iterator[tuple[str, str]]:
    """The control plane on a free port, its data under `root` (default: a new temporary dir, removed
    afterwards), on SQLite there or on `database_url`. `sdk@example.com`, made with the bootstrap token,
    is the platform's admin."""
    root = root or Path(tempfile.mkdtemp(prefix="wrenn-cp-"))
    try:
        server, base = start_control_plane(
            root, "--local-agent", agent_url, "--local-agent-token-file", str(token_file),
            *(["--database-url", database_url] if database_url else []),
            # reconcile fast (tests wait on it); stop fast (a test's streams are over when it stops)
            env={"WRENN_MONITOR_INTERVAL_S": "2", "WRENN_SHUTDOWN_GRACE_S": "3"},
        )  # fmt: skip
    except RuntimeError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        account = bootstrap_admin(httpx.post, root, "sdk@example.com", base=base)  # the platform's admin
        token = account.json()["token"]
        key = httpx.post(
            f"{base}/v1/api-keys", json={"name": "sdk"}, headers={"Authorization": f"Bearer {token}"}
        )
        CONTROL_PLANE_DIRS[base] = root
        yield base, key.json()["key"]
    finally:
        CONTROL_PLANE_DIRS.pop(base, None)
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # a connection it still waits for: the test is over anyway
            server.kill()
            server.wait(10)
        shutil.rmtree(root, ignore_errors=True)
