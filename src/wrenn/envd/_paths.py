"""Turning a client's path into an absolute path in the guest."""

from __future__ import annotations

import posixpath


class BadPathError(ValueError):
    """The path is empty, contains a NUL byte, or has `..` components."""


def resolve(path: str, home: str) -> str:
    """An absolute, normalised path. Relative paths (and `~`) resolve against `home`.

    `..` components are refused rather than resolved: a client names what it means, and a path that
    climbs out of where it seems to point is more often a bug or an attack than an intent.
    """
    if not path:
        raise BadPathError("path is required")
    if "\x00" in path:
        raise BadPathError("path contains a NUL byte")
    if ".." in path.split("/"):
        raise BadPathError(f"path {path!r} contains '..'; name the target directly")
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(home, path)
    return posixpath.normpath(path) if path != "/" else path
