"""The unmodified official `e2b` SDK against a running Wrenn: control plane, traffic proxy, host agent and
real VMs. The SDK is pointed at Wrenn the way a user would: its API key, `api_url` and `sandbox_url` (every
envd and port request then reaches the control plane, routed by the `E2b-Sandbox-Id/-Port` headers).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2b import (
    CommandExitException,
    FilesystemEventType,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxQuery,
)

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]
MiB = 1 << 20


@pytest.fixture(scope="module")
def opts(wrenn_server: tuple[str, str]) -> dict[str, Any]:
    """What an E2B program changes to use Wrenn: the key and the URLs."""
    base_url, api_key = wrenn_server
    return {"api_key": api_key, "api_url": base_url, "sandbox_url": base_url, "domain": "wrenn.local"}


@pytest.fixture(scope="module")
def sbx(opts: dict[str, Any]) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(metadata={"suite": "e2b", "who": "a b&c"}, envs={"GREETING": "hello"}, **opts)
    yield sandbox
    sandbox.kill()


def test_create_info_list_and_timeout(sbx: Sandbox, opts: dict[str, Any]) -> None:
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id and info.state.value == "running"
    assert info.metadata == {"suite": "e2b", "who": "a b&c"}
    assert sbx.is_running()
    listed = Sandbox.list(query=SandboxQuery(metadata={"who": "a b&c"}), **opts).next_items()
    assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
    assert Sandbox.list(query=SandboxQuery(metadata={"who": "nobody"}), **opts).next_items() == []
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    assert sbx.get_info().end_at > before


def test_commands(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo $GREETING; whoami")
    assert result.stdout.split() == ["hello", "user"] and result.exit_code == 0
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo oops >&2; exit 3")
    assert err.value.exit_code == 3 and "oops" in err.value.stderr
    # background, with stdin
    handle = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "piped\n")
    assert handle.wait().stdout.strip() == "got:piped"
    sleeper = sbx.commands.run("sleep 600", background=True)
    assert sleeper.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(sleeper.pid)
    deadline = time.monotonic() + 15
    while sleeper.pid in [p.pid for p in sbx.commands.list()] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sleeper.pid not in [p.pid for p in sbx.commands.list()]


def test_pty(sbx: Sandbox) -> None:
    seen = bytearray()
    terminal = sbx.pty.create(PtySize(rows=24, cols=80))

    def read() -> None:
        with contextlib.suppress(CommandExitException):  # the kill below ends it with -1
            terminal.wait(on_pty=seen.extend)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sbx.pty.send_stdin(terminal.pid, b"echo $((6*7))\n")
    deadline = time.monotonic() + 30
    while b"42" not in seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"42" in seen
    sbx.pty.kill(terminal.pid)


def test_files_watch_and_a_large_file(sbx: Sandbox) -> None:
    sbx.files.write("/home/user/hello.txt", "hi from e2b")
    assert sbx.files.read("/home/user/hello.txt") == "hi from e2b"
    assert "hello.txt" in [e.name for e in sbx.files.list("/home/user")]
    watcher = sbx.files.watch_dir("/home/user")
    sbx.files.write("/home/user/watched.txt", "x")
    deadline, events = time.monotonic() + 15, []
    while time.monotonic() < deadline and not any(e.name == "watched.txt" for e in events):
        events += watcher.get_new_events()
        time.sleep(0.2)
    watcher.stop()
    assert any(e.name == "watched.txt" and e.type in (FilesystemEventType.CREATE, FilesystemEventType.WRITE)
               for e in events)  # fmt: skip
    big = os.urandom(32 * MiB)
    sbx.files.write("/home/user/big.bin", big)
    assert (
        sbx.commands.run("sha256sum /home/user/big.bin").stdout.split()[0] == hashlib.sha256(big).hexdigest()
    )
    back = sbx.files.read("/home/user/big.bin", format="bytes")
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(big).hexdigest()


def test_get_host_reaches_a_server_in_the_sandbox(sbx: Sandbox, opts: dict[str, Any]) -> None:
    sbx.files.write("/home/user/www/index.html", "served from the sandbox")
    sbx.commands.run("cd /home/user/www && python3 -m http.server 8000", background=True)
    host = sbx.get_host(8000)
    assert host == f"8000-{sbx.sandbox_id}.wrenn.local"
    deadline = time.monotonic() + 30
    while True:  # the server needs a moment to listen
        r = httpx.get(f"{opts['api_url']}/index.html", headers={"Host": host}, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (r.status_code, r.text) == (200, "served from the sandbox")
    # the code interpreter's port (49999) is routed like any other, also by E2B's headers alone
    sbx.commands.run("cd /home/user/www && python3 -m http.server 49999", background=True)
    e2b_headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49999"}
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{opts['api_url']}/index.html", headers=e2b_headers, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (r.status_code, r.text) == (200, "served from the sandbox")


def test_pause_connect_resumes_and_kill(opts: dict[str, Any]) -> None:
    sandbox = Sandbox.create(**opts)
    sandbox.files.write("/home/user/kept.txt", "kept")
    assert sandbox.pause()
    assert sandbox.get_info().state.value == "paused"
    again = Sandbox.connect(sandbox.sandbox_id, **opts)  # resumes it
    assert again.get_info().state.value == "running"
    assert again.files.read("/home/user/kept.txt") == "kept"
    assert again.kill()
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox.sandbox_id, **opts)


def test_unknown_sandbox_is_the_sdks_not_found(opts: dict[str, Any]) -> None:
    with pytest.raises(NotFoundException):
        Sandbox.connect("cl-doesnotexist0000000000000", **opts)
    assert Sandbox.kill("cl-doesnotexist0000000000000", **opts) is False


def test_the_timeout_ends_a_sandbox_and_retried_creates_are_one(opts: dict[str, Any]) -> None:
    first = Sandbox.create(timeout=3, idempotency_key="e2b-suite-once", **opts)
    again = Sandbox.create(timeout=3, idempotency_key="e2b-suite-once", **opts)
    assert again.sandbox_id == first.sandbox_id  # a retried create did not make a second sandbox
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            first.get_info()
        except NotFoundException:
            break
        time.sleep(1)
    else:
        pytest.fail("the sandbox outlived its timeout")


def test_snapshot_and_fork_leave_the_sandbox_running(opts: dict[str, Any]) -> None:
    sandbox = Sandbox.create(**opts)
    try:
        sandbox.files.write("/home/user/origin.txt", "origin")
        snapshot = sandbox.create_snapshot(name="e2b-suite-snap")
        assert snapshot.snapshot_id == "e2b-suite-snap"
        assert sandbox.get_info().state.value == "running"  # E2B's snapshot: the sandbox runs on
        from_snapshot = Sandbox.create(template="e2b-suite-snap", **opts)
        assert from_snapshot.files.read("/home/user/origin.txt") == "origin"
        forks = sandbox.fork(count=2, timeout=120)
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks)
        for forked in forks:
            assert forked.files.read("/home/user/origin.txt") == "origin"  # type: ignore[union-attr]
            forked.kill()  # type: ignore[union-attr]
        assert sandbox.get_info().state.value == "running"
        from_snapshot.kill()
        assert Sandbox.delete_snapshot("e2b-suite-snap", **opts)
    finally:
        sandbox.kill()
