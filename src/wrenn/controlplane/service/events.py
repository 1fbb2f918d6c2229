"""Events: what happened to a team's capsules, templates and hosts, recorded in the database in the same
transaction as the change itself (an outbox), so an event exists exactly when its change does. The
dispatcher (`_dispatcher.py`) delivers them to the team's channels afterwards, at least once.

`record` adds the row to the caller's session: the caller's commit writes both or neither.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from .._ids import new_id
from .._principal import Principal
from .._time import rfc3339
from ..db import Event

CAPSULE_CREATED = "capsule.created"
CAPSULE_RUNNING = "capsule.running"
CAPSULE_PAUSED = "capsule.paused"
CAPSULE_RESUMED = "capsule.resumed"
CAPSULE_DESTROYED = "capsule.destroyed"
CAPSULE_ERROR = "capsule.error"
TEMPLATE_CREATED = "template.snapshot.created"
TEMPLATE_DELETED = "template.snapshot.deleted"
HOST_UP = "host.up"
HOST_DOWN = "host.down"
#: A template build ended (`data.status`: ready, error or cancelled).
BUILD_FINISHED = "template.build.finished"
#: Sent by `POST /v1/channels/test` and `/v1/channels/{id}/test` only: never recorded, never selected.
CHANNEL_TEST = "channel.test"

#: Every event type a channel may select (the seed's, then ours).
TYPES = (
    CAPSULE_CREATED, CAPSULE_RUNNING, CAPSULE_PAUSED, CAPSULE_DESTROYED, TEMPLATE_CREATED, TEMPLATE_DELETED,
    HOST_UP, HOST_DOWN, CAPSULE_RESUMED, CAPSULE_ERROR, BUILD_FINISHED,
)  # fmt: skip

_SYSTEM = ("system", "control-plane", "control plane")


def record(
    session: AsyncSession,
    type_: str,
    *,
    team_id: str | None,
    resource_type: str,
    resource_id: str,
    actor: Principal | tuple[str, str, str] | None = None,
    **data: Any,
) -> Event:
    """Add event `type_` to the session (written by the caller's commit). `actor`: who did it; a
    `(type, id, name)` for a part of the platform; None: the control plane itself."""
    who = (actor.kind, actor.actor_id, actor.actor_name) if isinstance(actor, Principal) else actor
    who = who or _SYSTEM
    event = Event(
        id=new_id("evt"),
        team_id=team_id,
        type=type_,
        resource_type=resource_type,
        resource_id=resource_id,
        actor_type=who[0],
        actor_id=who[1],
        actor_name=who[2],
        data=data,
    )
    session.add(event)
    return event


def payload(event: Event) -> str:
    """The JSON body a channel is sent, as the seed's: `{event, timestamp, team_id, actor{type,id,name},
    resource{id,type}}`, plus the event's `id` (receivers deduplicate on it: delivery is at least once)
    and its `data`."""
    return json.dumps(
        {
            "id": event.id,
            "event": event.type,
            "timestamp": rfc3339(event.created_at),
            "team_id": event.team_id,
            "actor": {"type": event.actor_type, "id": event.actor_id, "name": event.actor_name},
            "resource": {"id": event.resource_id, "type": event.resource_type},
            "data": event.data or {},
        },
        separators=(",", ":"),
    )


def host_changed(
    session: AsyncSession, host: Any, up: bool, actor: tuple[str, str, str] | None = None
) -> None:
    """`host.up` or `host.down` for `host` (a `db.Host`), to its team (null for the platform's hosts)."""
    record(
        session, HOST_UP if up else HOST_DOWN, team_id=host.team_id, resource_type="host",
        resource_id=host.id, actor=actor, status=str(host.status),
    )  # fmt: skip


def build_finished(session: AsyncSession, build: Any) -> None:
    """`template.build.finished` for `build` (a `db.TemplateBuild` that has just ended), to its team."""
    record(
        session, BUILD_FINISHED, team_id=build.team_id, resource_type="build", resource_id=build.id,
        status=build.status, template_id=build.template_id, reason=(build.reason or "")[:500],
    )  # fmt: skip
