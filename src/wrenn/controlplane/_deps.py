"""Request dependencies: the database session and who is asking (an API key or a user JWT)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from . import _errors
from ._principal import Principal, audit_fields
from ._security import KEY_PREFIXES, Tokens, hash_api_key
from ._session import session_token
from .db import ApiKey, Membership, RevokedToken, User, UserStatus, as_utc, utcnow
from .service import AccountService, BuildService, CapsuleService, TemplateService
from .service.admin import AdminService
from .service.identity import IdentityService
from .service.profile import ProfileService


async def db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


Db = Annotated[AsyncSession, Depends(db)]


def _bearer(conn: HTTPConnection) -> str | None:
    """`Authorization: Bearer <JWT>`, else the dashboard's session cookie where it may count."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token else session_token(conn)


async def _from_jwt(token: str, session: AsyncSession, tokens: Tokens) -> Principal:
    claims = tokens.verify(token)
    if claims is None:
        raise _errors.unauthorized("invalid or expired token")
    user = await session.get(User, claims.user_id)
    if user is None or user.status != UserStatus.ACTIVE:
        raise _errors.ApiError(403, "account_deactivated", "this account is not active")
    if claims.generation != user.token_generation or (
        claims.jti and await session.get(RevokedToken, claims.jti) is not None
    ):
        raise _errors.unauthorized("this token was revoked (signed out, or the password changed)")
    member = await session.get(Membership, (claims.team_id, user.id))
    if member is None:
        raise _errors.forbidden("you are no longer a member of this team")
    return Principal(
        "user", claims.team_id, user.id, user.email, user_id=user.id, role=member.role,
        token_id=claims.jti, token_expires=claims.exp,
    )  # fmt: skip


#: What a `viewer` key may do: read (a WebSocket is no read: it runs processes and writes files).
READ_METHODS = frozenset({"GET", "HEAD"})


async def _from_api_key(key: str, session: AsyncSession, method: str) -> Principal:
    """The key's principal for a request of `method` (`WEBSOCKET` for a socket); 401 for an unknown or
    expired key, 403 for a viewer key asked to change something."""
    found = (
        await session.execute(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key)))
    ).scalar_one_or_none()
    if found is None:
        raise _errors.unauthorized("invalid API key")
    if found.expires_at is not None and as_utc(found.expires_at) <= utcnow():
        raise _errors.unauthorized("this API key has expired")
    if found.created_by is not None:
        creator = await session.get(User, found.created_by)
        if creator is not None and creator.status != UserStatus.ACTIVE:
            raise _errors.ApiError(403, "account_deactivated", "this API key's creator is not active")
    if found.role == "viewer" and method not in READ_METHODS:
        raise _errors.forbidden("this API key is a viewer's: it reads (GET) and changes nothing")
    found.last_used = utcnow()
    await session.commit()
    return Principal("api_key", found.team_id, found.id, found.name, role=found.role)


def _method(conn: HTTPConnection) -> str:
    return str(conn.scope.get("method", "WEBSOCKET")) if conn.scope["type"] == "http" else "WEBSOCKET"


def has_credentials(conn: HTTPConnection) -> bool:
    """Whether the request (or WebSocket upgrade) carries an `X-API-Key` or a bearer token."""
    return bool(conn.headers.get("x-api-key") or _bearer(conn))


async def authenticate(conn: HTTPConnection, session: AsyncSession) -> Principal:
    """The caller named by the request's (or WebSocket upgrade's) `X-API-Key` or `Authorization: Bearer`."""
    key = conn.headers.get("x-api-key")
    if key:
        return await _from_api_key(key, session, _method(conn))
    token = _bearer(conn)
    if token:
        return await _from_jwt(token, session, conn.app.state.tokens)
    raise _errors.unauthorized("send X-API-Key or Authorization: Bearer <token>")


