"""Acceptance tests: the unmodified official `e2b` SDK against a real envd on loopback.

No control plane is involved. The SDK's own `Sandbox` / `AsyncSandbox` objects are built directly (see
`sdk_opts`) exactly as `Sandbox.create()` / `Sandbox.connect()` build them after the REST call: a
`ConnectionConfig` whose `sandbox_url` points at envd and whose extra sandbox headers carry
`X-Access-Token`, `E2b-Sandbox-Id` and `E2b-Sandbox-Port`, plus the envd version and access token the API
would have returned. Every request below therefore goes through the SDK's production code paths, including
its token auth, Basic-auth `user=` header and signed file URLs.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import pwd
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    ConnectionConfig,
    FileNotFoundException,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxException,
    TimeoutException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry
from packaging.version import Version

from tests.conftest import Envd

SANDBOX_ID = "wrenn0sdk0test0sbx01"
# The version the control plane reports for our envd; >= 0.6.4 enables every feature gate of the SDK.
ENVD_VERSION = Version("0.6.4")
WAIT = 15.0  # generous upper bound for "eventually" conditions; never asserted as a duration

MiB = 1 << 20
LARGE_SIZE = 200 * MiB


# ----------------------------------------------------------------------------------------------------
# SDK construction (the only place that knows how the SDK is wired to envd)
# ----------------------------------------------------------------------------------------------------


def sdk_opts(envd: Envd, access_token: str | None = None) -> dict[str, Any]:
    """Constructor kwargs for `Sandbox` / `AsyncSandbox`, mirroring `Sandbox._create` after the API call."""
    token = access_token if access_token is not None else envd.access_token
    headers = {
        "E2b-Sandbox-Id": SANDBOX_ID,
        "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
    }
    if token is not None:
        headers["X-Access-Token"] = token
    config = ConnectionConfig(
        sandbox_url=envd.url,
        api_key="e2b_unused_no_control_plane",
        extra_sandbox_headers=headers,
    )
    return {
        "sandbox_id": SANDBOX_ID,
        "sandbox_domain": None,
        "envd_version": ENVD_VERSION,
        "envd_access_token": token,
        "traffic_access_token": None,
        "connection_config": config,
    }


@pytest.fixture
def sbx(envd: Envd) -> Sandbox:
    return Sandbox(**sdk_opts(envd))


@pytest.fixture
async def asbx(envd: Envd) -> AsyncSandbox:
    return AsyncSandbox(**sdk_opts(envd))


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


class Collector:
    """Accumulates streamed output (str or bytes) and lets a coroutine wait for a condition on it."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = asyncio.Event()

    def add(self, data: str | bytes) -> None:
        self.text += data.decode(errors="replace") if isinstance(data, bytes) else data
        self._changed.set()

    async def wait_for(self, pattern: str, start: int = 0, timeout: float = WAIT) -> re.Match[str]:
        """Wait until the regex `pattern` matches the output received after offset `start`."""
        regex = re.compile(pattern, re.MULTILINE)
        try:
            async with asyncio.timeout(timeout):
                while (m := regex.search(self.text, start)) is None:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{pattern!r} not seen in output after offset {start}: {self.text!r}"
            ) from None
        return m


