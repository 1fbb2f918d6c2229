"""Files only their owner may read, private from their first byte: secrets (keys, tokens, credentials) are
never written into a file another user could open between its creation and a later `chmod`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` as a directory; created mode 0700 when it does not exist (an existing one is left as it is:
    it may be shared on purpose). Missing parents are created with the default mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data`, mode 0600 from the start: written to a new file (created 0600, never
    opened by anyone else) in the same directory, then renamed over `path`, so a reader sees the old
    content or the new one, never a mix, and never a moment of wider permissions."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def create_private(path: Path, data: str | bytes) -> bool:
    """Write `data` to `path` (mode 0600) only if no such file exists; whether this call created it. For
    a secret that several processes may try to generate at once: the first one wins, the others read it."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return True
