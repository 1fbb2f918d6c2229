"""Recovery after an agent restart: adopt the sandboxes a previous run left (running VMs whose VMM and
namespace are still there, paused ones with their snapshot, running ones whose VMM is gone as `error` with
their disk) and remove everything else it left: VMMs,
namespaces, TAPs, cgroups, directories and RAM files.

A stopping agent leaves its VMs running for this; each sandbox's `state.json` says what it held.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from . import _disk
from ._cgroup import kill_all
from ._config import AgentConfig
from ._envd import EnvdClient
from ._launch import Launcher
from ._netpolicy import from_state
from ._private import write_private
from ._sandbox import Sandbox, Status, load_state
from ._table import SandboxTable
from .network import CLOSED, NetworkError, PolicyError
from .vmm import DriverError

log = logging.getLogger("wrenn.agent")


def trusted_disk_dirs(config: AgentConfig) -> list[Path]:
    """Where disks a sandbox's overlay may sit on live: images, ready snapshots, templates."""
    dirs = [config.data_dir / name for name in ("images", "ready", "templates")]
    return dirs + [d.resolve() for d in dirs]


def record_disk_bases(config: AgentConfig) -> None:
    """Disks made by an agent from before `disk_base` was recorded: ready snapshots are dropped (a cache,
    remade by the next boot of their shape); a template's base is read from its disk's header once, where
    it names one of the agent's own disks, and recorded."""
    for meta_file in sorted(config.data_dir.glob("ready/*/*/*/meta.json")):
        with contextlib.suppress(OSError, ValueError):
            if "disk_base" not in json.loads(meta_file.read_text()):
                shutil.rmtree(meta_file.parent, ignore_errors=True)
                log.info(
                    "dropped a ready snapshot without a disk record", extra={"path": str(meta_file.parent)}
                )
    for meta_file in sorted(config.data_dir.glob("templates/*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
            if "disk_base" in meta:
                continue
            base = _disk.base_from_header(meta_file.parent / "rootfs.qcow2", trusted_disk_dirs(config))
            write_private(meta_file, json.dumps({**meta, "disk_base": str(base) if base else None}, indent=1))
            log.info("recorded a template's disk base", extra={"template": meta_file.parent.name})
        except (OSError, ValueError, _disk.DiskError) as exc:
            log.warning(
                "cannot record a template's disk base", extra={"path": str(meta_file), "error": str(exc)}
            )


async def recover(table: SandboxTable, launcher: Launcher) -> None:
    """Adopt the sandboxes a previous run left running; clean up everything else it left."""
    config = table.config
    record_disk_bases(config)
    keep: set[int] = set()
    for state_file in sorted(config.sandboxes_dir.glob("*/state.json")):
        sandbox = await _adopt(table, launcher, state_file)
        if sandbox is not None and sandbox.slot is not None:
            keep.add(sandbox.slot)
    removed = await table.network.cleanup_stale(keep=keep)
    adopted = {table.cgroup_name(s) for s in table.sandboxes.values()}
    stale_groups = [
        g for g in table.cgroups.stale() if g.startswith(f"{config.name_prefix}-") and g not in adopted
    ]
    for group in stale_groups:
        kill_all(table.cgroups, group)
        table.cgroups.remove(group)
    # what a previous run left unadopted, warm-pool members among it (never adopted: recreated instead)
    kept = {s.workdir.name for s in table.sandboxes.values()}
    for directory in config.sandboxes_dir.iterdir():
        if directory.is_dir() and directory.name not in kept:
            shutil.rmtree(directory, ignore_errors=True)
    live = {table.memory_file(s) for s in table.sandboxes.values() if s.vm is not None}
    for memory in config.memory_dir.glob(f"{config.name_prefix}-*.mem"):
        if memory not in live:
            memory.unlink(missing_ok=True)
    if removed or stale_groups or table.sandboxes:
        log.info(
            "recovered after restart",
            extra={
                "adopted": len(table.sandboxes),
                "stale_network": len(removed),
                "stale_cgroups": len(stale_groups),
            },
        )


async def _adopt(table: SandboxTable, launcher: Launcher, state_file: Path) -> Sandbox | None:
    try:
        state = load_state(state_file)
        sandbox = Sandbox.from_state(state_file.parent, state)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("unreadable sandbox state", extra={"path": str(state_file), "error": str(exc)})
        return None
    params = sandbox.params
    if "disk_base" not in state and sandbox.disk is not None and sandbox.disk.suffix == ".qcow2":
        try:  # made by an agent from before it was recorded
            sandbox.disk_base = _disk.base_from_header(sandbox.disk, trusted_disk_dirs(table.config))
        except _disk.DiskError as exc:
            log.warning("unreadable sandbox disk", extra={"sandbox": params.sandbox_id, "error": str(exc)})
            return None
    try:
        sandbox.policy, rules_lost = from_state(dict(state.get("network") or {}))
    except PolicyError as exc:  # written by this agent: only a hand-edited file gets here
        log.warning("unreadable network policy", extra={"sandbox": params.sandbox_id, "error": str(exc)})
        sandbox.policy, rules_lost = CLOSED, False
    sandbox.secrets_loaded = not rules_lost
    if sandbox.status in (Status.PAUSED, Status.ERROR) and sandbox.disk is not None:
        return table.add_stopped(sandbox)
    pid = state.get("vmm_pid")
    slot = state.get("slot")
    if not isinstance(pid, int):
        pid = None
    alive = pid is not None and table.driver.owns_process(pid, sandbox.host_name)
    image = launcher.image(sandbox.image_name, sandbox.image_version)
    if not alive and sandbox.status is Status.RUNNING and sandbox.disk is not None and sandbox.disk.is_file():
        # its VMM ended while no agent watched (a power cut, a reboot without `wrenn down --pause`, a kill):
        # its memory is lost, its disk is not; kept as `error`, so the control plane says why and the disk
        # can still be snapshotted (or the capsule destroyed)
        sandbox.status, sandbox.slot = Status.ERROR, None
        sandbox.error = (
            "its VM ended while the host agent was down (a power cut or a crash): its memory is lost, "
            "its disk is kept (snapshot the capsule to keep it, or destroy it)"
        )
        sandbox.save()
        log.warning("sandbox lost its VM; disk kept", extra={"sandbox": params.sandbox_id})
        return table.add_stopped(sandbox)
    if pid is None or not alive or slot is None or image is None or slot not in table.network.list_existing():
        if pid is not None and alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        log.info("stale sandbox cleaned", extra={"sandbox": params.sandbox_id, "vmm_alive": alive})
        return None
    sandbox.status = Status.RUNNING
    sandbox.slot = slot
    table.network.allocator.claim(slot)
    sandbox.network = table.network.describe(slot)
    try:
        sandbox.vm = await table.driver.attach(launcher.spec(sandbox, image), pid)
        sandbox.envd = EnvdClient(sandbox.host_ip, access_token=params.envd_access_token or None)
    except DriverError as exc:
        log.warning("cannot adopt sandbox", extra={"sandbox": params.sandbox_id, "error": str(exc)})
        await table.release(sandbox)
        return None
    try:
        await table.network.set_policy(sandbox.network, sandbox.id, sandbox.policy)
    except NetworkError as exc:
        extra = {"sandbox": sandbox.id, "error": str(exc)}
        log.warning("cannot restore a sandbox's network policy", extra=extra)
    table.sandboxes[sandbox.id] = sandbox
    table.watch(sandbox)
    log.info("sandbox adopted", extra={"sandbox": sandbox.id, "pid": pid})
    return sandbox
