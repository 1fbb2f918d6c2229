"""Writing a file only root may read, 0600 from its first byte (never chmod-ed afterwards)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: str) -> None:
    """Replace `path` with `data`, atomically: a new file (0600, created exclusively, so no older file's
    mode or owner carries over) renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    tmp.replace(path)
