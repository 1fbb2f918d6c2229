"""EntryInfo for a path, as E2B clients read it."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from wrenn.proto.envd.filesystem.filesystem_pb import EntryInfo, FileType

from . import _metadata


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _file_type(mode: int) -> FileType:
    if stat.S_ISDIR(mode):
        return FileType.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileType.SYMLINK
    return FileType.FILE


def entry_info(path: str) -> EntryInfo:
    """Describe `path` (not following a final symlink for the link itself; its type is the target's)."""
    st = os.lstat(path)
    is_link = stat.S_ISLNK(st.st_mode)
    kind = _file_type(st.st_mode)
    size = st.st_size
    target: str | None = None
    if is_link:
        target = os.path.realpath(path)
        try:
            followed = os.stat(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.EACCES):
                raise
        else:
            kind = _file_type(followed.st_mode)
            size = followed.st_size
    info = EntryInfo(
        name=os.path.basename(path) or "/",
        type=kind,
        path=path,
        size=size,
        mode=st.st_mode & 0o777,
        permissions=stat.filemode(st.st_mode),
        owner=_user_name(st.st_uid),
        group=_group_name(st.st_gid),
        modified_time=Timestamp(
            seconds=st.st_mtime_ns // 1_000_000_000, nanos=st.st_mtime_ns % 1_000_000_000
        ),
        metadata=_metadata.read(path),
        is_symlink=is_link,
    )
    if target is not None:
        info.symlink_target = target
    return info
