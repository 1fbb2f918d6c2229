"""A team's notification channels (the seed's `/v1/channels`): create, list, get, update (name and events),
delete, rotate the config (`PUT /v1/channels/{id}/config`), test a config before saving it
(`POST /v1/channels/test`) or a saved channel (`POST /v1/channels/{id}/test`), and the delivery log
(`GET /v1/channels/{id}/deliveries`). Members read; the team's owner and admins change. A webhook's
secret is shown when created or rotated, never again; configs (chat tokens and webhook URLs too) are sealed
at rest and never shown."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from pydantic.config import JsonDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors, _ssrf
from .._deps import Caller, Db, Principal, audit_fields
from .._ids import new_id
from .._time import Timestamp
from ..db import Channel, Delivery, DeliveryAttempt, utcnow
from ..service import channels as service
from ..service import events as event_types

router = APIRouter(tags=["channels"])

MANAGERS = ("owner", "admin")
Provider = Literal["discord", "slack", "teams", "googlechat", "telegram", "matrix", "webhook"]
Config = dict[str, str]
#: The event types a channel may select, listed in the OpenAPI document (the dashboard offers them from
#: there); an unknown one is still refused by `check_events` with 400 and the list.
_EVENTS_SCHEMA: JsonDict = {"items": {"type": "string", "enum": list(event_types.TYPES)}}


class CreateBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    provider: Provider
    config: Config
    events: list[str] = Field(max_length=50, json_schema_extra=_EVENTS_SCHEMA)


class UpdateBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    events: list[str] = Field(max_length=50, json_schema_extra=_EVENTS_SCHEMA)


class ConfigBody(BaseModel):
    config: Config


class TestBody(BaseModel):
    provider: Provider
    config: Config


class ChannelOut(BaseModel):
    id: str
    team_id: str
    name: str
    provider: str
    events: list[str]
    created_at: Timestamp
    updated_at: Timestamp
    #: A webhook's signing secret: in the answer to a create or a rotation only.
    secret: str | None = None


class AttemptOut(BaseModel):
    attempt: int
    at: Timestamp
    status_code: int | None
    error: str
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    created_at: Timestamp
    next_attempt_at: Timestamp | None
    delivered_at: Timestamp | None
    log: list[AttemptOut]


def _out(channel: Channel, secret: str | None = None) -> ChannelOut:
    return ChannelOut(
        id=channel.id, team_id=channel.team_id, name=channel.name, provider=channel.provider,
        events=list(channel.events or []), created_at=channel.created_at, updated_at=channel.updated_at,
        secret=secret,
    )  # fmt: skip


def _manager(caller: Principal, doing: str) -> None:
    if caller.role not in MANAGERS:
        raise _errors.forbidden(f"only the team's owner or an admin can {doing} channels")


async def _channel(session: AsyncSession, caller: Principal, channel_id: str) -> Channel:
    channel = await session.get(Channel, channel_id)
    if channel is None or channel.team_id != caller.team_id or channel.provider not in service.PROVIDERS:
        raise _errors.not_found(f"channel {channel_id}")  # (E2B's webhooks are under /events/webhooks)
    return channel


async def _name_free(session: AsyncSession, team_id: str, name: str, channel_id: str = "") -> None:
    taken = await session.scalar(
        select(Channel.id).where(Channel.team_id == team_id, Channel.name == name, Channel.id != channel_id)
    )
    if taken:
        raise _errors.conflict(f"the team has a channel called {name!r}")


def _audit_channel(session: AsyncSession, caller: Principal, channel_id: str, action: str) -> None:
    _audit.record(
        session, **audit_fields(caller), resource_type="channel", resource_id=channel_id, action=action
    )


@router.post("/v1/channels", status_code=201, response_model=ChannelOut)
async def create_channel(body: CreateBody, caller: Caller, session: Db, request: Request) -> ChannelOut:
    _manager(caller, "create")
    selected = service.check_events(body.events)
    config = await service.checked_config(session, request.app.state.settings, body.provider, body.config)
    await _name_free(session, caller.team_id, body.name)
    channel = Channel(
        id=new_id("ch"), team_id=caller.team_id, name=body.name, provider=body.provider,
        config=json.dumps(config), events=selected,
    )  # fmt: skip
    session.add(channel)
    _audit_channel(session, caller, channel.id, "create")
    await session.commit()
    return _out(channel, config.get("secret"))


@router.get("/v1/channels", response_model=list[ChannelOut])
async def list_channels(caller: Caller, session: Db) -> list[ChannelOut]:
    rows = await session.execute(
        select(Channel)
        .where(Channel.team_id == caller.team_id, Channel.provider.in_(service.PROVIDERS))
        .order_by(Channel.created_at, Channel.id)
    )
    return [_out(c) for c in rows.scalars()]


@router.post("/v1/channels/test")
async def test_config(body: TestBody, caller: Caller, session: Db, request: Request) -> dict[str, str]:
    """Send a `channel.test` event to a config without saving anything: 200 when the receiver took it,
    400 with what went wrong otherwise."""
    _manager(caller, "test")
    settings = request.app.state.settings
    config = await service.checked_config(session, settings, body.provider, body.config)
    _, payload = service.test_body(caller.team_id)
    checker = await service.guard(session, settings)
    await session.rollback()  # no transaction stays open while the receiver answers
    async with _ssrf.guarded_client(checker, settings.webhook_timeout_s) as c:
        outcome = await service.deliver(
            body.provider, c, checker, config, new_id("dlv"), "channel.test", payload
        )
    if not outcome.ok:
        raise _errors.bad_request(f"the test notification was not accepted: {outcome.error}")
    return {"status": "ok"}


@router.get("/v1/channels/{channel_id}", response_model=ChannelOut)
async def get_channel(channel_id: str, caller: Caller, session: Db) -> ChannelOut:
    return _out(await _channel(session, caller, channel_id))


@router.patch("/v1/channels/{channel_id}", response_model=ChannelOut)
async def update_channel(channel_id: str, body: UpdateBody, caller: Caller, session: Db) -> ChannelOut:
    channel = await _channel(session, caller, channel_id)
    _manager(caller, "update")
    selected = service.check_events(body.events)
    await _name_free(session, caller.team_id, body.name, channel.id)
    channel.name, channel.events = body.name, selected
    _audit_channel(session, caller, channel.id, "update")
    await session.commit()
    await session.refresh(channel)
    return _out(channel)


@router.delete("/v1/channels/{channel_id}", status_code=204)
async def delete_channel(channel_id: str, caller: Caller, session: Db) -> Response:
    channel = await _channel(session, caller, channel_id)
    _manager(caller, "delete")
    await session.delete(channel)
    _audit_channel(session, caller, channel_id, "delete")
    await session.commit()
    return Response(status_code=204)


@router.put("/v1/channels/{channel_id}/config", response_model=ChannelOut)
async def rotate_config(
    channel_id: str, body: ConfigBody, caller: Caller, session: Db, request: Request
) -> ChannelOut:
    """Replace the channel's config (a new secret: given, or generated and shown in this answer only)."""
    channel = await _channel(session, caller, channel_id)
    _manager(caller, "rotate the secrets of")
    config = await service.checked_config(session, request.app.state.settings, channel.provider, body.config)
    channel.config = json.dumps(config)
    _audit_channel(session, caller, channel.id, "rotate")
    await session.commit()
    await session.refresh(channel)
    return _out(channel, config.get("secret"))


