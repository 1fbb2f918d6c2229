"""E2B's sandbox lifecycle webhooks API (`/events/webhooks`), for programs written against E2B: register,
list, get, update and delete a team's webhooks with its API key. Each is a channel of provider `e2b`
(`service/e2b_webhooks.py`): delivered by the one dispatcher with every other channel, its URL checked by
the SSRF guard, its config (URL and signature secret) sealed; `/v1/channels` does not show it. Any member
of the team but a viewer manages them (E2B's API keys may); the secret is never shown back. Errors are
E2B's `{"code", "message"}`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._deps import Caller, Db, Principal, audit_fields
from .._ids import new_id
from .._time import rfc3339
from ..db import Channel
from ..service import channels as service
from ..service import e2b_webhooks as e2b

router = APIRouter(tags=["e2b"])


class NewWebhook(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(default="", max_length=200)
    url: str = Field(min_length=1, max_length=2000)
    enabled: bool = True
    events: list[str] = Field(default_factory=list, max_length=20)
    signatureSecret: str = Field(min_length=1, max_length=200)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, max_length=200)
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    enabled: bool | None = None
    events: list[str] | None = Field(default=None, max_length=20)
    signatureSecret: str | None = Field(default=None, min_length=1, max_length=200)


def _events(selected: list[str]) -> list[str]:
    unknown = [e for e in selected if e not in e2b.TYPES]
    if unknown:
        raise _errors.bad_request(f"events: unknown event types {unknown}; known: {list(e2b.TYPES)}")
    return list(dict.fromkeys(selected))


def _out(channel: Channel) -> dict[str, Any]:
    config = json.loads(channel.config)
    return {
        "id": channel.id,
        "teamID": channel.team_id,
        "name": config.get("name", ""),
        "createdAt": rfc3339(channel.created_at),
        "enabled": config.get("enabled", "true") == "true",
        "url": config["url"],
        "events": list(channel.events or []),
    }


def _manager(caller: Principal) -> None:
    if caller.role == "viewer":
        raise _errors.forbidden("a viewer cannot change webhooks")


async def _webhook(session: AsyncSession, caller: Principal, webhook_id: str) -> Channel:
    channel = await session.get(Channel, webhook_id)
    if channel is None or channel.team_id != caller.team_id or channel.provider != e2b.PROVIDER:
        raise _errors.not_found(f"webhook {webhook_id}")
    return channel


def _audit_webhook(session: AsyncSession, caller: Principal, webhook_id: str, action: str) -> None:
    _audit.record(
        session, **audit_fields(caller), resource_type="channel", resource_id=webhook_id, action=action
    )


@router.post("/events/webhooks", status_code=201)
async def register(body: NewWebhook, caller: Caller, session: Db, request: Request) -> dict[str, Any]:
    _manager(caller)
    selected = _events(body.events)
    given = {
        "url": body.url,
        "secret": body.signatureSecret,
        "enabled": str(body.enabled).lower(),
        "name": body.name,
    }
    config = await service.checked_config(session, request.app.state.settings, e2b.PROVIDER, given)
    webhook_id = new_id("wh")
    channel = Channel(
        id=webhook_id, team_id=caller.team_id, name=f"e2b:{webhook_id}", provider=e2b.PROVIDER,
        config=json.dumps(config), events=selected,
    )  # fmt: skip
    session.add(channel)
    _audit_webhook(session, caller, webhook_id, "create")
    await session.commit()
    return _out(channel)


@router.get("/events/webhooks")
async def list_webhooks(caller: Caller, session: Db) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(Channel)
        .where(Channel.team_id == caller.team_id, Channel.provider == e2b.PROVIDER)
        .order_by(Channel.created_at, Channel.id)
    )
    return [_out(c) for c in rows.scalars()]


@router.get("/events/webhooks/{webhook_id}")
async def get_webhook(webhook_id: str, caller: Caller, session: Db) -> dict[str, Any]:
    return _out(await _webhook(session, caller, webhook_id))


@router.patch("/events/webhooks/{webhook_id}")
async def update_webhook(
    webhook_id: str, body: WebhookUpdate, caller: Caller, session: Db, request: Request
) -> dict[str, Any]:
    channel = await _webhook(session, caller, webhook_id)
    _manager(caller)
    config = json.loads(channel.config)
    changed = {
        "url": body.url, "secret": body.signatureSecret, "name": body.name,
        "enabled": None if body.enabled is None else str(body.enabled).lower(),
    }  # fmt: skip
    config |= {k: v for k, v in changed.items() if v is not None}
    config = await service.checked_config(session, request.app.state.settings, e2b.PROVIDER, config)
    if body.events is not None:
        channel.events = _events(body.events)
    channel.config = json.dumps(config)
    _audit_webhook(session, caller, webhook_id, "update")
    await session.commit()
    await session.refresh(channel)
    return _out(channel)


@router.delete("/events/webhooks/{webhook_id}")
async def delete_webhook(webhook_id: str, caller: Caller, session: Db) -> Response:
    channel = await _webhook(session, caller, webhook_id)
    _manager(caller)
    await session.delete(channel)
    _audit_webhook(session, caller, webhook_id, "delete")
    await session.commit()
    return Response(status_code=200)
