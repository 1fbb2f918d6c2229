"""filesystem.Filesystem over Connect (JSON), against a real envd process."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError

from tests.conftest import Envd
from wrenn.proto.envd.filesystem.filesystem_pb import (
    CreateWatcherRequest,
    EventType,
    FileType,
    GetWatcherEventsRequest,
    ListDirRequest,
    MakeDirRequest,
    MoveRequest,
    RemoveRequest,
    RemoveWatcherRequest,
    StatRequest,
    WatchDirRequest,
)

from ._rpc import code_of, eventually, filesystem_client, headers, open_fds


async def _error(coro: object) -> str:
    with pytest.raises(ConnectError) as err:
        await coro  # type: ignore[misc]
    return code_of(err.value)


async def test_stat_file_dir_and_symlink(envd: Envd, workdir: Path) -> None:
    (workdir / "f.txt").write_text("hello")
    (workdir / "d").mkdir()
    (workdir / "link").symlink_to(workdir / "d")
    async with filesystem_client(envd) as fs:
        f = (await fs.stat(StatRequest(path=str(workdir / "f.txt")), headers=headers(envd))).entry
        d = (await fs.stat(StatRequest(path=str(workdir / "d")), headers=headers(envd))).entry
        link = (await fs.stat(StatRequest(path=str(workdir / "link")), headers=headers(envd))).entry
    assert (f.name, f.type, f.size, f.permissions) == ("f.txt", FileType.FILE, 5, "-rw-r--r--")
    assert f.owner == "root" and f.path == str(workdir / "f.txt")
    assert f.modified_time is not None and f.modified_time.seconds > 0
    assert d.type == FileType.DIRECTORY and d.permissions.startswith("d")
    assert link.is_symlink and link.type == FileType.DIRECTORY and link.symlink_target == str(workdir / "d")


async def test_relative_paths_resolve_against_the_users_home(
    envd: Envd, test_user: pwd.struct_passwd
) -> None:
    home = Path(test_user.pw_dir)
    marker = home / "relative-marker.txt"
    marker.write_text("x")
    try:
        async with filesystem_client(envd) as fs:
            entry = (await fs.stat(StatRequest(path="relative-marker.txt"), headers=headers(envd))).entry
            tilde = (await fs.stat(StatRequest(path="~/relative-marker.txt"), headers=headers(envd))).entry
            root_home = (await fs.stat(StatRequest(path="."), headers=headers(envd, "root"))).entry
        assert entry.path == tilde.path == str(marker)
        assert root_home.path == "/root"
    finally:
        marker.unlink()


async def test_make_dir_creates_parents_owned_by_the_user(envd: Envd, workdir: Path) -> None:
    target = workdir / "a" / "b" / "c"
    async with filesystem_client(envd) as fs:
        made = (await fs.make_dir(MakeDirRequest(path=str(target)), headers=headers(envd))).entry
        again = await _error(fs.make_dir(MakeDirRequest(path=str(target)), headers=headers(envd)))
    assert made.type == FileType.DIRECTORY and made.owner == envd.user
    assert again == "already_exists"
    for p in (workdir / "a", workdir / "a" / "b", target):
        assert p.owner() == envd.user


async def test_list_dir_with_depth(envd: Envd, workdir: Path) -> None:
    (workdir / "x" / "y").mkdir(parents=True)
    (workdir / "x" / "y" / "deep.txt").write_text("1")
    (workdir / "top.txt").write_text("2")
    async with filesystem_client(envd) as fs:
        one = (await fs.list_dir(ListDirRequest(path=str(workdir), depth=1), headers=headers(envd))).entries
        zero = (await fs.list_dir(ListDirRequest(path=str(workdir)), headers=headers(envd))).entries
        three = (await fs.list_dir(ListDirRequest(path=str(workdir), depth=3), headers=headers(envd))).entries
        on_file = await _error(
            fs.list_dir(ListDirRequest(path=str(workdir / "top.txt"), depth=1), headers=headers(envd))
        )
        missing = await _error(
            fs.list_dir(ListDirRequest(path=str(workdir / "nope"), depth=1), headers=headers(envd))
        )
    assert sorted(e.name for e in one) == ["top.txt", "x"]
    assert [e.name for e in zero] == [e.name for e in one]  # depth 0 means 1
    assert [os.path.relpath(e.path, workdir) for e in three] == ["top.txt", "x", "x/y", "x/y/deep.txt"]
    assert (on_file, missing) == ("invalid_argument", "not_found")


async def test_move_and_remove(envd: Envd, workdir: Path) -> None:
    (workdir / "src").mkdir()
    (workdir / "src" / "f").write_text("data")
    async with filesystem_client(envd) as fs:
        moved = (
            await fs.move(
                MoveRequest(source=str(workdir / "src"), destination=str(workdir / "new" / "dst")),
                headers=headers(envd),
            )
        ).entry
        assert moved.path == str(workdir / "new" / "dst") and moved.type == FileType.DIRECTORY
        assert (workdir / "new" / "dst" / "f").read_text() == "data"
        assert not (workdir / "src").exists()
        missing = await _error(
            fs.move(
                MoveRequest(source=str(workdir / "src"), destination=str(workdir / "z")),
                headers=headers(envd),
            )
        )
        await fs.remove(RemoveRequest(path=str(workdir / "new")), headers=headers(envd))
        # removing what is not there succeeds, as with E2B's envd (Go's os.RemoveAll)
        await fs.remove(RemoveRequest(path=str(workdir / "new")), headers=headers(envd))
        await fs.remove(RemoveRequest(path=str(workdir / "new" / "under" / "it")), headers=headers(envd))
    assert not (workdir / "new").exists()
    assert missing == "not_found"


async def test_bad_paths_are_invalid_arguments(envd: Envd, workdir: Path) -> None:
    async with filesystem_client(envd) as fs:
        for path in (f"{workdir}/../etc", "", "a\x00b"):
            assert (
                await _error(fs.stat(StatRequest(path=path), headers=headers(envd))) == "invalid_argument"
            ), path
        assert (
            await _error(fs.remove(RemoveRequest(path="/"), headers=headers(envd, "root")))
            == "invalid_argument"
        )
        assert (
            await _error(fs.stat(StatRequest(path="/x"), headers=headers(envd, "ghost"))) == "unauthenticated"
        )


async def test_watch_dir_streams_changes_recursively(envd: Envd, workdir: Path) -> None:
    events: list[tuple[str, EventType]] = []
    started = asyncio.Event()

    async def watch() -> None:
        async with filesystem_client(envd) as fs:
            request = WatchDirRequest(path=str(workdir), recursive=True, include_entry=True)
            async for response in fs.watch_dir(request, headers=headers(envd)):
                event = response.event
                assert event is not None
                if event.field == "start":
                    started.set()
                elif event.field == "filesystem":
                    events.append((event.value.name, event.value.type))
                    if event.value.type == EventType.CREATE and event.value.name == "sub/new.txt":
                        assert event.value.entry is not None and event.value.entry.name == "new.txt"

    task = asyncio.create_task(watch())
    await asyncio.wait_for(started.wait(), 10)
    (workdir / "sub").mkdir()
    await asyncio.sleep(0.2)  # the new directory's watch is added as its CREATE event arrives
    (workdir / "sub" / "new.txt").write_text("hi")
    (workdir / "top.txt").write_text("x")
    (workdir / "top.txt").unlink()
    expected = {
        ("sub", EventType.CREATE),
        ("sub/new.txt", EventType.CREATE),
        ("sub/new.txt", EventType.WRITE),
        ("top.txt", EventType.REMOVE),
    }
    for _ in range(100):
        if expected <= set(events):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert expected <= set(events), events


async def test_watch_dir_errors(envd: Envd, workdir: Path) -> None:
    (workdir / "file").write_text("x")
    async with filesystem_client(envd) as fs:

        async def first(path: str) -> None:
            async for _ in fs.watch_dir(WatchDirRequest(path=path), headers=headers(envd)):
                return

        assert await _error(first(str(workdir / "missing"))) == "not_found"
        assert await _error(first(str(workdir / "file"))) == "invalid_argument"


async def test_polled_watcher_sees_events_and_is_released(envd: Envd, workdir: Path) -> None:
    async with filesystem_client(envd) as fs:
        await fs.stat(StatRequest(path=str(workdir)), headers=headers(envd))  # the connection is up
        before = open_fds(envd.proc.pid)
        created = await fs.create_watcher(
            CreateWatcherRequest(path=str(workdir), recursive=False), headers=headers(envd)
        )
        watcher_id = created.watcher_id
        (workdir / "a.txt").write_text("1")
        (workdir / "a.txt").rename(workdir / "b.txt")
        seen: list[tuple[str, EventType]] = []

        async def poll() -> bool:
            got = await fs.get_watcher_events(
                GetWatcherEventsRequest(watcher_id=watcher_id), headers=headers(envd)
            )
            seen.extend((e.name, e.type) for e in got.events)
            return {
                ("a.txt", EventType.CREATE),
                ("a.txt", EventType.RENAME),
                ("b.txt", EventType.CREATE),
            } <= set(seen)

        for _ in range(50):
            if await poll():
                break
            await asyncio.sleep(0.05)
        assert ("a.txt", EventType.RENAME) in seen and ("b.txt", EventType.CREATE) in seen, seen
        again = await fs.get_watcher_events(
            GetWatcherEventsRequest(watcher_id=watcher_id), headers=headers(envd)
        )
        assert list(again.events) == []  # drained
        await fs.remove_watcher(RemoveWatcherRequest(watcher_id=watcher_id), headers=headers(envd))
        missing = await _error(
            fs.get_watcher_events(GetWatcherEventsRequest(watcher_id=watcher_id), headers=headers(envd))
        )
        assert missing == "not_found"
        # the watcher's inotify descriptor is gone (generous: a loaded machine is slow to get there)
        assert eventually(lambda: open_fds(envd.proc.pid) <= before, timeout=20)
