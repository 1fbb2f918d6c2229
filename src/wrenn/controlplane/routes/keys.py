"""API keys of the caller's team: the plaintext key is returned once, at creation."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from .. import _audit, _errors
from .._deps import Db, UserCaller, audit_fields
from .._ids import new_id
from .._security import new_api_key
from ..db import ApiKey, User

router = APIRouter(tags=["api-keys"])


class KeyBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class KeyOut(BaseModel):
    id: str
    team_id: str
    name: str
    key_prefix: str
    created_by: str | None
    creator_email: str | None = None
    created_at: datetime
    last_used: datetime | None
    key: str | None = None


def _out(k: ApiKey, creator_email: str | None = None, key: str | None = None) -> KeyOut:
    return KeyOut(
        id=k.id,
        team_id=k.team_id,
        name=k.name,
        key_prefix=k.key_prefix,
        created_by=k.created_by,
        creator_email=creator_email,
        created_at=k.created_at,
        last_used=k.last_used,
        key=key,
    )


@router.post("/v1/api-keys", status_code=201, response_model=KeyOut, response_model_exclude_none=True)
async def create_key(body: KeyBody, caller: UserCaller, session: Db) -> KeyOut:
    key, key_hash, prefix = new_api_key()
    record = ApiKey(
        id=new_id("key"),
        team_id=caller.team_id,
        name=body.name,
        key_hash=key_hash,
        key_prefix=prefix,
        created_by=caller.user_id,
    )
    session.add(record)
    _audit.record(
        session, **audit_fields(caller), resource_type="api_key", resource_id=record.id, action="create"
    )
    await session.commit()
    return _out(record, caller.actor_name, key)


@router.get("/v1/api-keys", response_model=list[KeyOut], response_model_exclude_none=True)
async def list_keys(caller: UserCaller, session: Db) -> list[KeyOut]:
    rows = await session.execute(
        select(ApiKey, User.email)
        .outerjoin(User, User.id == ApiKey.created_by)
        .where(ApiKey.team_id == caller.team_id)
        .order_by(ApiKey.created_at)
    )
    return [_out(k, email) for k, email in rows.all()]


@router.delete("/v1/api-keys/{key_id}", status_code=204)
async def delete_key(key_id: str, caller: UserCaller, session: Db) -> Response:
    record = await session.get(ApiKey, key_id)
    if record is None or record.team_id != caller.team_id:
        raise _errors.not_found(f"API key {key_id}")
    await session.delete(record)
    _audit.record(
        session, **audit_fields(caller), resource_type="api_key", resource_id=key_id, action="revoke"
    )
    await session.commit()
    return Response(status_code=204)
