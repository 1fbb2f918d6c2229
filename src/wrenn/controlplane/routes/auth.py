"""Sign-up, login, team switching and the caller's own account."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _audit, _errors
from .._deps import Db, UserCaller
from .._security import DUMMY_HASH, Claims, verify_password
from .._settings import Settings
from ..db import LoginFailure, Membership, User, utcnow
from ..service.accounts import consume_bootstrap, create_user_with_team, spent_token_file

router = APIRouter(tags=["auth"])


class SignupBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(min_length=8, max_length=256)
    name: str = Field(default="", max_length=200)


class LoginBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=256)


class SwitchTeamBody(BaseModel):
    team_id: str


class AuthResponse(BaseModel):
    token: str
    user_id: str
    team_id: str
    email: str
    name: str


def token_response(request: Request, user: User, team_id: str, role: str) -> AuthResponse:
    token = request.app.state.tokens.issue(Claims(user.id, team_id, role, user.email))
    return AuthResponse(token=token, user_id=user.id, team_id=team_id, email=user.email, name=user.name)


@router.post("/v1/auth/signup", status_code=201, response_model=AuthResponse)
async def signup(body: SignupBody, request: Request, session: Db) -> AuthResponse:
    """Create an account and its default team. Self-hosted: active at once (no email round trip)."""
    return await _new_account(request, session, body, admin=False)


async def _new_account(
    request: Request, session: AsyncSession, body: SignupBody, admin: bool
) -> AuthResponse:
    """An account and its default team (a platform admin when `admin`), recorded and committed."""
    user, team = await create_user_with_team(session, body.email, body.password, body.name, admin=admin)
    _audit.record(
        session,
        team_id=team.id,
        actor_type="user",
        actor_id=user.id,
        actor_name=user.email,
        resource_type="user",
        resource_id=user.id,
        action="bootstrap_admin" if admin else "signup",
    )
    await session.commit()
    return token_response(request, user, team.id, "owner")


def _client(request: Request) -> str:
    """The client's address (a trusted proxy's `X-Forwarded-For` already applied by the server)."""
    return (request.client.host if request.client else "")[:64]


async def _throttled(session: AsyncSession, settings: Settings, email: str, address: str) -> bool:
    """Whether failed logins went over a limit: for this email from this address, from this address
    (any emails: spraying), or for this email from everywhere (a guess spread over addresses)."""
    since = utcnow() - timedelta(seconds=settings.login_window_s)
    for where, allowed in (
        ((LoginFailure.email == email, LoginFailure.address == address), settings.login_attempts),
        ((LoginFailure.address == address,), settings.login_attempts_per_address),
        ((LoginFailure.email == email,), settings.login_attempts_per_email),
    ):
        failures = await session.scalar(
            select(func.count()).select_from(LoginFailure).where(LoginFailure.at > since, *where)
        )
        if (failures or 0) >= allowed:
            return True
    return False


@router.post("/v1/auth/login", response_model=AuthResponse)
async def login(body: LoginBody, request: Request, session: Db) -> AuthResponse:
    email, address = body.email.strip().lower(), _client(request)
    settings: Settings = request.app.state.settings
    if await _throttled(session, settings, email, address):
        raise _errors.ApiError(
            429, "rate_limited", "too many failed logins: try again in a few minutes"
        ).with_headers({"Retry-After": str(settings.login_window_s)})
    user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
    if not verify_password(user.password_hash if user else DUMMY_HASH, body.password) or user is None:
        session.add(LoginFailure(email=email, address=address))
        await session.commit()
        raise _errors.unauthorized("wrong email or password")
    if user.status != "active":
        raise _errors.ApiError(403, "account_disabled", "this account is disabled")
    await session.execute(
        delete(LoginFailure).where(LoginFailure.email == email, LoginFailure.address == address)
    )
    member = (
        (
            await session.execute(
                select(Membership).where(Membership.user_id == user.id).order_by(Membership.is_default.desc())
            )
        )
        .scalars()
        .first()
    )
    if member is None:
        raise _errors.ApiError(403, "no_team", "this account belongs to no team")
    await session.commit()
    return token_response(request, user, member.team_id, member.role)


@router.post("/v1/auth/switch-team", response_model=AuthResponse)
async def switch_team(
    body: SwitchTeamBody, request: Request, caller: UserCaller, session: Db
) -> AuthResponse:
    assert caller.user_id is not None
    member = await session.get(Membership, (body.team_id, caller.user_id))
    if member is None:
        raise _errors.not_found(f"team {body.team_id}")
    user = await session.get(User, caller.user_id)
    assert user is not None
    return token_response(request, user, member.team_id, member.role)


@router.get("/v1/me")
async def me(caller: UserCaller, session: Db) -> dict[str, object]:
    user = await session.get(User, caller.user_id)
    assert user is not None
    return {
        "user_id": user.id,
        "name": user.name,
        "email": user.email,
        "has_password": True,
        "providers": [],
        "team_id": caller.team_id,
        "role": caller.role,
    }


class BootstrapBody(SignupBody):
    #: The one-time token in `<data dir>/bootstrap-token` of the control plane that made it.
    token: str = Field(min_length=1, max_length=128)


@router.post("/v1/admin/bootstrap", status_code=201, response_model=AuthResponse, tags=["admin"])
async def bootstrap(body: BootstrapBody, request: Request, session: Db) -> AuthResponse:
    """The platform's first admin: an account (with its default team) made a platform admin by the
    one-time bootstrap token. Works once; 401 for any other token."""
    await consume_bootstrap(session, body.token)
    made = await _new_account(request, session, body, admin=True)
    spent_token_file(request.app.state.settings.data_dir).unlink(missing_ok=True)  # spent: no use to keep
    return made
