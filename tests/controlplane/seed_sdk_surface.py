"""The seed SDK's whole public surface, run by `test_seed_sdk.py` with the unmodified `wrenn` 0.3.0 from
PyPI in a virtualenv of its own (not our package): `python seed_sdk_surface.py BASE_URL API_KEY`.

Prints one JSON line per check, `{"check", "ok", "detail"}`; the test reads them all. A check is a call
as a seed user writes it, with what they would assert. (Its `code_runner` is another issue's; stats, usage
and the event stream are answered: `test_event_stream.py` checks the stream's events with the seed's
parser.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import httpx

# The seed SDK reaches a port as {port}-{id}.{host of the base URL}: on a test machine that name has to
# resolve to the control plane's loopback address (what a wildcard DNS record does in production).
_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(host, str) and host.endswith(".127.0.0.1"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]

import wrenn  # noqa: E402
from wrenn import AsyncCapsule, Capsule, WrennClient  # noqa: E402
from wrenn.client import AsyncWrennClient  # noqa: E402
from wrenn.exceptions import WrennError, WrennNotFoundError  # noqa: E402

BASE_URL, API_KEY = sys.argv[1], sys.argv[2]
OPTS = {"api_key": API_KEY, "base_url": BASE_URL}
RESULTS: list[dict[str, Any]] = []


def check(name: str, fn: Callable[[], Any]) -> Any:
    try:
        value = fn()
    except Exception as exc:  # every failure is reported, and the run goes on
        detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
        print(json.dumps({"check": name, "ok": False, "detail": detail}), flush=True)
        return None
    print(json.dumps({"check": name, "ok": True, "detail": repr(value)[:300]}), flush=True)
    return value


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def lifecycle(capsule: Capsule) -> None:
    cid = capsule.capsule_id
    check("capsule_id and info", lambda: expect(cid.startswith("cl-") and capsule.info is not None, cid))
    info = check("get_info (instance)", lambda: capsule.get_info())
    check("get_info: aware times", lambda: expect(info.created_at.tzinfo is not None, str(info.created_at)))
    check("get_info (static)", lambda: expect(Capsule.get_info(cid, **OPTS).id == cid, "static get_info"))
    check("list", lambda: expect(cid in [c.id for c in Capsule.list(**OPTS)], "listed"))
    check("is_running", lambda: expect(capsule.is_running(), "running"))
    check("ping", capsule.ping)
    check("wait_ready", lambda: capsule.wait_ready(timeout=30))
    check("get_url", lambda: expect(capsule.get_url(8000).startswith("http"), capsule.get_url(8000)))


def commands(capsule: Capsule) -> None:
    result = check("commands.run", lambda: capsule.commands.run("echo hello; echo oops >&2; exit 3"))
    if result is not None:
        check("commands.run: result", lambda: expect(
            (result.stdout, result.stderr, result.exit_code) == ("hello\n", "oops\n", 3), repr(result)
        ))  # fmt: skip
    check("commands.run: envs and cwd", lambda: expect(
        capsule.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp").stdout == "hi\n/tmp\n",
        "envs/cwd",
    ))  # fmt: skip
    check("commands.run: default user", lambda: capsule.commands.run("id -un").stdout.strip())
    handle = check("commands.run background", lambda: capsule.commands.run("sleep 600", background=True))
    if handle is not None:
        check("commands.list", lambda: expect(handle.pid in [p.pid for p in capsule.commands.list()], "pid"))
        check("commands.kill", lambda: capsule.commands.kill(handle.pid))
        check("commands.list after kill", lambda: wait_for(
            "gone", lambda: handle.pid not in [p.pid for p in capsule.commands.list()], 20
        ))  # fmt: skip
    ticker = check("background for connect", lambda: capsule.commands.run(
        "for i in 1 2 3; do echo tick$i; sleep 0.5; done", background=True
    ))  # fmt: skip

    def connect() -> None:
        events = list(capsule.commands.connect(ticker.pid))
        out = "".join(getattr(e, "data", "") or "" for e in events if type(e).__name__ == "StreamStdoutEvent")
        expect("tick3" in out, repr(events)[:500])

    if ticker is not None:
        check("commands.connect", connect)

    def stream() -> None:
        events = list(capsule.commands.stream("sh", args=["-c", "echo one; echo two >&2; exit 4"]))
        kinds = [type(e).__name__ for e in events]
        expect(kinds[0] == "StreamStartEvent" and kinds[-1] == "StreamExitEvent", repr(kinds))
        expect(events[-1].exit_code == 4, repr(events[-1]))

    check("commands.stream", stream)


def files(capsule: Capsule) -> None:
    check("files.write str", lambda: capsule.files.write("/tmp/seed/a.txt", "alpha\n"))
    check("files.read", lambda: expect(capsule.files.read("/tmp/seed/a.txt") == "alpha\n", "read"))
    check("files.write bytes", lambda: capsule.files.write("/tmp/seed/b.bin", bytes(range(256))))
    check(
        "files.read_bytes",
        lambda: expect(capsule.files.read_bytes("/tmp/seed/b.bin") == bytes(range(256)), "rb"),
    )
    check("files.exists", lambda: expect(
        capsule.files.exists("/tmp/seed/a.txt") and not capsule.files.exists("/tmp/seed/none"), "exists"
    ))  # fmt: skip
    entry = check("files.make_dir", lambda: capsule.files.make_dir("/tmp/seed/dir"))
    check("files.make_dir: entry", lambda: expect(entry.type == "directory", repr(entry)))
    listed = check("files.list", lambda: capsule.files.list("/tmp/seed"))
    check("files.list: names", lambda: expect(
        sorted(e.name for e in listed) == ["a.txt", "b.bin", "dir"], repr(listed)
    ))  # fmt: skip
    check("files.remove", lambda: capsule.files.remove("/tmp/seed/a.txt"))
    check("files.exists after remove", lambda: expect(not capsule.files.exists("/tmp/seed/a.txt"), "gone"))
    big = bytes(range(256)) * 4096 * 4  # 4 MiB

    def chunks() -> Any:
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    check("files.upload_stream", lambda: capsule.files.upload_stream("/tmp/seed/big.bin", chunks()))
    check("files.download_stream", lambda: expect(
        b"".join(capsule.files.download_stream("/tmp/seed/big.bin")) == big, "stream round trip"
    ))  # fmt: skip
    check(
        "files.read of a missing file",
        lambda: _raises(lambda: capsule.files.read("/tmp/seed/none"), WrennError),
    )


def _raises(fn: Callable[[], Any], kind: type[BaseException]) -> str:
    try:
        fn()
    except kind as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{kind.__name__} not raised")


def pty(capsule: Capsule) -> None:
    def session() -> str:
        with capsule.pty(cmd="/bin/sh", cols=100, rows=30) as term:
            tag = term.tag
            term.resize(120, 40)
            term.write(b"echo pty-$((6*7))\n")
            seen = b""
            deadline = time.monotonic() + 60
            for event in term:
                if event.data and str(event.type) in ("output", "PtyEventType.output"):
                    seen += event.data if isinstance(event.data, bytes) else event.data.encode()
                if b"pty-42" in seen:
                    break
                expect(time.monotonic() < deadline, f"no pty-42 in {seen[-300:]!r}")
            term.write(b"exit\n")
            return str(tag)

    check("pty", session)


def git(capsule: Capsule) -> None:
    g = capsule.git
    repo = "/tmp/seed-repo"
    check("git.init", lambda: g.init(repo))
    check("git.configure_user", lambda: g.configure_user("Seed", "seed@example.com", cwd=repo))
    check("git.set_config / get_config", lambda: (
        g.set_config("core.editor", "true", cwd=repo),
        expect(g.get_config("core.editor", cwd=repo) == "true", "config"),
    ))  # fmt: skip
    capsule.files.write(f"{repo}/README.md", "seed\n")
    check("git.add", lambda: g.add(cwd=repo))
    check("git.commit", lambda: g.commit("first", cwd=repo))
    check("git.status", lambda: g.status(cwd=repo))
    check("git.create_branch", lambda: g.create_branch("feature", cwd=repo))
    check("git.branches", lambda: expect("feature" in str(g.branches(cwd=repo)), "branches"))
    check("git.checkout_branch", lambda: g.checkout_branch("feature", cwd=repo))
    capsule.files.write(f"{repo}/README.md", "changed\n")
    check("git.restore", lambda: g.restore(["README.md"], cwd=repo))
    check("git.reset", lambda: g.reset(cwd=repo))
    check("git.checkout main again", lambda: g.checkout_branch("master", cwd=repo) if "master" in str(
        g.branches(cwd=repo)) else g.checkout_branch("main", cwd=repo))  # fmt: skip
    check("git.delete_branch", lambda: g.delete_branch("feature", cwd=repo))
    capsule.commands.run("git init -q --bare /tmp/seed-remote.git")
    check("git.remote_add", lambda: g.remote_add("origin", "/tmp/seed-remote.git", cwd=repo))
    check(
        "git.remote_get", lambda: expect(g.remote_get("origin", cwd=repo) == "/tmp/seed-remote.git", "remote")
    )
    check("git.push", lambda: g.push(remote="origin", branch="HEAD", cwd=repo, set_upstream=False))
    check("git.clone", lambda: g.clone("/tmp/seed-remote.git", "/tmp/seed-clone"))
    check("git.pull", lambda: g.pull(cwd="/tmp/seed-clone"))


def low_level() -> None:
    with WrennClient(**OPTS) as client:
        made = check("WrennClient.capsules.create", lambda: client.capsules.create(memory_mb=512))
        if made is None:
            return
        cid = made.id
        check("WrennClient.capsules.get", lambda: wait_for(
            "running", lambda: str(client.capsules.get(cid).status) in ("running", "Status.running"), 120
        ))  # fmt: skip
        check(
            "WrennClient.capsules.list", lambda: expect(cid in [c.id for c in client.capsules.list()], "list")
        )
        check("WrennClient.capsules.ping", lambda: client.capsules.ping(cid))
        check("WrennClient.capsules.metrics", lambda: client.capsules.metrics(cid, range="5m"))
        paused = check("WrennClient.capsules.pause", lambda: client.capsules.pause(cid))
        check("pause: status", lambda: expect("paused" in str(paused.status), repr(paused)))
        resumed = check("WrennClient.capsules.resume", lambda: client.capsules.resume(cid))
        check("resume: status", lambda: expect("running" in str(resumed.status), repr(resumed)))
        check("WrennClient.capsules.destroy", lambda: client.capsules.destroy(cid))
        check(
            "WrennNotFoundError",
            lambda: _raises(lambda: client.capsules.get("cl-nosuchcapsule"), WrennNotFoundError),
        )
        stats = check("WrennClient.capsules.stats", lambda: client.capsules.stats(range="1h"))
        check("stats: shape", lambda: expect(
            stats.current is not None and stats.current.running_count is not None and stats.peaks is not None
            and stats.series is not None and len(stats.series.labels or []) == len(stats.series.vcpus or []),
            repr(stats),
        ))  # fmt: skip
        today = date.today()
        used = check(
            "WrennClient.capsules.usage", lambda: client.capsules.usage(from_=today - timedelta(days=6))
        )
        check("usage: a point a day", lambda: expect(len(used.points or []) == 7, repr(used)))

        def connected() -> None:
            stream = client.events.stream()
            first = next(stream)
            stream.close()
            expect(str(first.event) in ("connected", "Event.connected"), repr(first))

        check("events.stream: the connected sentinel", connected)


def snapshots(capsule: Capsule) -> None:
    capsule.files.write("/tmp/state.txt", "from the snapshot\n")
    template = check("create_snapshot", lambda: capsule.create_snapshot(name="seed-snap"))
    with WrennClient(**OPTS) as client:
        check(
            "snapshots.list",
            lambda: expect("seed-snap" in [t.name for t in client.snapshots.list()], "listed"),
        )
        check("snapshots.list(type=snapshot)", lambda: expect(
            all(str(t.type).endswith("snapshot") for t in client.snapshots.list(type="snapshot")), "typed"
        ))  # fmt: skip
        if template is not None:

            def from_template() -> None:
                with Capsule(template="seed-snap", wait=True, **OPTS) as child:
                    expect(child.files.read("/tmp/state.txt") == "from the snapshot\n", "state")

            check("a capsule from the snapshot", from_template)
        check("create_snapshot overwrite", lambda: capsule.create_snapshot(name="seed-snap", overwrite=True))
        check("snapshots.delete", lambda: client.snapshots.delete("seed-snap"))


def pause_and_connect(capsule: Capsule) -> None:
    cid = capsule.capsule_id
    check("pause (instance)", capsule.pause)
    check("is_running while paused", lambda: expect(not capsule.is_running(), "paused is not running"))
    again = check("Capsule.connect resumes", lambda: Capsule.connect(cid, **OPTS))
    check("connect: running", lambda: expect(again.is_running(), "running"))
    check(
        "state survives the pause",
        lambda: expect(again.files.read_bytes("/tmp/seed/b.bin") == bytes(range(256)), "kept"),
    )
    check("pause (static)", lambda: Capsule.pause(cid, **OPTS))
    check("resume (static)", lambda: Capsule.resume(cid, **OPTS))


def async_surface() -> None:
    async def run() -> None:
        capsule = await AsyncCapsule.create(wait=True, **OPTS)
        async with capsule:
            result = await capsule.commands.run("echo async")
            expect(result.stdout == "async\n", repr(result))
            await capsule.files.write("/tmp/a.txt", "x")
            expect(await capsule.files.read("/tmp/a.txt") == "x", "async files")
            expect(await capsule.is_running(), "async running")
        async with AsyncWrennClient(**OPTS) as client:
            expect(isinstance(await client.capsules.list(), list), "async list")

    check("AsyncCapsule and AsyncWrennClient", lambda: asyncio.run(run()))


def main() -> None:
    check(
        "the seed SDK, not ours",
        lambda: expect("wrenn-seed" in wrenn.__file__ or "site-packages" in wrenn.__file__, wrenn.__file__),
    )
    check("health", lambda: httpx.get(f"{BASE_URL}/health").raise_for_status())
    capsule = check("Capsule(wait=True)", lambda: Capsule(wait=True, **OPTS))
    if capsule is None:
        return
    with capsule:
        lifecycle(capsule)
        commands(capsule)
        files(capsule)
        pty(capsule)
        git(capsule)
        snapshots(capsule)
        pause_and_connect(capsule)
    check("destroyed on exit", lambda: wait_for(
        "stopped", lambda: "stopped" in str(Capsule.get_info(capsule.capsule_id, **OPTS).status)
        or _gone(capsule.capsule_id), 30
    ))  # fmt: skip
    low_level()
    async_surface()


def _gone(cid: str) -> bool:
    try:
        Capsule.get_info(cid, **OPTS)
    except WrennNotFoundError:
        return True
    return False


if __name__ == "__main__":
    main()
