"""Running the `wrenn` command as a user does (a process of its own), and waiting for what it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

WRENN = [sys.executable, "-c", "from wrenn.cli import main; main()"]


def wrenn(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*WRENN, *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"wrenn {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def until(check: Callable[[], bool], within_s: float) -> bool:
    """Whether `check` comes true within `within_s` (asked every 0.2 s)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()
