"""Pausing a node's capsules at an orderly shutdown and resuming them at the next start, through the
control plane (so its rows stay true: a pause by the agent alone would leave them `running`).

At shutdown the node's host is drained (`POST /v1/hosts/{id}/drain`: cordoned, its running capsules paused
one after another until a deadline; those not paused by then are logged and left as they are), and the
capsules it paused are written to `<data dir>/paused-at-shutdown.json`. At the next start exactly those are
resumed (`POST /v1/hosts/{id}/resume`), never a capsule a user paused, and the host is uncordoned unless it
was cordoned before the shutdown. The control plane's address and the admin's login (API keys manage no
hosts) come from `platform.json`, which `wrenn up` writes.

Under systemd the same two functions run in `wrenn-capsules.service` (`_shutdown`), as the unprivileged
user `wrenn`: there `platform.json` is systemd's copy in the unit's credentials and the record is in the
unit's own state directory (`Files`)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from wrenn._shared.private import write_private

log = logging.getLogger("wrenn.supervisor")
PAUSED_FILE = "paused-at-shutdown.json"
#: Beside the record under systemd: `wrenn down` has stopped the node itself (capsules destroyed, or paused
#: with its own deadline), so stopping `wrenn-capsules.service` pauses nothing.
NO_PAUSE_FILE = "no-pause-at-stop"


@dataclass(frozen=True)
class Files:
    """Where the admin's login is read from and what was paused is recorded."""

    platform: Path
    record: Path

    @classmethod
    def of(cls, where: Path | Files) -> Files:
        """`where` as is, or the files of a data dir: its `platform.json` and `paused-at-shutdown.json`."""
        return where if isinstance(where, Files) else cls(where / "platform.json", where / PAUSED_FILE)


def _client(files: Files) -> tuple[httpx.Client, str]:
    """A client of the control plane as the admin `wrenn up` made, and the local agent's address."""
    raw = json.loads(files.platform.read_text())
    base_url = str(raw["base_url"])
    login = {"email": str(raw["admin_email"]), "password": str(raw["admin_password"])}
    answer = httpx.post(f"{base_url}/v1/auth/login", json=login, timeout=30)  # API keys manage no hosts
    answer.raise_for_status()
    token = str(answer.json()["token"])
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
    return client, str(raw["agent_url"])


def _local_host(http: httpx.Client, agent_url: str) -> dict[str, object]:
    hosts = http.get("/v1/hosts", timeout=10)
    hosts.raise_for_status()
    items = hosts.json()
    port = agent_url.rsplit(":", 1)[-1]
    local = [
        h for h in items if h.get("local") and str(h.get("address", "")).rstrip("/").endswith(f":{port}")
    ]
    if not local:
        raise LookupError(f"no host at {agent_url} is registered with the control plane")
    return dict(local[0])


def pause_all(where: Path | Files, deadline_s: float) -> dict[str, str]:
    """Drain this node's host within `deadline_s` and record what was paused for `resume_paused` (`where`:
    a data dir, or `Files`); {capsule id: why not paused} ({"*": why} when none could be). The record
    belongs to the owner of its directory (root writes it for `wrenn-capsules.service` at `wrenn down
    --pause`)."""
    files = Files.of(where)
    try:
        http, agent_url = _client(files)
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        log.warning("cannot pause capsules at shutdown: no admin login", extra={"error": str(exc)})
        return {"*": f"cannot sign in as the admin of platform.json: {exc}"}
    with http:
        try:
            host = _local_host(http, agent_url)
            answer = http.post(
                f"/v1/hosts/{host['id']}/drain", json={"deadline_s": max(1, int(deadline_s))},
                timeout=deadline_s + 120,  # a pause under way at the deadline finishes
            )  # fmt: skip
            answer.raise_for_status()
        except (httpx.HTTPError, LookupError, ValueError) as exc:
            log.warning("cannot pause capsules at shutdown", extra={"error": str(exc)[:500]})
            return {"*": str(exc)[:500]}
        report = answer.json()
        record = {
            "host": host["id"],
            "capsules": report["paused"],
            "was_cordoned": bool(host.get("cordoned")),
        }
        write_private(files.record, json.dumps(record, indent=1))
        owner = files.record.parent.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.chown(files.record, owner.st_uid, owner.st_gid)
        for capsule_id, why in report["not_paused"].items():
            log.warning(
                "capsule not paused at shutdown; left as it is", extra={"capsule": capsule_id, "why": why}
            )
        log.info("capsules paused at shutdown", extra={"paused": len(report["paused"])})
        return dict(report["not_paused"])


def resume_paused(where: Path | Files) -> None:
    """Resume the capsules the last shutdown paused (`where`: a data dir, or `Files`). Once: the record
    goes after the attempt, whatever came of it (what was not resumed is logged and stays paused: its user
    resumes it)."""
    files = Files.of(where)
    path = files.record
    if not path.exists():
        return
    try:
        _resume(files, json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        log.warning("cannot resume the capsules paused at shutdown", extra={"error": str(exc)[:500]})
    finally:
        path.unlink(missing_ok=True)


def _resume(files: Files, record: dict[str, object]) -> None:
    http, _ = _client(files)
    with http:
        host = str(record["host"])
        if not record.get("was_cordoned"):
            http.post(f"/v1/hosts/{host}/uncordon", timeout=30).raise_for_status()
        answer = http.post(f"/v1/hosts/{host}/resume", json={"capsules": record["capsules"]}, timeout=600)
        answer.raise_for_status()
        report = answer.json()
    for capsule_id, why in report["not_resumed"].items():
        log.warning("capsule paused at shutdown not resumed", extra={"capsule": capsule_id, "why": why})
    log.info("capsules paused at shutdown resumed", extra={"resumed": len(report["resumed"])})
