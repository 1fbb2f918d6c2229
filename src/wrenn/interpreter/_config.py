"""The execution server's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class InterpreterConfig:
    #: Jupyter Server, without token (the guest's, on loopback).
    jupyter_url: str = "http://127.0.0.1:8888"
    #: envd, for the sandbox's env vars (`GET /envs`).
    envd_url: str = "http://127.0.0.1:49983"
    #: The kernel spec of Python contexts.
    python_kernel: str = "python3"
    #: Where a context starts when it names no directory.
    cwd: str = "/home/user"
    #: Written by envd's /init when a guest restored from a snapshot becomes itself: a change means every
    #: kernel reseeds its random generators before it runs another cell.
    identity_file: Path = Path("/run/wrenn/identity")
    #: How often the server looks at `identity_file` between cells (kernels reached through Jupyter
    #: directly are reseeded then too).
    identity_poll_s: float = 0.5
    #: Languages whose default context starts with the server (and is warm before /health answers).
    preload: tuple[str, ...] = ("python",)
    #: Modules the default Python context imports before it is ready (into sys.modules only: the user's
    #: namespace stays empty), so that a first cell with pandas or a chart does not pay for them.
    warm_modules: tuple[str, ...] = ("numpy", "pandas", "matplotlib.pyplot")
    #: How long to wait for Jupyter Server at start.
    startup_timeout_s: float = 300.0
    #: A keepalive line on a silent /execute stream this often.
    keepalive_s: float = 5.0
    #: After an interrupt, how long a cell may take to stop before its kernel is restarted.
    interrupt_grace_s: float = 10.0
    #: Largest request body.
    max_body_bytes: int = 16 * 1024 * 1024
