"""Directory watches on inotify, optionally recursive, delivering E2B FilesystemEvents."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from inotify_simple import INotify
from inotify_simple import flags as F

from wrenn.proto.envd.filesystem.filesystem_pb import EventType, FilesystemEvent

from ._entry import entry_info

log = logging.getLogger("wrenn.envd.watch")

_MASK = (
    F.CREATE
    | F.MODIFY
    | F.DELETE
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.ATTRIB
    | F.DELETE_SELF
    | F.MOVE_SELF
    | F.DONT_FOLLOW
)

#: File systems whose changes inotify cannot see when they come from another machine.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "afs", "9p", "sshfs"}


def filesystem_type(path: str) -> str:
    """The type of the file system `path` lives on, from /proc/self/mounts (longest mount prefix)."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        return ""
    return fstype


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS or fstype.startswith("fuse.")


class DirWatcher:
    """Watches `root` and calls `sink` with each event; `close()` stops it."""

    def __init__(
        self, root: str, *, recursive: bool, include_entry: bool, sink: Callable[[FilesystemEvent], None]
    ) -> None:
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self._sink = sink
        self._inotify = INotify()
        self._dirs: dict[int, str] = {}  # watch descriptor -> path relative to root ("" for root)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def start(self) -> None:
        self._add(self.root, "")
        if self.recursive:
            self._add_tree(self.root, "", announce=False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fileno(), self._ready)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._inotify.fileno())
        self._inotify.close()

    def _add(self, path: str, rel: str) -> None:
        try:
            wd = self._inotify.add_watch(path, _MASK | F.ONLYDIR)
        except OSError as exc:  # raced with a removal, or out of watches
            if rel == "":
                raise
            log.debug("watch not added", extra={"path": path, "error": str(exc)})
            return
        self._dirs[wd] = rel

    def _add_tree(self, path: str, rel: str, *, announce: bool) -> None:
        """Watch every directory below `path`; with `announce`, report what is already there as created
        (it appeared before the new directory's watch existed)."""
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            if announce:
                self._emit(child_rel, EventType.CREATE)
            if entry.is_dir(follow_symlinks=False):
                self._add(entry.path, child_rel)
                self._add_tree(entry.path, child_rel, announce=announce)

    def _emit(self, rel: str, kind: EventType) -> None:
        event = FilesystemEvent(name=rel, type=kind)
        if self.include_entry and kind != EventType.REMOVE and kind != EventType.RENAME:
            with contextlib.suppress(OSError):
                event.entry = entry_info(os.path.join(self.root, rel))
        self._sink(event)

    def _ready(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            self.close()
            return
        for ev in events:
            base = self._dirs.get(ev.wd)
            if ev.mask & F.IGNORED:
                self._dirs.pop(ev.wd, None)
                continue
            if base is None:
                continue
            if ev.mask & (F.DELETE_SELF | F.MOVE_SELF):
                if base == "":
                    self._emit("", EventType.REMOVE if ev.mask & F.DELETE_SELF else EventType.RENAME)
                continue
            rel = f"{base}/{ev.name}" if base else ev.name
            if ev.mask & (F.CREATE | F.MOVED_TO):
                self._emit(rel, EventType.CREATE)
                if self.recursive and ev.mask & F.ISDIR:
                    path = os.path.join(self.root, rel)
                    self._add(path, rel)
                    self._add_tree(path, rel, announce=True)
            elif ev.mask & F.MODIFY:
                self._emit(rel, EventType.WRITE)
            elif ev.mask & F.DELETE:
                self._emit(rel, EventType.REMOVE)
            elif ev.mask & F.MOVED_FROM:
                self._emit(rel, EventType.RENAME)
            elif ev.mask & F.ATTRIB:
                self._emit(rel, EventType.CHMOD)
