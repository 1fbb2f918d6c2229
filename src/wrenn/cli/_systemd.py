"""`wrenn up` where systemd is the init system: the units of `systemd/` (the same files as the repository's
`deploy/systemd/`, shipped inside the package) rendered for this data directory, these ports and this
installation's `wrenn`, installed, enabled and started; `wrenn down` stops them, `wrenn status` asks
systemd about them (`systemctl show`). systemd restarts each process on its own (`Restart=always`), as
`_supervisor` does where there is no systemd. A third unit, `wrenn-capsules.service`, pauses the running
capsules at a shutdown and resumes them at boot (`_reboot`, through `wrenn capsules`: `_shutdown`).

Which to use: `--supervisor systemd|self|auto`; auto is systemd where it is the running init system
(`/run/systemd/system` exists, the test `sd_booted()` makes), else wrenn's own supervisor."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from wrenn._shared.private import write_private

from ._reboot import NO_PAUSE_FILE
from ._supervisor import answers, describe

AGENT, CONTROLPLANE = "wrenn-agent.service", "wrenn-controlplane.service"
CAPSULES = "wrenn-capsules.service"
DROP_IN = f"{CONTROLPLANE}.d/local-agent.conf"
#: The unprivileged user the control plane runs as (the units' `User=`).
USER = "wrenn"
VAR_LIB = Path("/var/lib")
#: What the shipped units name, replaced when they are rendered.
SHIPPED_WRENN = "/opt/wrenn/bin/wrenn"
SHIPPED_DATA_DIR = "/var/lib/wrenn"
SHIPPED_STATE = "wrenn-controlplane"
SHIPPED_CAPSULES_STATE = "wrenn-capsules"
SHIPPED_DEADLINE = "--deadline 60"
#: How much longer than its pause deadline `wrenn-capsules.service` may take to stop: a pause under way at
#: the deadline finishes (`_reboot.pause_all` waits up to 120 s more for it), after the sign-in.
STOP_MARGIN_S = 180


class SystemdError(Exception):
    pass


def booted(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd is the running init system (as systemd's own `sd_booted()` checks)."""
    return run_dir.is_dir()


def choose(supervisor: str, run_dir: Path = Path("/run/systemd/system")) -> str:
    """The supervisor ("systemd" or "self") for `--supervisor systemd|self|auto`."""
    if supervisor not in ("systemd", "self", "auto"):
        raise SystemdError(f"--supervisor is systemd, self or auto, not {supervisor!r}")
    if supervisor == "auto":
        return "systemd" if booted(run_dir) else "self"
    return supervisor


@dataclass(frozen=True)
class Systemd:
    """Where units go and which `systemctl` and `useradd` run (stand-ins in tests)."""

    unit_dir: Path = Path("/etc/systemd/system")
    systemctl: str = "systemctl"
    useradd: str = "useradd"

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.systemctl, *args], capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            why = done.stderr.strip() or done.stdout.strip()
            raise SystemdError(f"systemctl {' '.join(args)} failed: {why}")
        return done.stdout


@dataclass(frozen=True)
class Node:
    """What the units are rendered with."""

    data_dir: Path
    port: int
    agent_port: int
    proxy_port: int
    #: The installation's `wrenn` command (`installed_wrenn()`).
    wrenn: Path
    #: The agent's name prefix and address ranges for a data dir other than the default
    #: (`_platform.agent_identity`).
    agent_args: tuple[str, ...] = ()
    #: At a shutdown, seconds `wrenn-capsules.service` pauses the capsules in.
    pause_deadline_s: int = 60

    @property
    def state_name(self) -> str:
        """The control plane's `StateDirectory=` (relative to /var/lib): `wrenn-controlplane` beside
        /var/lib/wrenn, `<data dir>-controlplane` beside another data dir under /var/lib."""
        return _beside(self.data_dir, "controlplane")

    @property
    def controlplane_dir(self) -> Path:
        """Where the control plane keeps its state: secrets, SQLite database, the bootstrap token."""
        return VAR_LIB / self.state_name

    @property
    def capsules_dir(self) -> Path:
        return capsules_dir(self.data_dir)


def _beside(data_dir: Path, what: str) -> str:
    try:
        relative = data_dir.resolve().relative_to(VAR_LIB)
    except ValueError:
        raise SystemdError(
            f"under systemd the data dir must be under {VAR_LIB} (the control plane's state goes beside "
            f"it, in a StateDirectory=), not {data_dir}: choose one, or use --supervisor self"
        ) from None
    return f"{relative}-{what}"