@router.post("/v1/channels/{channel_id}/test", response_model=DeliveryOut)
async def test_channel(channel_id: str, caller: Caller, session: Db, request: Request) -> DeliveryOut:
    """Send a `channel.test` event to the saved channel now, once (no retries); the delivery, in its log."""
    channel = await _channel(session, caller, channel_id)
    _manager(caller, "test")
    settings = request.app.state.settings
    event_id, payload = service.test_body(caller.team_id)
    delivery_id, config, provider = new_id("dlv"), json.loads(channel.config), channel.provider
    checker = await service.guard(session, settings)
    await session.rollback()  # no transaction stays open while the receiver answers
    async with _ssrf.guarded_client(checker, settings.webhook_timeout_s) as c:
        outcome = await service.deliver(provider, c, checker, config, delivery_id, "channel.test", payload)
    delivery = Delivery(
        id=delivery_id, channel_id=channel_id, event_id=event_id, event_type="channel.test", payload=payload,
        status="pending", attempts=0, created_at=utcnow(), next_attempt_at=utcnow(),
    )  # fmt: skip
    session.add(delivery)
    service.record_attempt(session, delivery, outcome, retry_s=())
    await session.commit()
    return (await _deliveries(session, [delivery]))[0]


@router.get("/v1/channels/{channel_id}/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    channel_id: str, caller: Caller, session: Db, limit: int = Query(50, ge=1, le=500)
) -> list[DeliveryOut]:
    """The channel's latest deliveries, newest first, each with every attempt."""
    channel = await _channel(session, caller, channel_id)
    rows = await session.execute(
        select(Delivery)
        .where(Delivery.channel_id == channel.id)
        .order_by(Delivery.created_at.desc(), Delivery.id)
        .limit(limit)
    )
    return await _deliveries(session, list(rows.scalars()))


async def _deliveries(session: AsyncSession, found: list[Delivery]) -> list[DeliveryOut]:
    attempts: dict[str, list[AttemptOut]] = {}
    if found:
        rows = await session.execute(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_id.in_([d.id for d in found]))
            .order_by(DeliveryAttempt.delivery_id, DeliveryAttempt.attempt)
        )
        for a in rows.scalars():
            attempts.setdefault(a.delivery_id, []).append(
                AttemptOut(attempt=a.attempt, at=a.at, status_code=a.status_code, error=a.error,
                           duration_ms=a.duration_ms)
            )  # fmt: skip
    out: list[DeliveryOut] = []
    for d in found:
        pending: Any = d.next_attempt_at if d.status == "pending" else None
        out.append(
            DeliveryOut(
                id=d.id, event_id=d.event_id, event_type=d.event_type, status=d.status, attempts=d.attempts,
                created_at=d.created_at, next_attempt_at=pending, delivered_at=d.delivered_at,
                log=attempts.get(d.id, []),
            )
        )  # fmt: skip
    return out
