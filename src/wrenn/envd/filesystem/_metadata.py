"""A file's user-defined metadata, kept as E2B's envd keeps it: each key is an extended attribute
`user.e2b.<key>` (the `user.` namespace is the one unprivileged processes may write; `e2b.` keeps the
keys apart from other tools' `user.*` attributes). Uploads set it from `X-Metadata-<key>` headers;
`Stat`, `ListDir` and watch events surface it with the prefix stripped."""

from __future__ import annotations

import errno
import os

PREFIX = "user.e2b."
#: The kernel limits an attribute's name (prefix included) to 255 bytes.
MAX_KEY = 255 - len(PREFIX)
#: ext4 keeps all of an inode's attributes in one 4 KiB block: a larger set could not be stored.
MAX_TOTAL = 4096
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def problem(metadata: dict[str, str]) -> str | None:
    """Why `metadata` cannot be stored, or None: keys non-empty, keys and values printable US-ASCII
    (they travel as HTTP header names and values), within the kernel's and ext4's sizes."""
    total = 0
    for key, value in metadata.items():
        if not key:
            return "metadata key must not be empty"
        if len(key) > MAX_KEY:
            return f"metadata key {key[:40]!r}... exceeds {MAX_KEY} bytes"
        for label, text in (("key", key), (f"value for key {key!r}", value)):
            if any(not 0x20 <= ord(c) <= 0x7E for c in text):
                return f"metadata {label} holds a character outside printable US-ASCII"
        total += len(PREFIX) + len(key) + len(value)
    if total > MAX_TOTAL:
        return f"metadata totals {total} bytes, over the {MAX_TOTAL} a file can hold"
    return None


def read(path: str) -> dict[str, str]:
    """The metadata of `path` (not following a final symlink); attributes that are not valid UTF-8 are
    skipped, and a file system without extended attributes has none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found: dict[str, str] = {}
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            found[name[len(PREFIX) :]] = os.getxattr(path, name, follow_symlinks=False).decode()
        except (OSError, UnicodeDecodeError):
            continue
    return found


def replace(fd: int, metadata: dict[str, str]) -> bool:
    """Make `metadata` the file's whole set: keys it lacks are removed (an overwritten file keeps its
    inode, so the last upload's keys would otherwise stay). False when the file system has no extended
    attributes (nothing is stored); other failures raise."""
    try:
        existing = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        raise
    for name in existing:
        if name.startswith(PREFIX) and name[len(PREFIX) :] not in metadata:
            try:
                os.removexattr(fd, name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    for key, value in metadata.items():
        os.setxattr(fd, PREFIX + key, value.encode())
    return True
