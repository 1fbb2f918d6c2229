"""E2B's sandbox lifecycle webhooks (`/events/webhooks`), as channels of provider `e2b`: the same outbox,
dispatcher, retries, leases and delivery log as every channel (`channels.py`), with E2B's event names,
body and signature. A webhook's config (sealed) is `{url, secret, enabled, name}`.

Our events -> E2B's types: `capsule.created` -> `sandbox.lifecycle.created`, `capsule.paused` -> `paused`,
`capsule.resumed` -> `resumed`, `capsule.destroyed` -> `killed`. Wrenn records no `updated` event: a
webhook may select `sandbox.lifecycle.updated` (E2B programs do) but is never sent one.

Each delivery is `POST <url>` with E2B's body (below) and the headers `e2b-webhook-id`, `e2b-delivery-id`,
`e2b-signature-version: v1` and `e2b-signature`: SHA-256 over the secret followed by the raw body,
base64url without padding, as E2B's docs verify it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from typing import Any

import httpx

from wrenn import __version__

from .._time import rfc3339
from ..db import Capsule, Event, as_utc
from . import events

PROVIDER = "e2b"
CREATED, KILLED, UPDATED = (
    "sandbox.lifecycle.created",
    "sandbox.lifecycle.killed",
    "sandbox.lifecycle.updated",
)
PAUSED, RESUMED = "sandbox.lifecycle.paused", "sandbox.lifecycle.resumed"
#: The types a webhook may select (E2B's), in E2B's order.
TYPES = (CREATED, KILLED, UPDATED, PAUSED, RESUMED)
#: Our event type -> E2B's.
FROM_EVENT = {
    events.CAPSULE_CREATED: CREATED,
    events.CAPSULE_PAUSED: PAUSED,
    events.CAPSULE_RESUMED: RESUMED,
    events.CAPSULE_DESTROYED: KILLED,
}


def selects(config: dict[str, str], selected: list[str], event_type: str) -> bool:
    """Whether an enabled webhook that selected `selected` is sent our event `event_type`."""
    return config.get("enabled", "true") == "true" and FROM_EVENT.get(event_type, "") in selected


def payload(event: Event, capsule: Capsule | None) -> str:
    """E2B's webhook body for `event` (the capsule's row for its template and labels, E2B's metadata)."""
    kind = FROM_EVENT[event.type]
    data: dict[str, Any] = {"sandbox_metadata": dict(capsule.labels or {}) if capsule else {}}
    started = capsule.started_at if capsule else None
    if capsule is not None and kind in (KILLED, PAUSED):
        execution: dict[str, Any] = {"vcpu_count": capsule.vcpus, "memory_mb": capsule.memory_mb}
        if started is not None:
            execution["started_at"] = rfc3339(started)
            execution["execution_time"] = _ms(as_utc(event.created_at) - as_utc(started))
        data["execution"] = execution
    body = {
        "version": "v2",
        "id": event.id,
        "type": kind,
        "eventData": data,
        "sandboxBuildId": "",  # a capsule records its template's name, not the build it started from
        "sandboxExecutionId": f"{event.resource_id}.{rfc3339(started)}" if started else event.resource_id,
        "sandboxId": event.resource_id,
        "sandboxTeamId": event.team_id,
        "sandboxTemplateId": capsule.template if capsule else "",
        "timestamp": rfc3339(event.created_at),
    }
    return json.dumps(body, separators=(",", ":"))


def _ms(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() * 1000))


def signature(secret: str, body: str) -> str:
    digest = hashlib.sha256((secret + body).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def send(
    client: httpx.AsyncClient, config: dict[str, str], webhook_id: str, delivery_id: str, body: str
) -> tuple[int | None, str]:
    """POST the body, signed as E2B signs; (status, error)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Wrenn-Webhooks/{__version__}",
        "e2b-webhook-id": webhook_id,
        "e2b-delivery-id": delivery_id,
        "e2b-signature-version": "v1",
        "e2b-signature": signature(config["secret"], body),
    }
    try:
        answer = await client.post(config["url"], content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    return answer.status_code, "" if answer.is_success else f"answered {answer.status_code}"