async def token_principal(token: str, session: AsyncSession, tokens: Tokens) -> Principal:
    """The caller named by a bare credential (a WebSocket's first `auth` message): an API key or a JWT."""
    if token.startswith(KEY_PREFIXES):
        return await _from_api_key(token, session, "WEBSOCKET")
    return await _from_jwt(token, session, tokens)


async def jwt_principal(token: str, session: AsyncSession, tokens: Tokens) -> Principal:
    """The user a JWT names (the dashboard's session cookie): never an API key."""
    return await _from_jwt(token, session, tokens)


async def principal(request: Request, session: Db) -> Principal:
    """An `X-API-Key` or an `Authorization: Bearer <JWT>`."""
    return await authenticate(request, session)


async def user_principal(request: Request, session: Db) -> Principal:
    """A user JWT only (account and team management is not for API keys)."""
    token = _bearer(request)
    if not token:
        raise _errors.unauthorized("this route needs a user token (Authorization: Bearer <token>)")
    return await _from_jwt(token, session, request.app.state.tokens)


async def admin_principal(request: Request, session: Db) -> Principal:
    """A user JWT of a platform admin (re-read from the database on every request)."""
    caller = await user_principal(request, session)
    user = await session.get(User, caller.user_id)
    if user is None or not user.is_admin:
        raise _errors.forbidden("only a platform admin may do this")
    return caller


@dataclass
class AuditQuery:
    """An audit log page's query (`/v1/audit-logs`, `/v1/admin/audit-logs`): a cursor, a size and filters
    (each repeatable or comma-separated)."""

    before: datetime | None = None
    before_id: Annotated[str | None, Query(max_length=64)] = None
    limit: Annotated[int, Query(ge=1)] = 50
    resource_type: Annotated[list[str] | None, Query()] = None
    action: Annotated[list[str] | None, Query()] = None

    def options(self) -> dict[str, Any]:
        return asdict(self)


Caller = Annotated[Principal, Depends(principal)]
UserCaller = Annotated[Principal, Depends(user_principal)]
Audit = Annotated[AuditQuery, Depends()]
AdminCaller = Annotated[Principal, Depends(admin_principal)]


def _capsule_service(request: Request, session: Db) -> CapsuleService:
    state = request.app.state
    return CapsuleService(session, state.agents, state.settings, state.metrics)


def _template_service(capsules: Capsules) -> TemplateService:
    return TemplateService(capsules)


def _build_service(capsules: Capsules) -> BuildService:
    return BuildService(capsules)


def _account_service(request: Request, session: Db) -> AccountService:
    state = request.app.state
    return AccountService(session, state.tokens, state.settings, state.mailer)


def _profile_service(request: Request, session: Db) -> ProfileService:
    state = request.app.state
    return ProfileService(session, state.tokens, state.settings, state.mailer)


def _identity_service(request: Request, session: Db) -> IdentityService:
    return IdentityService(session, request.app.state.tokens, request.app.state.settings)


def _admin_service(request: Request, session: Db, caller: AdminCaller) -> AdminService:
    return AdminService(session, request.app.state.agents, request.app.state.settings, caller)


#: The services of a request, over its session.
Capsules = Annotated[CapsuleService, Depends(_capsule_service)]
Templates = Annotated[TemplateService, Depends(_template_service)]
Accounts = Annotated[AccountService, Depends(_account_service)]
Builds = Annotated[BuildService, Depends(_build_service)]
Profiles = Annotated[ProfileService, Depends(_profile_service)]
Identities = Annotated[IdentityService, Depends(_identity_service)]
#: The admin service of a platform admin's request (refuses everyone else, 403).
Admin = Annotated[AdminService, Depends(_admin_service)]

__all__ = [
    "Accounts",
    "Admin",
    "AdminCaller",
    "Audit",
    "Builds",
    "Caller",
    "Capsules",
    "Db",
    "Identities",
    "Principal",
    "Profiles",
    "Templates",
    "UserCaller",
    "audit_fields",
    "authenticate",
    "has_credentials",
    "jwt_principal",
    "token_principal",
]