def capsules_dir(data_dir: Path) -> Path:
    """`wrenn-capsules.service`'s `StateDirectory=`: what a shutdown paused (`_reboot.Files`)."""
    return VAR_LIB / _beside(data_dir, "capsules")


def installed_wrenn() -> Path:
    """The `wrenn` command of the installation this runs from (beside its interpreter, as pip puts it)."""
    path = Path(sys.executable).parent / "wrenn"
    if not os.access(path, os.X_OK):
        raise SystemdError(
            f"no `wrenn` command beside {sys.executable}: install wrenn with pip into a virtualenv "
            "(python3 -m venv /opt/wrenn && /opt/wrenn/bin/pip install 'wrenn[server]'), "
            "or use --supervisor self"
        )
    return path


def shipped(name: str) -> str:
    """A unit (or drop-in) as shipped."""
    return resources.files("wrenn.cli").joinpath("systemd", name).read_text()


def render(node: Node) -> dict[str, str]:
    """{path under the unit dir: text} of the units for `node`."""
    data_dir, state = str(node.data_dir.resolve()), node.state_name
    args = ["--data-dir", data_dir, "--port", str(node.agent_port), "--proxy-port", str(node.proxy_port)]
    agent = shipped(AGENT).replace(
        f"--data-dir {SHIPPED_DATA_DIR} --port 50051 --proxy-port 50052", " ".join([*args, *node.agent_args])
    )
    controlplane = shipped(CONTROLPLANE).replace(f"/var/lib/{SHIPPED_STATE}", f"/var/lib/{state}")
    controlplane = controlplane.replace(f"StateDirectory={SHIPPED_STATE}", f"StateDirectory={state}")
    controlplane = controlplane.replace("--port 8080", f"--port {node.port}")
    drop_in = shipped(DROP_IN).replace(f"{SHIPPED_DATA_DIR}/agent-api-token", f"{data_dir}/agent-api-token")
    drop_in = drop_in.replace("http://127.0.0.1:50051", f"http://127.0.0.1:{node.agent_port}")
    capsules = shipped(CAPSULES).replace(f"/var/lib/{SHIPPED_CAPSULES_STATE}", str(node.capsules_dir))
    capsules = capsules.replace(
        f"StateDirectory={SHIPPED_CAPSULES_STATE}", f"StateDirectory={node.capsules_dir.relative_to(VAR_LIB)}"
    )
    capsules = capsules.replace(f"/var/lib/{SHIPPED_STATE}", f"/var/lib/{state}")
    capsules = capsules.replace(f"{SHIPPED_DATA_DIR}/platform.json", f"{data_dir}/platform.json")
    capsules = capsules.replace(SHIPPED_DEADLINE, f"--deadline {node.pause_deadline_s}").replace(
        "TimeoutStopSec=240s", f"TimeoutStopSec={node.pause_deadline_s + STOP_MARGIN_S}s"
    )
    units = {AGENT: agent, CONTROLPLANE: controlplane, DROP_IN: drop_in, CAPSULES: capsules}
    rendered = {name: text.replace(SHIPPED_WRENN, str(node.wrenn)) for name, text in units.items()}
    if (
        any(SHIPPED_WRENN in text for text in rendered.values())
        or f"--data-dir {data_dir} " not in agent
        or f"--deadline {node.pause_deadline_s}\n" not in capsules
        or f"LoadCredential=platform.json:{data_dir}/platform.json\n" not in capsules
    ):
        raise SystemdError("the shipped units were not rendered whole (did they change?)")
    return rendered


def installed_for(data_dir: Path, systemd: Systemd) -> bool:
    """Whether the installed units run the agent of `data_dir`."""
    try:
        text = (systemd.unit_dir / AGENT).read_text()
    except OSError:
        return False
    return f"--data-dir {data_dir.resolve()} " in text


