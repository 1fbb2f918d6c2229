"""API keys of the caller's team: the plaintext key is returned once, at creation. Only the team's owner and
admins create and revoke them (members list them); a key has a role (`member`: everything a key reaches;
`viewer`: reads only) and may expire. A key is revoked when its creator leaves or is removed from the
team (`routes/teams.py`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from .. import _audit, _errors
from .._deps import Db, Principal, UserCaller, audit_fields
from .._ids import new_id
from .._security import new_api_key
from .._time import Timestamp
from ..db import ApiKey, User, as_utc, utcnow

router = APIRouter(tags=["api-keys"])


MANAGERS = ("owner", "admin")


class KeyBody(BaseModel):
    name: str = Field(default="Unnamed API Key", min_length=1, max_length=200)
    #: `member`: everything an API key reaches; `viewer`: GET routes only (no changes, no WebSockets).
    role: Literal["member", "viewer"] = "member"
    #: When the key stops working (RFC 3339, in the future); none: it does not expire.
    expires_at: AwareDatetime | None = None
    #: `wrenn`: `wrn_` + hex; `e2b`: `e2b_` + 40 hex digits, for E2B SDK releases that check a key's shape.
    format: Literal["wrenn", "e2b"] = "wrenn"


class KeyOut(BaseModel):
    id: str
    team_id: str
    name: str
    key_prefix: str
    created_by: str | None
    creator_email: str | None = None
    created_at: Timestamp
    last_used: Timestamp | None
    role: str = "member"
    expires_at: Timestamp | None = None
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
        role=k.role,
        expires_at=as_utc(k.expires_at) if k.expires_at else None,
        key=key,
    )


def _manager(caller: Principal, doing: str) -> None:
    if caller.role not in MANAGERS:
        raise _errors.forbidden(f"only the team's owner or an admin can {doing} API keys")


@router.post("/v1/api-keys", status_code=201, response_model=KeyOut, response_model_exclude_none=True)
async def create_key(body: KeyBody, caller: UserCaller, session: Db) -> KeyOut:
    _manager(caller, "create")
    if body.expires_at is not None and body.expires_at <= utcnow():
        raise _errors.bad_request("expires_at: must be in the future")
    key, key_hash, prefix = new_api_key(e2b_shape=body.format == "e2b")
    record = ApiKey(
        id=new_id("key"),
        team_id=caller.team_id,
        name=body.name,
        key_hash=key_hash,
        key_prefix=prefix,
        created_by=caller.user_id,
        role=body.role,
        expires_at=body.expires_at,
    )
    session.add(record)
    _audit.record(
        session,
        **audit_fields(caller),
        resource_type="api_key",
        resource_id=record.id,
        action="create",
        role=body.role,
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
    _manager(caller, "revoke")
    await session.delete(record)
    _audit.record(
        session, **audit_fields(caller), resource_type="api_key", resource_id=key_id, action="revoke"
    )
    await session.commit()
    return Response(status_code=204)
