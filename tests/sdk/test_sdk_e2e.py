"""The SDK against the real control plane, host agent and VMs: every public method once.

`wrenn_server` (tests/conftest.py, provided with the control plane) yields `(base_url, api_key)` of a
running control plane with a host agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator

import pytest

import tests.conftest as _root_conftest
from wrenn import AsyncCapsule, Capsule, WrennNotFoundError
from wrenn.sdk import (
    CapsuleInfo,
    CommandHandle,
    FileEntry,
    StreamExitEvent,
    StreamStartEvent,
    StreamStdoutEvent,
    WrennConflictError,
)

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]
if not hasattr(_root_conftest, "wrenn_server"):
    pytestmark.append(pytest.mark.skip(reason="the wrenn_server fixture comes with the control plane"))

MEMORY = 256


@pytest.fixture(scope="module")
def server(wrenn_server: tuple[str, str]) -> tuple[str, str]:
    return wrenn_server


@pytest.fixture(scope="module")
def capsule(server: tuple[str, str]) -> Iterator[Capsule]:
    base_url, api_key = server
    with Capsule(memory_mb=MEMORY, wait=True, api_key=api_key, base_url=base_url) as c:
        yield c


# --- lifecycle ------------------------------------------------------------------------------------


def test_create_info_list_connect_destroy(server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, api_key = server
    monkeypatch.setenv("WRENN_API_KEY", api_key)  # env vars are honoured
    monkeypatch.setenv("WRENN_BASE_URL", base_url)
    c = Capsule.create(memory_mb=MEMORY)
    try:
        assert c.capsule_id.startswith("cl-")
        assert isinstance(c.info, CapsuleInfo) and c.info.memory_mb == MEMORY
        c.wait_ready(timeout=120)
        assert c.is_running()
        assert c.get_info().status == "running"
        assert Capsule.get_info(c.capsule_id).id == c.capsule_id  # static form
        assert c.capsule_id in [i.id for i in Capsule.list()]
        c.ping()
        again = Capsule.connect(c.capsule_id)
        assert again.capsule_id == c.capsule_id and again.info.status == "running"
        again.close()
        assert c.get_url(8000).startswith("ws://8000-" + c.capsule_id + ".")
    finally:
        Capsule.destroy(c.capsule_id)  # static form
        c.close()
    with pytest.raises(WrennNotFoundError):
        Capsule.connect("cl-doesnotexist0000000000000")
    assert c.capsule_id not in [i.id for i in Capsule.list()]


def test_context_manager_destroys(server: tuple[str, str]) -> None:
    base_url, api_key = server
    with Capsule(memory_mb=MEMORY, api_key=api_key, base_url=base_url) as c:
        capsule_id = c.capsule_id
    assert Capsule.get_info(capsule_id, api_key=api_key, base_url=base_url).status == "stopped"


def test_bad_api_key(server: tuple[str, str]) -> None:
    from wrenn import WrennAuthenticationError

    with pytest.raises(WrennAuthenticationError):
        Capsule.list(api_key="wrn_" + "0" * 32, base_url=server[0])


def test_pause_resume_and_connect_resumes(capsule: Capsule, server: tuple[str, str]) -> None:
    capsule.files.write("/root/kept.txt", "still here")
    sleeper = capsule.commands.run("sleep 600", background=True, tag="sdk-paused-sleeper")
    assert capsule.pause().status == "paused"
    assert not capsule.is_running()
    with pytest.raises(WrennConflictError):
        capsule.commands.run("true")
    assert capsule.resume().status == "running"
    assert capsule.files.read("/root/kept.txt") == "still here"
    assert sleeper.pid in [p.pid for p in capsule.commands.list()]  # processes survive the pause
    assert capsule.commands.run("echo back").stdout == "back\n"
    Capsule.pause(capsule.capsule_id, api_key=server[1], base_url=server[0])
    assert capsule.get_info().status == "paused"
    again = Capsule.connect(capsule.capsule_id, api_key=server[1], base_url=server[0])  # resumes
    assert again.info.status == "running"
    assert again.files.read("/root/kept.txt") == "still here"
    capsule.commands.kill(sleeper.pid)
    again.close()


def test_create_snapshot_and_boot_from_it(server: tuple[str, str]) -> None:
    base_url, api_key = server
    auth = {"api_key": api_key, "base_url": base_url}
    name = f"sdk-snap-{os.getpid()}"
    with Capsule(memory_mb=MEMORY, wait=True, **auth) as c:
        c.files.write("/root/snap.txt", "from the snapshot")
        c.commands.run("sleep 900", background=True, tag="snap-sleeper")
        template = c.create_snapshot(name)
        assert template.name == name and template.memory_mb == MEMORY
        assert c.get_info().status == "paused"  # left paused
        with pytest.raises(WrennConflictError):
            c.create_snapshot(name)
        assert name in [t.name for t in Capsule.list_snapshots(**auth)]
        rooted = c.create_snapshot(f"{name}-root", default_user="root")  # a template declares its user
        assert rooted.metadata["default_user"] == "root"
        with Capsule(template=rooted.name, memory_mb=MEMORY, wait=True, **auth) as as_root:
            assert as_root.commands.run("id -un").stdout == "root\n"
        Capsule.delete_snapshot(rooted.name, **auth)
        with Capsule(template=name, memory_mb=MEMORY, wait=True, **auth) as child:
            assert child.commands.run("id -un").stdout == "user\n"  # the platform's default
            assert child.files.read("/root/snap.txt") == "from the snapshot"
            # the template's memory came along: its process runs in the child
            assert "snap-sleeper" in [p.tag for p in child.commands.list()]
            with pytest.raises(WrennConflictError):  # the child stands on it
                Capsule.delete_snapshot(name, **auth)
    Capsule.delete_snapshot(name, **auth)
    assert name not in [t.name for t in Capsule.list_snapshots(**auth)]
    with pytest.raises(WrennNotFoundError):
        Capsule.delete_snapshot(name, **auth)


def test_fork_a_live_capsule(server: tuple[str, str]) -> None:
    base_url, api_key = server
    with Capsule(memory_mb=MEMORY, wait=True, api_key=api_key, base_url=base_url) as parent:
        parent.files.write("/root/fork.txt", "parent")
        parent.commands.run("sleep 900", background=True, tag="fork-sleeper")
        forks = parent.fork(count=2)
        try:
            assert len(forks) == 2 and parent.get_info().status == "running"  # the parent runs on
            for fork in forks:
                assert fork.info.status == "running" and fork.capsule_id != parent.capsule_id
                assert fork.files.read("/root/fork.txt") == "parent"
                assert "fork-sleeper" in [p.tag for p in fork.commands.list()]
            forks[0].files.write("/root/fork.txt", "first fork")
            assert forks[1].files.read("/root/fork.txt") == "parent"  # each has its own disk
            assert parent.files.read("/root/fork.txt") == "parent"
            numbers = {f.commands.run("head -c 16 /dev/urandom | od -An -tx1").stdout for f in forks}
            assert len(numbers) == 2
        finally:
            for fork in forks:
                fork.destroy()
                fork.close()
    fork_templates = [t.name for t in Capsule.list_snapshots(api_key=api_key, base_url=base_url)]
    for name in fork_templates:
        if name.startswith(f"fork-{parent.capsule_id}-"):
            Capsule.delete_snapshot(name, api_key=api_key, base_url=base_url)


# --- commands -------------------------------------------------------------------------------------


def test_run_foreground(capsule: Capsule) -> None:
    result = capsule.commands.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert result.duration_ms is not None and result.duration_ms >= 0
    shaped = capsule.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp")
    assert shaped.stdout == "hi\n/tmp\n"
    binary = capsule.commands.run("printf '\\377\\376ok'")
    assert binary.stdout_bytes == b"\xff\xfeok"


def test_run_timeout(capsule: Capsule) -> None:
    began = time.monotonic()
    result = capsule.commands.run("sleep 30", timeout=2)
    assert result.exit_code != 0 and time.monotonic() - began < 20


def test_background_list_kill(capsule: Capsule) -> None:
    handle = capsule.commands.run("sleep 300", background=True, tag="sdk-sleeper")
    assert isinstance(handle, CommandHandle) and handle.pid > 0 and handle.capsule_id == capsule.capsule_id
    assert handle.tag == "sdk-sleeper"
    assert handle.pid in [p.pid for p in capsule.commands.list()]
    capsule.commands.kill(handle.pid)
    deadline = time.monotonic() + 10
    while handle.pid in [p.pid for p in capsule.commands.list()] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert handle.pid not in [p.pid for p in capsule.commands.list()]
    with pytest.raises(WrennNotFoundError):
        capsule.commands.kill(handle.pid)


def test_stream(capsule: Capsule) -> None:
    events = list(capsule.commands.stream("for i in 1 2 3; do echo $i; sleep 0.1; done; exit 4"))
    assert isinstance(events[0], StreamStartEvent) and events[0].pid > 0
    assert "".join(e.data for e in events if isinstance(e, StreamStdoutEvent)) == "1\n2\n3\n"
    assert isinstance(events[-1], StreamExitEvent) and events[-1].exit_code == 4
    direct = list(capsule.commands.stream("echo", ["a", "b"]))
    assert "".join(e.data for e in direct if isinstance(e, StreamStdoutEvent)) == "a b\n"


def test_connect_to_background(capsule: Capsule) -> None:
    handle = capsule.commands.run("sleep 1; echo late", background=True)
    events = list(capsule.commands.connect(handle.pid))
    assert "late\n" in "".join(e.data for e in events if isinstance(e, StreamStdoutEvent))
    assert isinstance(events[-1], StreamExitEvent)


# --- files ----------------------------------------------------------------------------------------


def test_files_round_trip(capsule: Capsule) -> None:
    capsule.files.write("/tmp/sdk/a/hello.txt", "héllo")  # parents created
    assert capsule.files.read("/tmp/sdk/a/hello.txt") == "héllo"
    capsule.files.write("/tmp/sdk/a/bin", bytes(range(256)))
    assert capsule.files.read_bytes("/tmp/sdk/a/bin") == bytes(range(256))
    entries = capsule.files.list("/tmp/sdk/a")
    assert {e.name for e in entries} == {"hello.txt", "bin"}
    assert all(isinstance(e, FileEntry) for e in entries)
    assert next(e for e in entries if e.name == "bin").size == 256
    assert {e.path for e in capsule.files.list("/tmp/sdk", depth=2)} >= {"/tmp/sdk/a", "/tmp/sdk/a/bin"}
    assert capsule.files.exists("/tmp/sdk/a/hello.txt") and not capsule.files.exists("/tmp/sdk/nope")
    assert not capsule.files.exists("/no/such/dir/x")
    made = capsule.files.make_dir("/tmp/sdk/b/c")
    assert made.is_dir and made.path == "/tmp/sdk/b/c"
    assert capsule.files.make_dir("/tmp/sdk/b/c").is_dir  # idempotent
    capsule.files.remove("/tmp/sdk")
    assert not capsule.files.exists("/tmp/sdk")
    with pytest.raises(WrennNotFoundError):
        capsule.files.read("/tmp/sdk/a/hello.txt")


def test_download_stream(capsule: Capsule) -> None:
    capsule.commands.run("head -c 3000000 /dev/urandom > /tmp/big.bin")
    expected = capsule.commands.run("sha256sum /tmp/big.bin").stdout.split()[0]
    import hashlib

    digest = hashlib.sha256()
    for chunk in capsule.files.download_stream("/tmp/big.bin"):
        digest.update(chunk)
    assert digest.hexdigest() == expected
    with pytest.raises(WrennNotFoundError):
        list(capsule.files.download_stream("/tmp/missing.bin"))


def test_upload_stream(capsule: Capsule) -> None:
    chunks = [bytes([i]) * 65536 for i in range(40)]
    capsule.files.upload_stream("/tmp/up.bin", iter(chunks))
    assert capsule.commands.run("stat -c %s /tmp/up.bin").stdout.strip() == str(40 * 65536)
    assert b"".join(capsule.files.download_stream("/tmp/up.bin")) == b"".join(chunks)


def test_watch(capsule: Capsule) -> None:
    capsule.files.make_dir("/tmp/watched/sub")
    with capsule.files.watch("/tmp/watched", recursive=True) as events:
        capsule.files.write("/tmp/watched/new.txt", "x")
        capsule.files.write("/tmp/watched/sub/deep.txt", "y")
        seen: set[tuple[str, str]] = set()
        for event in events:
            seen.add((event.name, event.type))
            if {("new.txt", "create"), ("sub/deep.txt", "create")} <= seen:
                break
    with pytest.raises(WrennNotFoundError):
        capsule.files.watch("/tmp/not-a-dir")


# --- pty ------------------------------------------------------------------------------------------


def _read_until(term: object, needle: bytes, limit: float = 30) -> bytes:
    out = b""
    deadline = time.monotonic() + limit
    for event in term:  # type: ignore[attr-defined]
        if event.type == "output":
            out += event.data
        if needle in out or event.type == "exit" or time.monotonic() > deadline:
            break
    return out


def test_pty_session_and_reconnect(capsule: Capsule) -> None:
    with capsule.pty(cmd="/bin/sh", cols=100, rows=30, envs={"MARK": "pty-ok"}, cwd="/tmp") as term:
        term.write(b"echo $MARK; pwd; stty size\n")
        out = _read_until(term, b"30 100")
        assert b"pty-ok" in out and b"/tmp" in out and term.tag and term.pid
        tag = term.tag
        term.resize(120, 40)
    with capsule.pty_connect(tag) as again:  # the terminal survived the disconnect
        again.write(b"stty size\n")
        assert b"40 120" in _read_until(again, b"40 120")
        again.kill()
        assert any(e.type == "exit" for e in again)


# --- git ------------------------------------------------------------------------------------------


def test_git(capsule: Capsule) -> None:
    if capsule.commands.run("command -v git").exit_code != 0:
        pytest.skip("git is not in the template")
    git = capsule.git
    git.init("/tmp/repo", initial_branch="main")
    git.configure_user("SDK Test", "sdk@example.com", scope="local", cwd="/tmp/repo")
    assert git.get_config("user.name", cwd="/tmp/repo") == "SDK Test"
    assert git.get_config("no.such", cwd="/tmp/repo") is None
    capsule.files.write("/tmp/repo/a.txt", "a")
    status = git.status(cwd="/tmp/repo")
    assert status.branch == "main" and status.has_untracked
    git.add(cwd="/tmp/repo")
    git.commit("first", cwd="/tmp/repo")
    assert git.status(cwd="/tmp/repo").is_clean
    git.create_branch("dev", cwd="/tmp/repo")
    assert [(b.name, b.is_current) for b in git.branches(cwd="/tmp/repo")] == [("dev", True), ("main", False)]
    git.checkout_branch("main", cwd="/tmp/repo")
    git.delete_branch("dev", cwd="/tmp/repo")
    git.remote_add("origin", "https://example.com/r.git", cwd="/tmp/repo")
    assert git.remote_get("origin", cwd="/tmp/repo") == "https://example.com/r.git"
    assert git.remote_get("nope", cwd="/tmp/repo") is None
    git.clone("/tmp/repo", "/tmp/clone")
    assert capsule.files.read("/tmp/clone/a.txt") == "a"
    from wrenn.git import GitCommandError

    with pytest.raises(GitCommandError):
        git.checkout_branch("missing", cwd="/tmp/repo")


# --- async ----------------------------------------------------------------------------------------


def test_async_capsule(server: tuple[str, str]) -> None:
    base_url, api_key = server

    async def scenario() -> None:
        async with await AsyncCapsule.create(
            memory_mb=MEMORY, wait=True, api_key=api_key, base_url=base_url
        ) as c:
            assert await c.is_running()
            result = await c.commands.run("echo async")
            assert result.stdout == "async\n"
            await c.files.write("/tmp/a.txt", b"bytes")
            assert await c.files.read_bytes("/tmp/a.txt") == b"bytes"
            assert await c.files.exists("/tmp/a.txt")
            assert [e.name for e in await c.files.list("/tmp") if e.name == "a.txt"] == ["a.txt"]
            chunks = [chunk async for chunk in c.files.download_stream("/tmp/a.txt")]
            assert b"".join(chunks) == b"bytes"
            handle = await c.commands.run("sleep 100", background=True)
            assert handle.pid in [p.pid for p in await c.commands.list()]
            await c.commands.kill(handle.pid)
            assert c.capsule_id in [i.id for i in await AsyncCapsule.list(api_key=api_key, base_url=base_url)]
            again = await AsyncCapsule.connect(c.capsule_id, api_key=api_key, base_url=base_url)
            assert (await again.get_info()).id == c.capsule_id
            await again.close()
        with contextlib.suppress(WrennNotFoundError):
            info = await AsyncCapsule.get_info(c.capsule_id, api_key=api_key, base_url=base_url)
            assert info.status == "stopped"

    asyncio.run(scenario())


def test_async_websockets(server: tuple[str, str]) -> None:
    base_url, api_key = server

    async def scenario() -> None:
        async with await AsyncCapsule.create(memory_mb=MEMORY, api_key=api_key, base_url=base_url) as c:
            events = [e async for e in c.commands.stream("echo streamed")]
            assert isinstance(events[-1], StreamExitEvent) and events[-1].exit_code == 0
            async with c.pty(cmd="/bin/sh") as term:
                await term.write(b"echo apty\n")
                out = b""
                async for event in term:
                    out += event.data if event.type == "output" else b""
                    if b"apty" in out.split(b"\n", 1)[-1]:
                        break
            async with await c.files.watch("/tmp") as watch:
                await c.files.write("/tmp/w.txt", "w")
                async for event in watch:
                    if event.name == "w.txt":
                        break

    asyncio.run(scenario())


def test_wrenn_client_and_logs(capsule: Capsule, server: tuple[str, str]) -> None:
    """The seed's low-level `wrenn.client`, times as aware UTC, and the capsule's own logs."""
    from wrenn.client import WrennClient

    base_url, api_key = server
    with WrennClient(api_key=api_key, base_url=base_url) as client:
        assert capsule.capsule_id in [c.id for c in client.capsules.list()]
        info = client.capsules.get(capsule.capsule_id)
        assert info.created_at is not None and info.created_at.utcoffset() is not None
        assert client.capsules.metrics(capsule.capsule_id, range="5m")["sandbox_id"] == capsule.capsule_id
        stats = client.capsules.stats(range="5m")
        assert isinstance(stats, dict) and stats, stats  # the team's stats, in the seed's shape
        assert isinstance(client.capsules.usage(), dict)
        assert "minimal" in [t.name for t in client.snapshots.list(type="base")]
    capsule.commands.run("echo logged")
    entries = capsule.logs(limit=10000)
    assert any("process started" in e["message"] for e in entries), entries[-5:]
    newest = capsule.logs(limit=2, backward=True)
    assert [e["message"] for e in newest] == [e["message"] for e in capsule.logs(limit=10000)[-2:][::-1]]