def install(node: Node, systemd: Systemd) -> bool:
    """Write the units (mode 0644), make the control plane's user if missing, reload systemd, enable and
    start the agent and the control plane (restarting them when their units changed; `start_capsules`
    starts the third). Whether anything changed."""
    if (systemd.unit_dir / AGENT).exists() and not installed_for(node.data_dir, systemd):
        raise SystemdError(
            f"{systemd.unit_dir / AGENT} runs another data dir: `wrenn down` there first "
            "(one Wrenn per machine under systemd)"
        )
    existed, changed = (systemd.unit_dir / AGENT).exists(), False
    for name, text in render(node).items():
        path = systemd.unit_dir / name
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(text)
        path.chmod(0o644)
        changed = True
    _ensure_user(node, systemd)
    units = (AGENT, CONTROLPLANE)
    systemd.run("daemon-reload")
    systemd.run("enable", "--now", *units)
    if changed and existed:  # other units (ports, installation): the running ones restart onto them
        systemd.run("try-restart", *units)
    return changed


def start_capsules(node: Node, systemd: Systemd) -> None:
    """Enable and start `wrenn-capsules.service` once platform.json is written (its credential): it
    resumes what the last shutdown (or `wrenn down --pause`) paused, and returns when that is done.
    Never restarted when its unit changed: a restart would pause and resume every capsule (systemd
    takes the changed ExecStop= at the daemon-reload)."""
    (capsules_dir(node.data_dir) / NO_PAUSE_FILE).unlink(missing_ok=True)
    systemd.run("enable", "--now", CAPSULES)


def _ensure_user(node: Node, systemd: Systemd) -> None:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        useradd = shutil.which(systemd.useradd) or systemd.useradd
        done = subprocess.run(
            [useradd, "--system", "--user-group", "--home-dir", str(node.controlplane_dir),
             "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemdError(f"cannot create the user {USER!r}: {done.stderr.strip()}") from None


def wait_ready(urls: dict[str, str], within_s: float = 180) -> None:
    """Until every url answers; an error naming the journal otherwise."""
    deadline = time.monotonic() + within_s
    pending = dict(urls)
    while pending and time.monotonic() < deadline:
        pending = {unit: url for unit, url in pending.items() if not answers(url)}
        if pending:
            time.sleep(0.3)
    if pending:
        raise SystemdError(
            f"{', '.join(pending)} did not answer within {within_s:.0f} s: "
            f"`systemctl status {' '.join(pending)}`, `journalctl -u {' -u '.join(pending)}`"
        )


def stop_capsules(data_dir: Path, systemd: Systemd) -> None:
    """Stop `wrenn-capsules.service` and keep it from starting at boot, told to pause nothing: `wrenn down`
    pauses or destroys the capsules itself."""
    directory = capsules_dir(data_dir)
    if directory.is_dir():
        write_private(directory / NO_PAUSE_FILE, "wrenn down\n")
    systemd.run("disable", "--now", CAPSULES)


def stop(systemd: Systemd) -> None:
    """Stop the control plane, then the agent, and keep them from starting at boot (after
    `stop_capsules`)."""
    systemd.run("disable", "--now", CONTROLPLANE)
    systemd.run("disable", "--now", AGENT)


@dataclass(frozen=True)
class UnitStatus:
    unit: str
    running: bool
    pid: int
    uptime_s: float
    restarts: int
    last_exit: str


#: `systemctl show`'s ExecMainCode: how the main process last ended (the kernel's CLD_* codes).
_CLD_EXITED, _CLD_KILLED, _CLD_DUMPED = 1, 2, 3
PROPERTIES = "Id,ActiveState,MainPID,NRestarts,ActiveEnterTimestampMonotonic,ExecMainCode,ExecMainStatus"


def status(systemd: Systemd) -> list[UnitStatus]:
    """Each unit as systemd sees it: running, pid, uptime (since ActiveEnterTimestamp), restarts (NRestarts,
    systemd's automatic restarts) and how its main process last ended."""
    out = systemd.run("show", "--property", PROPERTIES, AGENT, CONTROLPLANE)
    rows = []
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        running = props.get("ActiveState") == "active"
        entered_us = int(props.get("ActiveEnterTimestampMonotonic") or 0)
        code, code_status = int(props.get("ExecMainCode") or 0), int(props.get("ExecMainStatus") or 0)
        if code == _CLD_EXITED:
            last = describe(code_status)
        elif code in (_CLD_KILLED, _CLD_DUMPED) and code_status in signal.Signals._value2member_map_:
            last = describe(-code_status)
        else:
            last = ""
        rows.append(UnitStatus(
            props.get("Id", "?"), running, int(props.get("MainPID") or 0) if running else 0,
            max(0.0, time.monotonic() - entered_us / 1e6) if running and entered_us else 0.0,
            int(props.get("NRestarts") or 0), last,
        ))  # fmt: skip
    return rows