class EventCollector:
    """Collects `FilesystemEvent`s from the async watcher and waits for specific (name, type) pairs."""

    def __init__(self) -> None:
        self.events: list[FilesystemEvent] = []
        self._changed = asyncio.Event()

    def add(self, event: FilesystemEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def seen(self) -> set[tuple[str, FilesystemEventType]]:
        return {(e.name, e.type) for e in self.events}

    async def wait_for(self, *expected: tuple[str, FilesystemEventType], timeout: float = WAIT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not set(expected) <= self.seen():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            missing = set(expected) - self.seen()
            raise AssertionError(f"missing watch events {missing}; got {self.events}") from None


def eventually(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll a state query (not a synchronisation point) until it holds; used for `commands.list()`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def listed_pids(sbx: Sandbox) -> set[int]:
    return {p.pid for p in sbx.commands.list()}


def proc_cmdlines_containing(marker: str) -> list[int]:
    """PIDs on this host whose command line contains `marker` (tests and envd share the host)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def owner_of(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


# ----------------------------------------------------------------------------------------------------
# 0. Wiring and auth
# ----------------------------------------------------------------------------------------------------


def test_sdk_talks_to_envd(sbx: Sandbox, envd: Envd) -> None:
    assert sbx.envd_api_url == envd.url
    assert sbx.is_running()


def test_wrong_access_token_is_rejected(envd: Envd, workdir: Path) -> None:
    (workdir / "secret.txt").write_text("s")
    bad = Sandbox(**sdk_opts(envd, access_token="not-the-token"))
    with pytest.raises(AuthenticationException):
        bad.commands.list()
    with pytest.raises(AuthenticationException):
        bad.files.list(str(workdir))
    with pytest.raises(AuthenticationException):
        bad.files.read(str(workdir / "secret.txt"))


def test_signed_file_urls(sbx: Sandbox, workdir: Path) -> None:
    """`download_url` / `upload_url` sign with the envd token; plain HTTP without the header must work."""
    target = workdir / "signed.txt"
    up = sbx.upload_url(str(target))
    assert "signature=v1_" in up
    r = httpx.post(up, files={"file": ("signed.txt", b"via signed url")}, timeout=30)
    assert r.status_code == 200, r.text
    assert target.read_bytes() == b"via signed url"

    down = sbx.download_url(str(target), use_signature_expiration=120)
    r = httpx.get(down, timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == b"via signed url"

    # A signature for another path is not valid for this one.
    forged = sbx.download_url(str(workdir / "other.txt")).replace("other.txt", "signed.txt")
    assert httpx.get(forged, timeout=30).status_code == 401


# ----------------------------------------------------------------------------------------------------
# 1. Foreground commands
# ----------------------------------------------------------------------------------------------------


def test_run_foreground_stdout_stderr(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo hello; echo err >&2")
    assert result.stdout == "hello\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 0
    assert result.error is None


def test_run_callbacks_receive_output(sbx: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []
    result = sbx.commands.run(
        "echo one; echo two >&2; echo three", on_stdout=out.append, on_stderr=err.append
    )
    assert "".join(out) == "one\nthree\n" == result.stdout
    assert "".join(err) == "two\n" == result.stderr


def test_run_failing_command_raises(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as excinfo:
        sbx.commands.run("echo out; echo bad >&2; exit 3")
    assert excinfo.value.exit_code == 3
    assert excinfo.value.stdout == "out\n"
    assert excinfo.value.stderr == "bad\n"


def test_run_envs_and_cwd(sbx: Sandbox, workdir: Path) -> None:
    result = sbx.commands.run('printf "%s|%s" "$FOO" "$PWD"', envs={"FOO": "bar baz"}, cwd=str(workdir))
    assert result.stdout == f"bar baz|{workdir}"


def test_run_defaults_from_init(sbx: Sandbox, envd: Envd) -> None:
    """Without cwd/envs the command runs in the /init default workdir with the /init env vars."""
    result = sbx.commands.run('printf "%s|%s" "$WRENN_TEST" "$PWD"')
    assert result.stdout == f"1|{envd.workdir}"


def test_run_missing_cwd_is_invalid_argument(sbx: Sandbox, workdir: Path) -> None:
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("true", cwd=str(workdir / "does-not-exist"))


def test_run_as_default_user_and_root(sbx: Sandbox, envd: Envd) -> None:
    home = pwd.getpwnam(envd.user).pw_dir
    default = sbx.commands.run('printf "%s|%s|%s" "$(whoami)" "$USER" "$HOME"')
    assert default.stdout == f"{envd.user}|{envd.user}|{home}"

    root = sbx.commands.run('printf "%s|%s|%s" "$(whoami)" "$USER" "$HOME"', user="root")
    assert root.stdout == "root|root|/root"

    assert sbx.commands.run("id -u").stdout.strip() == str(pwd.getpwnam(envd.user).pw_uid)
    assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"


# ----------------------------------------------------------------------------------------------------
# 2. Background commands: stdin, kill, list, connect
# ----------------------------------------------------------------------------------------------------


async def test_background_cat_stdin_then_close(asbx: AsyncSandbox) -> None:
    got = Collector()
    handle = await asbx.commands.run("cat", background=True, stdin=True, on_stdout=got.add)
    try:
        await handle.send_stdin("hello from stdin\n")
        await got.wait_for(r"^hello from stdin\n")
        await handle.send_stdin(b"second line\n")
        await got.wait_for(r"^second line\n")
        await handle.close_stdin()
        result = await asyncio.wait_for(handle.wait(), WAIT)
    finally:
        await asbx.commands.kill(handle.pid)
    assert result.exit_code == 0
    assert result.stdout == "hello from stdin\nsecond line\n"
    assert got.text == result.stdout


def test_background_sleep_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 1000", background=True)
    try:
        processes = {p.pid: p for p in sbx.commands.list()}
        assert handle.pid in processes
        info = processes[handle.pid]
        assert info.cmd == "/bin/bash"
        assert info.args == ["-l", "-c", "sleep 1000"]

        assert handle.kill() is True
        with pytest.raises(CommandExitException) as excinfo:
            handle.wait()
        # E2B's envd reports Go's ProcessState.ExitCode(): -1 for a process killed by a signal.
        assert excinfo.value.exit_code == -1
    finally:
        sbx.commands.kill(handle.pid)

    eventually(lambda: handle.pid not in listed_pids(sbx), "killed process to leave commands.list()")
    assert sbx.commands.kill(handle.pid) is False


def test_kill_unknown_pid_returns_false(sbx: Sandbox) -> None:
    assert sbx.commands.kill(999_999_999) is False


def test_connect_reattaches(sbx: Sandbox) -> None:
    handle = sbx.commands.run('read -r line; echo "got:$line"; exit 7', background=True, stdin=True)
    try:
        handle.disconnect()
        assert handle.pid in listed_pids(sbx), "disconnecting must not end the process"

        again = sbx.commands.connect(handle.pid)
        assert again.pid == handle.pid
        again.send_stdin("reattached\n")
        with pytest.raises(CommandExitException) as excinfo:
            again.wait()
        assert excinfo.value.exit_code == 7
        assert excinfo.value.stdout == "got:reattached\n"
    finally:
        sbx.commands.kill(handle.pid)


def test_connect_unknown_pid_raises_not_found(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sbx.commands.connect(999_999_999)


# ----------------------------------------------------------------------------------------------------
# 3. Timeout
# ----------------------------------------------------------------------------------------------------


def test_run_timeout_kills_process(sbx: Sandbox) -> None:
    marker = f"wrenn-timeout-marker-{os.getpid()}-{time.monotonic_ns()}"
    cmd = f"sleep 30; echo {marker}"  # the trailing echo keeps bash from exec'ing sleep
    with pytest.raises(TimeoutException):
        sbx.commands.run(cmd, timeout=1)

    def gone() -> bool:
        return not any(marker in " ".join(p.args) for p in sbx.commands.list())

    eventually(gone, "timed-out command to leave commands.list()")
    eventually(lambda: not proc_cmdlines_containing(marker), "timed-out bash to exit on the host")


# ----------------------------------------------------------------------------------------------------
# 4. PTY
# ----------------------------------------------------------------------------------------------------


async def test_pty_size_resize_exit(asbx: AsyncSandbox) -> None:
    out = Collector()
    handle = await asbx.pty.create(PtySize(rows=24, cols=80), on_data=out.add)
    # Interactive bash echoes the typed line and wraps output in bracketed-paste escapes
    # ("\x1b[?2004l\r24 80\r\n"), so the answers are matched as "\r or \n, value, newline".
    try:
        await asbx.pty.send_stdin(handle.pid, b"stty size\n")
        await out.wait_for(r"[\r\n]24 80\r?\n")

        start = len(out.text)
        await asbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
        await asbx.pty.send_stdin(handle.pid, b"stty size\n")
        await out.wait_for(r"[\r\n]30 100\r?\n", start=start)

        start = len(out.text)
        await asbx.pty.send_stdin(handle.pid, b"echo term=$TERM\n")
        await out.wait_for(r"[\r\n]term=xterm-256color\r?\n", start=start)

        await asbx.pty.send_stdin(handle.pid, b"exit\n")
        result = await asyncio.wait_for(handle.wait(), WAIT)
    finally:
        await asbx.pty.kill(handle.pid)
    assert result.exit_code == 0


# ----------------------------------------------------------------------------------------------------
# 5. Files
# ----------------------------------------------------------------------------------------------------


def test_write_and_read_text_and_bytes(sbx: Sandbox, workdir: Path, envd: Envd) -> None:
    text_path = workdir / "hello.txt"
    info = sbx.files.write(str(text_path), "hello wörld\n")
    assert info.name == "hello.txt"
    assert info.path == str(text_path)
    assert info.type == FileType.FILE
    assert sbx.files.read(str(text_path)) == "hello wörld\n"
    assert text_path.read_text() == "hello wörld\n"
    assert owner_of(text_path) == envd.user

    blob = bytes(range(256)) * 64
    bin_path = workdir / "deep" / "er" / "blob.bin"  # parents are created
    sbx.files.write(str(bin_path), blob)
    data = sbx.files.read(str(bin_path), format="bytes")
    assert bytes(data) == blob
    assert bin_path.read_bytes() == blob
    assert owner_of(bin_path) == envd.user
    assert owner_of(bin_path.parent) == envd.user

    # Overwrite truncates.
    sbx.files.write(str(text_path), "x")
    assert sbx.files.read(str(text_path)) == "x"

    # Writing as another user (Basic-auth/username) changes ownership.
    root_path = workdir / "root.txt"
    sbx.files.write(str(root_path), "r", user="root")
    assert owner_of(root_path) == "root"


def test_write_files_many(sbx: Sandbox, workdir: Path) -> None:
    entries = [
        WriteEntry(path=str(workdir / "multi" / "a.txt"), data="A"),
        WriteEntry(path=str(workdir / "multi" / "nested" / "b.txt"), data=b"B\x00\xff"),
        WriteEntry(path=str(workdir / "multi" / "c.txt"), data="C" * 10_000),
    ]
    infos = sbx.files.write_files(entries)
    assert [i.path for i in infos] == [e["path"] for e in entries]
    assert all(i.type == FileType.FILE for i in infos)
    assert (workdir / "multi" / "a.txt").read_text() == "A"
    assert (workdir / "multi" / "nested" / "b.txt").read_bytes() == b"B\x00\xff"
    assert (workdir / "multi" / "c.txt").read_text() == "C" * 10_000


def test_list_exists_make_dir_rename_remove_get_info(sbx: Sandbox, workdir: Path, envd: Envd) -> None:
    d = workdir
    (d / "f.txt").write_text("12345")
    (d / "sub").mkdir()
    (d / "sub" / "inner.txt").write_text("i")

    entries = {e.name: e for e in sbx.files.list(str(d))}
    assert set(entries) == {"f.txt", "sub"}
    assert entries["f.txt"].type == FileType.FILE
    assert entries["f.txt"].path == str(d / "f.txt")
    assert entries["f.txt"].size == 5
    assert entries["sub"].type == FileType.DIR

    deep = {e.path for e in sbx.files.list(str(d), depth=2)}
    assert deep == {str(d / "f.txt"), str(d / "sub"), str(d / "sub" / "inner.txt")}

    assert sbx.files.exists(str(d / "f.txt")) is True
    assert sbx.files.exists(str(d / "sub")) is True
    assert sbx.files.exists(str(d / "nope")) is False

    assert sbx.files.make_dir(str(d / "new" / "nested")) is True
    assert (d / "new" / "nested").is_dir()
    assert owner_of(d / "new" / "nested") == envd.user
    assert sbx.files.make_dir(str(d / "new" / "nested")) is False

    info = sbx.files.get_info(str(d / "f.txt"))
    assert info.name == "f.txt"
    assert info.path == str(d / "f.txt")
    assert info.type == FileType.FILE
    assert info.size == 5
    assert info.permissions.startswith("-")
    assert info.mode & 0o777 == (d / "f.txt").stat().st_mode & 0o777
    assert info.owner == owner_of(d / "f.txt")
    assert abs(info.modified_time.timestamp() - (d / "f.txt").stat().st_mtime) < 2
    dir_info = sbx.files.get_info(str(d / "sub"))
    assert dir_info.type == FileType.DIR
    assert dir_info.permissions.startswith("d")

    renamed = sbx.files.rename(str(d / "f.txt"), str(d / "g.txt"))
    assert renamed.path == str(d / "g.txt")
    assert renamed.name == "g.txt"
    assert not sbx.files.exists(str(d / "f.txt"))
    assert (d / "g.txt").read_text() == "12345"

    sbx.files.remove(str(d / "g.txt"))
    assert not (d / "g.txt").exists()
    sbx.files.remove(str(d / "sub"))  # non-empty directory
    assert not (d / "sub").exists()
    assert not sbx.files.exists(str(d / "sub"))


def test_missing_paths_raise_not_found(sbx: Sandbox, workdir: Path) -> None:
    missing = str(workdir / "missing.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.read(missing)
    with pytest.raises(FileNotFoundException):
        sbx.files.read(missing, format="stream")
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info(missing)
    with pytest.raises(FileNotFoundException):
        sbx.files.list(str(workdir / "missing-dir"))
    with pytest.raises(FileNotFoundException):
        sbx.files.rename(missing, str(workdir / "elsewhere.txt"))


def test_read_directory_is_invalid_argument(sbx: Sandbox, workdir: Path) -> None:
    with pytest.raises(InvalidArgumentException):
        sbx.files.read(str(workdir))


# ----------------------------------------------------------------------------------------------------
# 6. Watch
# ----------------------------------------------------------------------------------------------------

CREATE, WRITE, REMOVE = FilesystemEventType.CREATE, FilesystemEventType.WRITE, FilesystemEventType.REMOVE


async def test_watch_dir_async_recursive(asbx: AsyncSandbox, workdir: Path) -> None:
    (workdir / "sub").mkdir()
    events = EventCollector()
    handle = await asbx.files.watch_dir(str(workdir), events.add, recursive=True)
    try:
        (workdir / "a.txt").write_text("a")
        await events.wait_for(("a.txt", CREATE), ("a.txt", WRITE))

        (workdir / "sub" / "b.txt").write_text("b")
        await events.wait_for(("sub/b.txt", CREATE), ("sub/b.txt", WRITE))

        (workdir / "sub" / "b.txt").unlink()
        (workdir / "a.txt").unlink()
        await events.wait_for(("sub/b.txt", REMOVE), ("a.txt", REMOVE))

        # A directory created after the watch started is watched too, once its own event was delivered.
        (workdir / "later").mkdir()
        await events.wait_for(("later", CREATE))
        (workdir / "later" / "c.txt").write_text("c")
        await events.wait_for(("later/c.txt", CREATE))
    finally:
        await handle.stop()


async def test_watch_dir_async_non_recursive_ignores_subdirs(asbx: AsyncSandbox, workdir: Path) -> None:
    (workdir / "sub").mkdir()
    events = EventCollector()
    handle = await asbx.files.watch_dir(str(workdir), events.add)
    try:
        (workdir / "sub" / "hidden.txt").write_text("h")
        (workdir / "top.txt").write_text("t")
        await events.wait_for(("top.txt", CREATE))
    finally:
        await handle.stop()
    assert not any(e.name.startswith("sub/") for e in events.events), events.events


async def test_watch_missing_dir_raises(asbx: AsyncSandbox, workdir: Path) -> None:
    with pytest.raises(NotFoundException):
        await asbx.files.watch_dir(str(workdir / "missing"), lambda e: None)


def test_watch_dir_sync_polling(sbx: Sandbox, workdir: Path) -> None:
    (workdir / "sub").mkdir()
    handle = sbx.files.watch_dir(str(workdir), recursive=True)
    seen: set[tuple[str, FilesystemEventType]] = set()
    try:
        (workdir / "a.txt").write_text("a")
        (workdir / "sub" / "b.txt").write_text("b")
        (workdir / "sub" / "b.txt").unlink()
        expected = {
            ("a.txt", CREATE),
            ("a.txt", WRITE),
            ("sub/b.txt", CREATE),
            ("sub/b.txt", WRITE),
            ("sub/b.txt", REMOVE),
        }

        def poll() -> bool:
            seen.update((e.name, e.type) for e in handle.get_new_events())
            return expected <= seen

        eventually(poll, f"watch events {expected}")
    finally:
        handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


# ----------------------------------------------------------------------------------------------------
# 7. Large files, streamed both ways
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """200 MiB on disk: alternating random and repetitive MiB blocks (so gzip has something to do)."""
    path = tmp_path_factory.mktemp("large") / "large.bin"
    h = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(LARGE_SIZE // MiB):
            block = os.urandom(MiB) if i % 2 == 0 else (b"wrenn-%08d-" % i) * (MiB // 15) + b"\n" * (MiB % 15)
            h.update(block)
            f.write(block)
    yield path, h.hexdigest()
    path.unlink()


def stream_sha256(stream: Iterator[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for chunk in stream:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


@pytest.mark.parametrize("use_gzip", [False, True], ids=["identity", "gzip"])
def test_large_file_round_trip(
    sbx: Sandbox, envd: Envd, workdir: Path, large_file: tuple[Path, str], use_gzip: bool
) -> None:
    source, digest = large_file
    target = workdir / "large.bin"
    peak_before = vm_hwm_bytes(envd.proc.pid)

    with source.open("rb") as f:  # a file object: the SDK streams it as application/octet-stream
        info = sbx.files.write(str(target), f, gzip=use_gzip)
    assert info.path == str(target)
    assert target.stat().st_size == LARGE_SIZE
    assert sha256_file(target) == digest

    assert sbx.files.get_info(str(target)).size == LARGE_SIZE

    with sbx.files.read(str(target), format="stream", gzip=use_gzip) as stream:
        got_digest, got_size = stream_sha256(stream)
    assert got_size == LARGE_SIZE
    assert got_digest == digest

    growth = vm_hwm_bytes(envd.proc.pid) - peak_before
    assert growth < 128 * MiB, f"envd peak RSS grew by {growth / MiB:.0f} MiB: the transfer was buffered"


def test_gzip_small_round_trip_bytes(sbx: Sandbox, workdir: Path) -> None:
    payload = b"compress me " * 10_000
    target = workdir / "small.gz.txt"
    sbx.files.write(str(target), payload, gzip=True)
    assert target.read_bytes() == payload  # stored decompressed
    assert bytes(sbx.files.read(str(target), format="bytes", gzip=True)) == payload
    # Sanity: the payload really is what gzip would shrink, so the encoded path was exercised.
    assert len(gzip.compress(payload)) < len(payload) // 10


# ----------------------------------------------------------------------------------------------------
# 8. E2B's own behaviours, as E2B's SDK test suite checks them against E2B's envd
# ----------------------------------------------------------------------------------------------------

CHMOD = FilesystemEventType.CHMOD


def test_metadata_round_trips_with_the_users_own_keys(sbx: Sandbox, workdir: Path) -> None:
    path = str(workdir / "meta.txt")
    meta = {"author": "mish", "purpose": "upload"}
    assert sbx.files.write(path, "x", metadata=meta).metadata == meta
    assert sbx.files.get_info(path).metadata == meta
    # kept as E2B keeps it: `user.e2b.<key>`, so another tool's `user.*` attributes are not metadata
    assert os.getxattr(path, "user.e2b.author") == b"mish"
    os.setxattr(path, "user.other-tool", b"not metadata")
    os.setxattr(path, "user.e2b.set-by-hand", b"yes")  # set inside the sandbox: surfaced too
    assert sbx.files.get_info(path).metadata == {**meta, "set-by-hand": "yes"}
    octet = str(workdir / "meta-octet.txt")
    assert sbx.files.write(octet, "y", metadata=meta, use_octet_stream=True).metadata == meta
    infos = sbx.files.write_files(
        [WriteEntry(path=str(workdir / "m1"), data="1"), WriteEntry(path=str(workdir / "m2"), data="2")],
        metadata={"source": "suite"},
    )
    assert [i.metadata for i in infos] == [{"source": "suite"}] * 2
    listed = {e.name: e.metadata for e in sbx.files.list(str(workdir))}
    assert listed["meta-octet.txt"] == meta and listed["m1"] == {"source": "suite"}
    assert sbx.files.rename(octet, str(workdir / "renamed.txt")).metadata == meta
    # an overwrite replaces the whole set: no stale keys, and none at all without metadata
    assert sbx.files.write(path, "z", metadata={"author": "other"}).metadata == {"author": "other"}
    assert sbx.files.write(path, "w").metadata is None
    assert sbx.files.get_info(path).metadata is None
    assert os.getxattr(path, "user.other-tool") == b"not metadata"  # not ours to clear


def test_invalid_metadata_is_refused_before_anything_is_written(envd: Envd, workdir: Path) -> None:
    target = workdir / "refused.txt"
    with envd.client() as c:
        too_big = c.post(
            "/files", params={"path": str(target)}, content=b"x", headers={"X-Metadata-big": "v" * 5000}
        )
        bad_value = c.post(
            "/files",
            params={"path": str(target)},
            content=b"x",
            headers={"X-Metadata-k": "caf\xe9".encode("latin-1")},
        )
    assert (too_big.status_code, bad_value.status_code) == (400, 400), (too_big.text, bad_value.text)
    assert too_big.json()["message"].startswith("invalid metadata")
    assert not target.exists()


def _events(handle: Any, want: Callable[[list[FilesystemEvent]], bool]) -> list[FilesystemEvent]:
    """Poll a sync watch handle until `want(all events so far)` holds."""
    got: list[FilesystemEvent] = []

    def enough() -> bool:
        got.extend(handle.get_new_events())
        return want(got)

    eventually(enough, "watch events")
    time.sleep(0.3)  # anything after it would be an extra event: collect that too
    got.extend(handle.get_new_events())
    return got


def test_a_write_shows_watchers_the_targets_events_only(sbx: Sandbox, workdir: Path) -> None:
    """As E2B's envd writes it, in place: a new file is CREATE, CHMOD (given to the user), WRITE; an
    overwrite is WRITEs (and CHMOD). No temporary file appears, nor is renamed over the target."""
    handle = sbx.files.watch_dir(str(workdir))
    try:
        sbx.files.write(str(workdir / "new.txt"), "This file will be watched.")
        first = _events(handle, lambda got: any(e.type == WRITE for e in got))
        assert [(e.name, e.type) for e in first] == [
            ("new.txt", CREATE),
            ("new.txt", CHMOD),
            ("new.txt", WRITE),
        ]
        sbx.files.write(str(workdir / "new.txt"), "This file has been modified.")
        second = _events(handle, lambda got: any(e.type == WRITE for e in got))
    finally:
        handle.stop()
    assert {e.name for e in second} == {"new.txt"} and WRITE in {e.type for e in second}, second
    assert [p.name for p in workdir.iterdir()] == ["new.txt"]


def test_recursive_watch_as_e2bs_suite_checks_it(sbx: Sandbox, workdir: Path) -> None:
    (workdir / "nested").mkdir()
    handle = sbx.files.watch_dir(str(workdir), recursive=True)
    try:
        sbx.files.write(str(workdir / "nested" / "test_watch.txt"), "content")
        events = _events(handle, lambda got: any(e.type == WRITE for e in got))
        assert len(events) == 3 and (events[0].type, events[0].name) == (CREATE, "nested/test_watch.txt")
        sbx.files.make_dir(str(workdir / "later"))
        sbx.files.write(str(workdir / "later" / "f.txt"), "content")
        later = _events(handle, lambda got: ("later/f.txt", WRITE) in {(e.name, e.type) for e in got})
    finally:
        handle.stop()
    assert ("later", CREATE) in {(e.name, e.type) for e in later}


def test_removing_a_missing_file_succeeds(sbx: Sandbox, workdir: Path) -> None:
    sbx.files.remove(str(workdir / "non_existing_file.txt"))
    sbx.files.remove(str(workdir / "missing" / "dir"))


def test_list_with_depth_is_sorted_by_full_path(sbx: Sandbox, workdir: Path) -> None:
    for d in ("subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2/subdir2_1", "subdir2/subdir2_2"):
        sbx.files.make_dir(str(workdir / d))
    sbx.files.write(str(workdir / "file1.txt"), "Hello, world!")
    two = [os.path.relpath(e.path, workdir) for e in sbx.files.list(str(workdir), depth=2)]
    assert two == sorted(two) == [
        "file1.txt", "subdir1", "subdir1/subdir1_1", "subdir1/subdir1_2",
        "subdir2", "subdir2/subdir2_1", "subdir2/subdir2_2",
    ]  # fmt: skip
    assert [e.name for e in sbx.files.list(str(workdir), depth=3)] == [os.path.basename(p) for p in two]


def test_an_expired_signed_url_is_refused_with_e2bs_answer(sbx: Sandbox, workdir: Path) -> None:
    path = str(workdir / "signed.txt")
    sbx.files.write(path, "signed")
    assert httpx.get(sbx.download_url(path, "root", use_signature_expiration=120)).text == "signed"
    expired = httpx.get(sbx.download_url(path, "root", use_signature_expiration=-120))
    assert (expired.status_code, expired.json()) == (
        401,
        {"code": 401, "message": "signature is already expired"},
    )
