"""Channels: where a team's events go, and their delivery. A chat channel (Slack, Discord, Teams, Google
Chat, Telegram, Matrix) is sent a short message per event through apprise (`chat.py` says how and where
to). A `webhook` channel is sent each event it selects as JSON, signed as the seed does:

    X-Wrenn-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
    X-Wrenn-Timestamp: <unix seconds>      X-Wrenn-Delivery: <delivery id>      X-Wrenn-Event: <type>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in constant time, and
refuses old timestamps (replays). Delivery is at least once: a receiver deduplicates on the body's `id`
(the event) or on `X-Wrenn-Delivery`.

The dispatcher (`_dispatcher.py`) calls `fan_out` (events -> one `Delivery` per selecting channel, in one
transaction) and `deliver_due` (claims due deliveries with a lease, sends them, records each attempt and
schedules the retry). Both are safe with several control planes on one PostgreSQL database: rows are
claimed `FOR UPDATE SKIP LOCKED`, and a delivery whose control plane died is taken over once its lease
ends. URLs go through the SSRF guard when given and again at every connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn import __version__

from .. import _errors, _ssrf
from .._ids import new_id
from .._metrics import Metrics
from .._settings import Settings
from ..db import Capsule, Channel, Delivery, DeliveryAttempt, Event, utcnow
from . import chat, e2b_webhooks, events

log = logging.getLogger("wrenn.controlplane.channels")

#: Providers a channel may be of (the seed's list), all delivered.
PROVIDERS = ("discord", "slack", "teams", "googlechat", "telegram", "matrix", "webhook")
_BATCH = 100
_SENDS = 20


def sign(secret: str, timestamp: str, body: str) -> str:
    """The `X-Wrenn-Signature` value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


async def guard(session: AsyncSession, settings: Settings) -> _ssrf.AddressGuard:
    return _ssrf.AddressGuard(
        blocked=await _ssrf.agent_addresses(session), allow=settings.webhook_allow_networks
    )


async def checked_config(
    session: AsyncSession, settings: Settings, provider: str, config: dict[str, str]
) -> dict[str, str]:
    """The provider's config as stored (a webhook's secret generated when not given); 400 for an unknown
    provider, missing or unknown fields, or a target the control plane must not reach."""
    if provider in chat.FIELDS:
        try:
            stored = chat.check(provider, config)
            await chat.check_host(provider, stored, await guard(session, settings))
        except ValueError as exc:
            raise _errors.bad_request(str(exc)) from None
        return stored
    if provider == e2b_webhooks.PROVIDER:
        unknown = set(config) - {"url", "secret", "enabled", "name"}
        if unknown:
            raise _errors.bad_request(f"unknown fields {sorted(unknown)}")
        url = await _checked_url(session, settings, config.get("url", ""), "url")
        secret = config.get("secret", "")
        if not 8 <= len(secret) <= 200:
            raise _errors.bad_request("signatureSecret: 8 to 200 characters")
        return {"url": url, "secret": secret, "enabled": config.get("enabled", "true"),
                "name": config.get("name", "")}  # fmt: skip
    if provider != "webhook":
        raise _errors.bad_request(f"provider: one of {list(PROVIDERS)}")
    unknown = set(config) - {"url", "secret"}
    if unknown:
        raise _errors.bad_request(f"config: unknown fields {sorted(unknown)} (a webhook has url and secret)")
    url = await _checked_url(session, settings, config.get("url", ""), "config.url")
    secret = config.get("secret") or new_secret()
    if len(secret) < 16 or len(secret) > 200:
        raise _errors.bad_request("config.secret: 16 to 200 characters")
    return {"url": url, "secret": secret}


