"""A sandbox's logs as E2B pages them: its host reads them from the guest console (kernel, init, envd
and every process envd started and ended; the newest 1 MiB), this picks the page a request asks for.

- `/sandboxes/{id}/logs?start=<ms>&limit=`: the first `limit` entries from `start` on, oldest first.
- `/v2/sandboxes/{id}/logs?cursor=<ms>&limit=&direction=&level=&search=`: `forward` (the default) the
  first `limit` entries from `cursor` on, oldest first; `backward` the `limit` newest up to `cursor`
  (default: now), newest first; `level` the least severity shown; `search` a substring of the message.

Logs are served while the sandbox is on a host (running or paused); a hibernated one's are not (its
console went to cold storage with it): an empty page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _errors
from .._time import rfc3339
from ..db import Capsule, CapsuleStatus
from .capsules import CapsuleService

SEVERITY = {"debug": 0, "info": 1, "warn": 2, "error": 3}


@dataclass(frozen=True, slots=True)
class Entry:
    timestamp_ms: int
    level: str
    message: str
    source: str


async def entries(capsules: CapsuleService, capsule: Capsule) -> list[Entry]:
    """The capsule's log entries, oldest first; none when no host holds it."""
    if capsule.status not in (CapsuleStatus.RUNNING, CapsuleStatus.PAUSED) or capsule.host_id is None:
        return []
    host = await capsules.host_of(capsule)
    try:
        got = await capsules.agents.call(
            host.id,
            capsules.agents.client(host.address, host_id=host.id).get_sandbox_logs(
                pb.GetSandboxLogsRequest(sandbox_id=capsule.id)
            ),
        )
    except _errors.ApiError as exc:
        if exc.code == "not_found":
            return []
        raise
    return [
        Entry(
            e.timestamp.seconds * 1000 + e.timestamp.nanos // 1_000_000 if e.timestamp else 0,
            e.level or "info",
            e.message,
            e.source,
        )
        for e in got.entries
    ]


def page(
    found: list[Entry],
    limit: int,
    cursor_ms: int | None = None,
    backward: bool = False,
    level: str | None = None,
    search: str | None = None,
) -> list[Entry]:
    least = SEVERITY.get(level or "debug", 0)
    chosen = [e for e in found if SEVERITY.get(e.level, 1) >= least and (not search or search in e.message)]
    if backward:
        if cursor_ms is not None:
            chosen = [e for e in chosen if e.timestamp_ms <= cursor_ms]
        return chosen[-limit:][::-1]
    if cursor_ms is not None:
        chosen = [e for e in chosen if e.timestamp_ms >= cursor_ms]
    return chosen[:limit]


def as_e2b(entry: Entry) -> dict[str, Any]:
    """E2B's `SandboxLogEntry` (`fields.source`: envd, kernel or console)."""
    return {
        "timestamp": rfc3339(datetime.fromtimestamp(entry.timestamp_ms / 1000, UTC)),
        "message": entry.message,
        "level": entry.level,
        "fields": {"source": entry.source},
    }


def as_json(entry: Entry) -> dict[str, Any]:
    """An entry as `/v1` shows it."""
    return {
        "timestamp": rfc3339(datetime.fromtimestamp(entry.timestamp_ms / 1000, UTC)),
        "timestamp_ms": entry.timestamp_ms,
        "level": entry.level,
        "source": entry.source,
        "message": entry.message,
    }
