"""The seed's event stream (`GET /v1/events/stream`): a team's events as server-sent events, read from the
outbox (`events`) as they are committed, so the stream needs nothing but the database (no Redis, no
in-memory bus: any control plane serves it, and it sees what the others record).

The wire format is the seed's `SSEEvent`: an `event: <kind>` line, a `data: <JSON>` line, a blank line;
a `connected` sentinel first, a `: keepalive` comment every `KEEPALIVE_S` while nothing happens. Each
event's `id:` is its event id, and a client that reconnects with `Last-Event-ID` gets what it missed
(while the janitor keeps it: `WRENN_EVENTS_RETENTION_DAYS`).

The seed names actions, not results: our `capsule.created` is its `capsule.create` with outcome
`success`; `capsule.running` and `capsule.error` are its `capsule.state.changed` (`metadata.to`);
build events have no seed kind and are not streamed (channels get them).

Events are polled every `POLL_S` and read `LOOKBACK_S` behind the newest one seen, since an event's
`created_at` is set before its transaction commits: one committed late, with an older time, is still
found (ids already sent are skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .._time import rfc3339
from ..db import Capsule, Event, utcnow
from . import events

POLL_S = 1.0
KEEPALIVE_S = 15.0
LOOKBACK_S = 10.0
_BATCH = 500

#: Our event type -> the seed's kind, its outcome (None: none), and `metadata.to` when it is a state change.
KINDS: dict[str, tuple[str, str | None, str | None]] = {
    events.CAPSULE_CREATED: ("capsule.create", "success", None),
    events.CAPSULE_PAUSED: ("capsule.pause", "success", None),
    events.CAPSULE_RESUMED: ("capsule.resume", "success", None),
    events.CAPSULE_DESTROYED: ("capsule.destroy", "success", None),
    events.CAPSULE_RUNNING: ("capsule.state.changed", None, "running"),
    events.CAPSULE_ERROR: ("capsule.state.changed", None, "error"),
    events.TEMPLATE_CREATED: ("template.snapshot.create", "success", None),
    events.TEMPLATE_DELETED: ("template.snapshot.delete", "success", None),
    events.HOST_UP: ("host.up", None, None),
    events.HOST_DOWN: ("host.down", None, None),
}
#: The seed's actor types; anything else (a host, the platform) is `system`.
_ACTORS = ("user", "api_key", "system")


def frame(kind: str, data: dict[str, Any], event_id: str = "") -> bytes:
    lines = ([f"id: {event_id}"] if event_id else []) + [f"event: {kind}", "data: " + json.dumps(data)]
    return ("\n".join(lines) + "\n\n").encode()


def connected() -> bytes:
    return frame("connected", {"event": "connected", "timestamp": rfc3339(utcnow())})


KEEPALIVE = b": keepalive\n\n"


def message(event: Event, sandbox: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """The seed's kind and `SSEEvent` body of `event`, or None when the seed has no such kind."""
    if event.type not in KINDS:
        return None
    kind, outcome, to = KINDS[event.type]
    metadata = {k: str(v) for k, v in (event.data or {}).items() if v is not None and k != "error"}
    if to:
        metadata["to"] = to
    if event.type == events.CAPSULE_ERROR and (event.data or {}).get("error"):
        metadata["reason"] = str(event.data["error"])
    data: dict[str, Any] = {
        "event": kind,
        "resource": {"id": event.resource_id, "type": event.resource_type},
        "actor": {
            "type": event.actor_type if event.actor_type in _ACTORS else "system",
            "id": event.actor_id,
            "name": event.actor_name,
        },
        "metadata": metadata,
        "timestamp": rfc3339(event.created_at),
    }
    if outcome:
        data["outcome"] = outcome
    if kind.startswith("capsule."):
        data["sandbox"] = sandbox
    return kind, data


class Cursor:
    """Where a team's stream is: the newest event time seen and the ids sent within the look-back."""

    def __init__(self, team_id: str, since: datetime) -> None:
        self.team_id = team_id
        self.since = since
        self.sent: dict[str, datetime] = {}

    @classmethod
    async def start(cls, session: AsyncSession, team_id: str, last_event_id: str | None) -> Cursor:
        """From now, or from just after the team's event `last_event_id` (a reconnecting client's)."""
        if last_event_id:
            found = await session.get(Event, last_event_id[:40])
            if found is not None and found.team_id == team_id:
                # the client had it and everything before it (in the stream's order) within the look-back
                cursor = cls(team_id, found.created_at)
                floor = found.created_at - timedelta(seconds=LOOKBACK_S)
                before = await session.execute(
                    select(Event.id, Event.created_at).where(
                        Event.team_id == team_id,
                        Event.created_at >= floor,
                        Event.created_at <= found.created_at,
                    )
                )
                for event_id, at in before.all():
                    if at < found.created_at or event_id <= found.id:
                        cursor.sent[event_id] = at
                return cursor
        return cls(team_id, utcnow())

    async def next(self, session: AsyncSession, sandbox: Callable[[Capsule], dict[str, Any]]) -> list[bytes]:
        """The frames of the team's events committed since the last call, oldest first."""
        floor = self.since - timedelta(seconds=LOOKBACK_S)
        query = select(Event).where(Event.team_id == self.team_id, Event.created_at >= floor)
        if self.sent:
            query = query.where(Event.id.not_in(list(self.sent)))
        rows = await session.execute(query.order_by(Event.created_at, Event.id).limit(_BATCH))
        found = list(rows.scalars())
        frames: list[bytes] = []
        for event in found:
            self.sent[event.id] = event.created_at
            self.since = max(self.since, event.created_at)
            capsule = None
            if event.resource_type == "capsule" and event.type in KINDS:
                row = await session.get(Capsule, event.resource_id)
                capsule = sandbox(row) if row is not None and row.team_id == self.team_id else None
            made = message(event, capsule)
            if made is not None:
                frames.append(frame(made[0], made[1], event.id))
        floor = self.since - timedelta(seconds=LOOKBACK_S)
        self.sent = {i: at for i, at in self.sent.items() if at >= floor}
        return frames
