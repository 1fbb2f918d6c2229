"""`wrenn capsules`: what `wrenn-capsules.service` runs (hidden: systemd runs it, not a user). Its ExecStop
pauses the node's running capsules and records them, its ExecStart resumes what was recorded, with the
same functions wrenn's own supervisor calls at a shutdown and at the next start (`_reboot`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from wrenn._shared import logs

from . import _reboot, _systemd

app = typer.Typer(
    hidden=True, no_args_is_help=True, help="Pause the capsules at shutdown, resume them at start."
)
log = logging.getLogger("wrenn.supervisor")
PlatformFile = Annotated[
    Path, typer.Option(help="platform.json of `wrenn up` (the control plane's address, the admin's login)")
]
StateDir = Annotated[Path, typer.Option(help="where what was paused is recorded")]


def _files(platform_file: Path, state_dir: Path) -> _reboot.Files:
    logs.configure(fmt="json")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return _reboot.Files(platform_file, state_dir / _reboot.PAUSED_FILE)


@app.command("pause-for-shutdown")
def pause_for_shutdown(
    platform_file: PlatformFile,
    state_dir: StateDir,
    deadline: Annotated[int, typer.Option(help="seconds to pause the capsules in")] = 60,
) -> None:
    """Pause the running capsules within the deadline and record them (nothing after `wrenn down`, which
    has paused or destroyed them itself). Those not paused are logged and left as they are."""
    files = _files(platform_file, state_dir)
    if (state_dir / _reboot.NO_PAUSE_FILE).exists():
        log.info("capsules not paused: `wrenn down` stopped the node")
        return
    not_paused = _reboot.pause_all(files, deadline)  # each logged
    if "*" in not_paused:
        raise typer.Exit(1)


@app.command("resume-after-start")
def resume_after_start(platform_file: PlatformFile, state_dir: StateDir) -> None:
    """Resume the capsules the last shutdown paused, once the control plane and the agent answer."""
    files = _files(platform_file, state_dir)
    if files.record.exists():
        raw = json.loads(files.platform.read_text())
        urls = {_systemd.AGENT: str(raw["agent_url"]), _systemd.CONTROLPLANE: f"{raw['base_url']}/health"}
        try:
            _systemd.wait_ready(urls)
        except _systemd.SystemdError as exc:  # the record stays: the next start tries again
            log.warning("cannot resume the capsules paused at shutdown", extra={"error": str(exc)})
            raise typer.Exit(1) from None
    _reboot.resume_paused(files)
