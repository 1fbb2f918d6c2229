"""The `filesystem.Filesystem` Connect service."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from wrenn.proto.envd.filesystem.filesystem_connect import Filesystem
from wrenn.proto.envd.filesystem.filesystem_pb import (
    CreateWatcherRequest,
    CreateWatcherResponse,
    EntryInfo,
    FilesystemEvent,
    GetWatcherEventsRequest,
    GetWatcherEventsResponse,
    ListDirRequest,
    ListDirResponse,
    MakeDirRequest,
    MakeDirResponse,
    MoveRequest,
    MoveResponse,
    RemoveRequest,
    RemoveResponse,
    RemoveWatcherRequest,
    RemoveWatcherResponse,
    StatRequest,
    StatResponse,
    WatchDirRequest,
    WatchDirResponse,
)

from .. import _paths
from .._errors import to_connect
from .._state import EnvdState
from .._users import User
from ..process._service import keepalive_interval, request_user
from ._entry import entry_info
from ._watch import DirWatcher, filesystem_type, is_network_fs

log = logging.getLogger("wrenn.envd.filesystem")

#: Events a polled watcher keeps between two polls; older ones are dropped beyond it.
WATCHER_BUFFER = 10_000
_T = TypeVar("_T")


def make_dirs(path: str, user: User) -> None:
    """`mkdir -p`, giving each directory it creates to `user`."""
    missing: list[str] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        if not user.is_current:
            os.chown(directory, user.uid, user.gid)


def _list(root: str, depth: int) -> list[EntryInfo]:
    """Entries below `root` down to `depth` levels, in E2B's order (Go's `filepath.WalkDir`): depth
    first, each directory's entries by name, a directory just before what it holds. Symlinks to
    directories are listed, not followed; entries that vanish meanwhile are skipped."""
    entries: list[EntryInfo] = []

    def walk(directory: str, level: int) -> None:
        try:
            children = sorted(os.scandir(directory), key=lambda e: e.name)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            if directory == root:
                raise
            return
        for child in children:
            try:
                entries.append(entry_info(child.path))
            except FileNotFoundError:
                continue
            if level < depth and child.is_dir(follow_symlinks=False):
                walk(child.path, level + 1)

    walk(root, 1)
    return entries


def _remove(path: str) -> None:
    """A file, a link or a whole tree; a path that is not there is already removed (as with E2B's envd,
    whose `os.RemoveAll` succeeds on it)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, onerror=_gone_is_fine)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _gone_is_fine(
    func: Callable[..., object], path: str, exc_info: tuple[type[BaseException], BaseException, object]
) -> None:
    """`rmtree`'s error handler: what another process removed meanwhile is no error."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


@dataclass
class _PolledWatcher:
    watcher: DirWatcher
    events: collections.deque[FilesystemEvent] = field(
        default_factory=lambda: collections.deque(maxlen=WATCHER_BUFFER)
    )
    last_poll: float = field(default_factory=time.monotonic)


class FilesystemService(Filesystem):
    def __init__(self, state: EnvdState, watcher_idle_s: float = 600.0) -> None:
        self._state = state
        self._watchers: dict[str, _PolledWatcher] = {}
        self._watcher_idle_s = watcher_idle_s

    def _resolve(self, path: str, ctx: RequestContext[object, object]) -> tuple[str, User]:
        user = request_user(self._state, ctx)
        try:
            return _paths.resolve(path, user.home), user
        except _paths.BadPathError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None

    @staticmethod
    async def _run(path: str, func: Callable[[], _T], *, blocking: bool = False) -> _T:
        try:
            return await asyncio.to_thread(func) if blocking else func()
        except OSError as exc:
            raise to_connect(exc, path) from None

    async def stat(
        self, request: StatRequest, ctx: RequestContext[StatRequest, StatResponse]
    ) -> StatResponse:
        path, _ = self._resolve(request.path, ctx)  # type: ignore[arg-type]
        return StatResponse(entry=await self._run(path, lambda: entry_info(path)))

    async def make_dir(
        self, request: MakeDirRequest, ctx: RequestContext[MakeDirRequest, MakeDirResponse]
    ) -> MakeDirResponse:
        path, user = self._resolve(request.path, ctx)  # type: ignore[arg-type]
        if os.path.lexists(path):
            what = "directory" if os.path.isdir(path) else "file"
            raise ConnectError(Code.ALREADY_EXISTS, f"{path}: a {what} already exists there")

        def create() -> EntryInfo:
            make_dirs(path, user)
            return entry_info(path)

        return MakeDirResponse(entry=await self._run(path, create))

    async def move(
        self, request: MoveRequest, ctx: RequestContext[MoveRequest, MoveResponse]
    ) -> MoveResponse:
        source, user = self._resolve(request.source, ctx)  # type: ignore[arg-type]
        destination, _ = self._resolve(request.destination, ctx)  # type: ignore[arg-type]

        def move() -> EntryInfo:
            os.lstat(source)
            make_dirs(os.path.dirname(destination), user)
            shutil.move(source, destination)
            return entry_info(destination)

        return MoveResponse(entry=await self._run(source, move, blocking=True))

    async def list_dir(
        self, request: ListDirRequest, ctx: RequestContext[ListDirRequest, ListDirResponse]
    ) -> ListDirResponse:
        path, _ = self._resolve(request.path, ctx)  # type: ignore[arg-type]
        depth = max(1, request.depth)
        if not await self._run(path, lambda: stat.S_ISDIR(os.stat(path).st_mode)):
            raise ConnectError(Code.INVALID_ARGUMENT, f"{path}: not a directory")
        return ListDirResponse(entries=await self._run(path, lambda: _list(path, depth), blocking=True))

    async def remove(
        self, request: RemoveRequest, ctx: RequestContext[RemoveRequest, RemoveResponse]
    ) -> RemoveResponse:
        path, _ = self._resolve(request.path, ctx)  # type: ignore[arg-type]
        if path == "/":
            raise ConnectError(Code.INVALID_ARGUMENT, "refusing to remove /")
        await self._run(path, lambda: _remove(path), blocking=True)
        return RemoveResponse()

    # --- watches ---------------------------------------------------------------------------------

    def _watchable(self, path: str, allow_network_mounts: bool) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise to_connect(exc, path) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConnectError(Code.INVALID_ARGUMENT, f"{path}: not a directory")
        fstype = filesystem_type(path)
        if is_network_fs(fstype) and not allow_network_mounts:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"{path} is on a network file system ({fstype}); pass allow_network_mounts to watch it",
            )

    def _watcher(
        self, path: str, recursive: bool, include_entry: bool, sink: Callable[[FilesystemEvent], None]
    ) -> DirWatcher:
        watcher = DirWatcher(path, recursive=recursive, include_entry=include_entry, sink=sink)
        try:
            watcher.start()
        except OSError as exc:
            watcher.close()
            raise to_connect(exc, path) from None
        return watcher

    async def watch_dir(
        self, request: WatchDirRequest, ctx: RequestContext[WatchDirRequest, WatchDirResponse]
    ) -> AsyncIterator[WatchDirResponse]:
        path, _ = self._resolve(request.path, ctx)  # type: ignore[arg-type]
        self._watchable(path, request.allow_network_mounts)
        queue: asyncio.Queue[FilesystemEvent] = asyncio.Queue()
        watcher = self._watcher(path, request.recursive, request.include_entry, queue.put_nowait)
        interval = keepalive_interval(ctx)  # type: ignore[arg-type]
        try:
            yield WatchDirResponse(event=Oneof("start", WatchDirResponse.StartEvent()))  # type: ignore[arg-type]
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=interval)
                except TimeoutError:
                    yield WatchDirResponse(event=Oneof("keepalive", WatchDirResponse.KeepAlive()))  # type: ignore[arg-type]
                    continue
                yield WatchDirResponse(event=Oneof("filesystem", item))  # type: ignore[arg-type]
        finally:
            watcher.close()

    async def create_watcher(
        self, request: CreateWatcherRequest, ctx: RequestContext[CreateWatcherRequest, CreateWatcherResponse]
    ) -> CreateWatcherResponse:
        self._reap_idle_watchers()
        path, _ = self._resolve(request.path, ctx)  # type: ignore[arg-type]
        self._watchable(path, request.allow_network_mounts)
        polled = _PolledWatcher(watcher=None)  # type: ignore[arg-type]
        polled.watcher = self._watcher(path, request.recursive, request.include_entry, polled.events.append)
        watcher_id = secrets.token_hex(8)
        self._watchers[watcher_id] = polled
        return CreateWatcherResponse(watcher_id=watcher_id)

    def _polled(self, watcher_id: str) -> _PolledWatcher:
        polled = self._watchers.get(watcher_id)
        if polled is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id!r} not found")
        return polled

    async def get_watcher_events(
        self,
        request: GetWatcherEventsRequest,
        ctx: RequestContext[GetWatcherEventsRequest, GetWatcherEventsResponse],
    ) -> GetWatcherEventsResponse:
        polled = self._polled(request.watcher_id)
        polled.last_poll = time.monotonic()
        events = list(polled.events)
        polled.events.clear()
        return GetWatcherEventsResponse(events=events)

    async def remove_watcher(
        self, request: RemoveWatcherRequest, ctx: RequestContext[RemoveWatcherRequest, RemoveWatcherResponse]
    ) -> RemoveWatcherResponse:
        self._polled(request.watcher_id).watcher.close()
        del self._watchers[request.watcher_id]
        return RemoveWatcherResponse()

    def _reap_idle_watchers(self) -> None:
        """Polled watchers nobody polls any more would leak an inotify instance each."""
        now = time.monotonic()
        for watcher_id, polled in list(self._watchers.items()):
            if now - polled.last_poll > self._watcher_idle_s:
                polled.watcher.close()
                del self._watchers[watcher_id]
                log.info("idle watcher removed", extra={"watcher": watcher_id})

    def close(self) -> None:
        for polled in self._watchers.values():
            with contextlib.suppress(Exception):
                polled.watcher.close()
        self._watchers.clear()