async def _checked_url(session: AsyncSession, settings: Settings, url: str, field: str) -> str:
    """`url` if the control plane may send to it (http(s), public or allowed addresses, not an agent's)."""
    if not url or len(url) > 2000:
        raise _errors.bad_request(f"{field}: required, at most 2000 characters")
    checker = await guard(session, settings)
    parts = urlsplit(url)
    try:
        checker.check_url(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await _ssrf.GuardedBackend(checker).address(parts.hostname or "", port)
    except (httpcore.ConnectError, ValueError) as exc:
        raise _errors.bad_request(f"{field}: {exc}") from None
    return url


def check_events(selected: list[str]) -> list[str]:
    unknown = [e for e in selected if e not in events.TYPES]
    if unknown:
        raise _errors.bad_request(f"events: unknown event types {unknown}; known: {list(events.TYPES)}")
    return list(dict.fromkeys(selected))


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    error: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def deliver(
    provider: str,
    client: httpx.AsyncClient,
    checker: _ssrf.AddressGuard,
    config: dict[str, str],
    delivery_id: str,
    event_type: str,
    body: str,
    channel_id: str = "",
) -> Outcome:
    """Send the event (`body`, its JSON) to a channel of `provider`: a webhook signed (ours, or E2B's),
    a chat as a message; what came back (never raises for the receiver's faults)."""
    if provider == "webhook":
        return await send(client, config, delivery_id, event_type, body)
    started = time.monotonic()
    if provider == e2b_webhooks.PROVIDER:
        status, problem = await e2b_webhooks.send(client, config, channel_id, delivery_id, body)
        return Outcome(status, problem, int((time.monotonic() - started) * 1000))
    timeout = client.timeout.read or 10.0
    ok, error = await chat.send(provider, config, body, checker, timeout)
    return Outcome(200 if ok else None, error, int((time.monotonic() - started) * 1000))


async def send(
    client: httpx.AsyncClient, config: dict[str, str], delivery_id: str, event_type: str, body: str
) -> Outcome:
    """POST `body` to the webhook, signed; what came back (never raises for the receiver's faults)."""
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"Wrenn-Webhooks/{__version__}",
        "X-Wrenn-Signature": sign(config["secret"], timestamp, body),
        "X-Wrenn-Timestamp": timestamp,
        "X-Wrenn-Delivery": delivery_id,
        "X-Wrenn-Event": event_type,
    }
    started = time.monotonic()
    try:
        answer = await client.post(config["url"], content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        return Outcome(None, error, int((time.monotonic() - started) * 1000))
    ms = int((time.monotonic() - started) * 1000)
    return Outcome(answer.status_code, "" if answer.is_success else f"answered {answer.status_code}", ms)


def test_body(team_id: str) -> tuple[str, str]:
    """A `channel.test` event's id and body (never recorded as an event)."""
    event = Event(
        id=new_id("evt"), team_id=team_id, type=events.CHANNEL_TEST, resource_type="channel", resource_id="",
        actor_type="system", actor_id="control-plane", actor_name="control plane", data={},
        created_at=utcnow(),
    )  # fmt: skip
    return event.id, events.payload(event)


# --- the dispatcher's work -------------------------------------------------------------------------


async def fan_out(session: AsyncSession, postgres: bool) -> int:
    """Turn undispatched events into deliveries to the channels of their team that select them (committed
    together: an event is fanned out exactly once); how many events."""
    query = select(Event).where(Event.dispatched_at.is_(None)).order_by(Event.created_at).limit(_BATCH)
    if postgres:
        query = query.with_for_update(skip_locked=True)
    found = list((await session.execute(query)).scalars())
    if not found:
        await session.rollback()
        return 0
    teams = {e.team_id for e in found if e.team_id}
    channels: dict[str, list[Channel]] = {}
    for channel in (await session.execute(select(Channel).where(Channel.team_id.in_(teams)))).scalars():
        channels.setdefault(channel.team_id, []).append(channel)
    now = utcnow()
    e2b = [
        c
        for found_channels in channels.values()
        for c in found_channels
        if c.provider == e2b_webhooks.PROVIDER
    ]
    configs = {c.id: json.loads(c.config) for c in e2b}
    capsules: dict[str, Capsule] = {}
    if e2b:
        ids = {e.resource_id for e in found if e.type in e2b_webhooks.FROM_EVENT}
        rows = await session.execute(select(Capsule).where(Capsule.id.in_(ids)))
        capsules = {c.id: c for c in rows.scalars()}
    for event in found:
        for channel in channels.get(event.team_id or "", []):
            if channel.provider == e2b_webhooks.PROVIDER:
                if not e2b_webhooks.selects(configs[channel.id], list(channel.events or []), event.type):
                    continue
                body = e2b_webhooks.payload(event, capsules.get(event.resource_id))
            elif event.type in (channel.events or []):
                body = events.payload(event)
            else:
                continue
            session.add(
                Delivery(
                    id=new_id("dlv"), channel_id=channel.id, event_id=event.id, event_type=event.type,
                    payload=body, next_attempt_at=now,
                )
            )  # fmt: skip
        event.dispatched_at = now
    await session.commit()
    return len(found)


async def _claim(sessions: Callable[[], Any], settings: Settings, postgres: bool) -> list[str]:
    async with sessions() as session:
        now = utcnow()
        query = (
            select(Delivery)
            .where(
                Delivery.status == "pending",
                Delivery.next_attempt_at <= now,
                or_(Delivery.lease_until.is_(None), Delivery.lease_until < now),
            )
            .order_by(Delivery.next_attempt_at)
            .limit(_BATCH)
        )
        if postgres:
            query = query.with_for_update(skip_locked=True)
        due = list((await session.execute(query)).scalars())
        for delivery in due:
            delivery.lease_until = now + timedelta(seconds=settings.delivery_lease_s)
        ids = [d.id for d in due]
        await session.commit()
        return ids


async def deliver_due(
    sessions: Callable[[], Any], settings: Settings, postgres: bool, metrics: Metrics | None
) -> int:
    """Claim the deliveries due, make one attempt of each, record it; how many were attempted."""
    claimed = await _claim(sessions, settings, postgres)
    if not claimed:
        return 0
    async with sessions() as session:
        checker = await guard(session, settings)
    limit = asyncio.Semaphore(_SENDS)
    async with _ssrf.guarded_client(checker, settings.webhook_timeout_s) as client:

        async def one(delivery_id: str) -> None:
            async with limit:
                await _attempt(sessions, settings, client, checker, delivery_id, metrics)

        await asyncio.gather(*(one(d) for d in claimed))
    return len(claimed)


async def _attempt(
    sessions: Callable[[], Any],
    settings: Settings,
    client: httpx.AsyncClient,
    checker: _ssrf.AddressGuard,
    delivery_id: str,
    metrics: Metrics | None,
) -> None:
    async with sessions() as session:
        delivery = await session.get(Delivery, delivery_id)
        channel = await session.get(Channel, delivery.channel_id) if delivery else None
        if delivery is None or channel is None:
            return  # the channel was deleted meanwhile (its deliveries with it)
        config, provider = json.loads(channel.config), channel.provider
        body, event_type = delivery.payload, delivery.event_type
    outcome = await deliver(provider, client, checker, config, delivery_id, event_type, body, channel.id)
    if metrics is not None:
        metrics.deliveries.labels(provider, "ok" if outcome.ok else "error").inc()
    async with sessions() as session:
        delivery = await session.get(Delivery, delivery_id)
        if delivery is None:
            return
        record_attempt(session, delivery, outcome, settings.webhook_retry_s)
        await session.commit()
    log.info(
        "event delivered" if outcome.ok else "event delivery failed",
        extra={"delivery": delivery_id, "channel": channel.id, "event": event_type,
               "status_code": outcome.status_code, "error": outcome.error},
    )  # fmt: skip


async def prune(session: AsyncSession, before: datetime) -> None:
    """Remove events dispatched before `before` and deliveries finished (delivered or failed) before it,
    with their attempts (in the caller's transaction)."""
    await session.execute(delete(Event).where(Event.dispatched_at < before))
    await session.execute(delete(Delivery).where(Delivery.status != "pending", Delivery.created_at < before))


def record_attempt(
    session: AsyncSession, delivery: Delivery, outcome: Outcome, retry_s: tuple[float, ...]
) -> None:
    """The attempt in the log, and what the delivery becomes: delivered, retried later, or failed."""
    delivery.attempts += 1
    session.add(
        DeliveryAttempt(
            delivery_id=delivery.id, attempt=delivery.attempts, status_code=outcome.status_code,
            error=outcome.error[:500], duration_ms=outcome.duration_ms,
        )
    )  # fmt: skip
    delivery.lease_until = None
    if outcome.ok:
        delivery.status, delivery.delivered_at = "delivered", utcnow()
    elif delivery.attempts > len(retry_s):
        delivery.status = "failed"
    else:
        delivery.next_attempt_at = utcnow() + timedelta(seconds=retry_s[delivery.attempts - 1])
