"""Running the `wrenn` command as a user does: a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

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
