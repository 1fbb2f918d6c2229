"""The `wrenn` command as a user meets it: up, env, capsule commands, errors as one line, down."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent._agent import _free_port, private_data_dir
from tests.cli._run import WRENN, wrenn

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]


@pytest.fixture(scope="module")
def platform(image: object) -> Iterator[tuple[Path, dict[str, str]]]:
    shared = Path(os.environ.get("WRENN_TEST_DATA_DIR", "/var/tmp/wrenn-test-data"))
    data_dir = private_data_dir(shared, "cli")
    ports = ["--port", str(_free_port()), "--agent-port", str(_free_port())]
    ports += ["--agent-proxy-port", str(_free_port())]
    try:  # a failed `up` leaves a supervisor and processes too: `down` stops them either way
        up = wrenn("up", "--detach", "--data-dir", str(data_dir), *ports)
        assert up.stdout == "42\n", up.stderr  # the Quickstart's promise
        assert "What next" in up.stderr and "wrenn env" in up.stderr
        assert (data_dir / "platform.json").stat().st_mode & 0o777 == 0o600  # it holds the admin's key
        assert not (data_dir / "bootstrap-token").exists()  # the first admin is made: the token is spent
        exports = wrenn("env", "--data-dir", str(data_dir)).stdout
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        assert set(env) == {"WRENN_BASE_URL", "WRENN_API_KEY"}
        # The dashboard's address and the admin's first login, which works.
        shown = re.search(r"Dashboard: (\S+)/\s+sign in as (\S+), password (\S+)", up.stderr)
        assert shown is not None and shown.group(1) == env["WRENN_BASE_URL"], up.stderr
        login = {"email": shown.group(2), "password": shown.group(3)}
        assert httpx.post(f"{shown.group(1)}/v1/auth/login", json=login).status_code == 200
        assert httpx.get(f"{shown.group(1)}/").text.startswith("<!doctype html>")
        again = wrenn("up", "--detach", "--data-dir", str(data_dir), *ports)  # already running: reused
        assert "already running" in again.stderr and again.stdout == "42\n"
        yield data_dir, env
    finally:
        wrenn("down", "--data-dir", str(data_dir), check=False)
    assert subprocess.run(["pgrep", "-f", f"--data-dir {data_dir}"], capture_output=True).stdout == b""


def test_capsule_commands(platform: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, env = platform
    capsule_id = wrenn("capsule", "create", "--memory", "256", env=env).stdout.strip()
    assert capsule_id.startswith("cl-")
    assert capsule_id in wrenn("capsule", "list", env=env).stdout
    ran = wrenn("capsule", "exec", capsule_id, "--", "echo out; echo err >&2; exit 5", env=env, check=False)
    assert (ran.returncode, ran.stdout, ran.stderr) == (5, "out\n", "err\n")
    local = tmp_path / "data.bin"
    local.write_bytes(os.urandom(3 << 20))
    wrenn("capsule", "cp", str(local), f"{capsule_id}:/home/user/data.bin", env=env)
    wrenn("capsule", "cp", f"{capsule_id}:/home/user/data.bin", str(tmp_path / "back.bin"), env=env)
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    wrenn("capsule", "kill", capsule_id, env=env)
    assert capsule_id not in wrenn("capsule", "list", env=env).stdout


def test_errors_are_one_clear_line(platform: tuple[Path, dict[str, str]]) -> None:
    _, env = platform
    cases = [
        (("capsule", "list"), {**env, "WRENN_API_KEY": "wrn_wrong"}, "unauthorized"),
        (("capsule", "exec", "cl-nope", "--", "true"), env, "not_found"),
        (("capsule", "list"), {**env, "WRENN_BASE_URL": "http://127.0.0.1:9"}, "cannot reach"),
    ]
    for args, environment, words in cases:
        result = wrenn(*args, env=environment, check=False)
        assert result.returncode == 1, result
        assert words in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_template_commands(platform: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """`wrenn template build -f Dockerfile` with its live log, a capsule of the template, list, delete."""
    _, env = platform
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("built by a Dockerfile\n")
    (tmp_path / "Dockerfile").write_text(
        "# a web server template\n"
        "FROM minimal\n"
        "ENV GREETING=hello\n"
        "COPY --chmod=0640 site /home/user/site\n"
        "WORKDIR /home/user/site\n"
        "RUN echo $GREETING > greeting.txt && \\\n"
        "    ls -l\n"
        'CMD ["python3", "-m", "http.server", "8000"]\n'
        "HEALTHCHECK --interval=1s CMD curl -sf localhost:8000/\n"
    )
    built = wrenn("template", "build", "-f", str(tmp_path / "Dockerfile"), "--name", "site", env=env)
    assert "[3/4] WORKDIR" in built.stdout and "greeting.txt" in built.stdout, built.stdout
    assert "template site ready" in built.stdout
    assert "site" in wrenn("template", "list", env=env).stdout
    capsule_id = wrenn("capsule", "create", "--template", "site", env=env).stdout.strip()
    served = wrenn(
        "capsule", "exec", capsule_id, "--", "curl -s localhost:8000/index.html; cat greeting.txt", env=env
    )
    assert served.stdout == "built by a Dockerfile\nhello\n"
    wrenn("capsule", "kill", capsule_id, env=env)
    wrenn("template", "delete", "site", env=env)
    assert "site" not in wrenn("template", "list", env=env).stdout
    # An instruction that is no step: the line is named, nothing is built.
    (tmp_path / "Dockerfile").write_text("FROM minimal\nRUN true\nEXPOSE 8000\n")
    bad = wrenn("template", "build", "-f", str(tmp_path / "Dockerfile"), "--name", "x", env=env, check=False)
    assert bad.returncode == 2 and "line 3: EXPOSE" in bad.stderr, bad.stderr


def test_login_keys_and_the_lifecycle_commands(platform: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    data_dir, env = platform
    saved = json.loads((data_dir / "platform.json").read_text())
    config = tmp_path / "config"
    env = {**env, "WRENN_CONFIG_DIR": str(config)}
    login = subprocess.run(
        [*WRENN, "login", "--base-url", env["WRENN_BASE_URL"], "--email", saved["admin_email"], "--password-stdin"],
        input=saved["admin_password"] + "\n", capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    stored = config / "login.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and stat.S_IMODE(config.stat().st_mode) == 0o700
    key = wrenn("keys", "create", "--name", "for e2b", "--e2b", env=env).stdout.strip()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", key)
    listed = wrenn("keys", "list", env=env).stdout
    assert "for e2b" in listed and key not in listed  # a key is shown once
    key_id = next(line.split("\t")[0] for line in listed.splitlines() if "for e2b" in line)
    wrenn("keys", "delete", key_id, env=env)
    assert "for e2b" not in wrenn("keys", "list", env=env).stdout

    capsule_id = wrenn("capsule", "create", "--memory", "256", env=env).stdout.strip()
    try:
        wrenn("capsule", "exec", capsule_id, "--", "echo kept > /home/user/kept.txt", env=env)
        logs = wrenn("capsule", "logs", capsule_id, "--limit", "1000", env=env).stdout
        assert "process started" in logs and "cmd=" in logs
        assert wrenn("capsule", "pause", capsule_id, env=env).stdout.strip() == "paused"
        assert wrenn("capsule", "resume", capsule_id, env=env).stdout.strip() == "running"
        forks = wrenn("capsule", "fork", capsule_id, env=env).stdout.split()
        assert len(forks) == 1 and forks[0].startswith("cl-")
        ran = wrenn("capsule", "exec", forks[0], "--", "cat /home/user/kept.txt", env=env)
        assert ran.stdout == "kept\n"
        wrenn("capsule", "kill", forks[0], env=env)
        name = wrenn("capsule", "snapshot", capsule_id, "--name", "cli-snap", env=env).stdout.strip()
        assert name == "cli-snap"
    finally:
        wrenn("capsule", "kill", capsule_id, env=env, check=False)
