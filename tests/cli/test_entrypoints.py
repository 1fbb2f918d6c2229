"""Every process starts as the supervisor, the docs and the deployment files start it: `python -m
wrenn.<process>` runs its main (a module that only defines it exits 0 at once, and the supervisor would
restart it forever)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "usage"),
    [("wrenn.controlplane", "usage: wrenn server"), ("wrenn.agent", "usage:"), ("wrenn.envd", "usage:"),
     ("wrenn.interpreter", "usage:"), ("wrenn.images", "usage:")],
)  # fmt: skip
def test_python_dash_m_runs_the_process(module: str, usage: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and usage in done.stdout, (module, done.stdout[-500:], done.stderr[-500:])
