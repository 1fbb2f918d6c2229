"""Sign-up, login, team switching and the caller's own account (`service.AccountService`)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from pydantic import BaseModel

from .._deps import Accounts, UserCaller
from .._limits import client_address
from ..service.accounts import BootstrapBody, LoginBody, SignupBody, SwitchTeamBody

router = APIRouter(tags=["auth"])


class AuthResponse(BaseModel):
    token: str
    user_id: str
    team_id: str
    email: str
    name: str


@router.post("/v1/auth/signup", status_code=201, response_model=AuthResponse)
async def signup(body: SignupBody, accounts: Accounts) -> AuthResponse:
    """Create an account and its default team. Self-hosted: active at once (no email round trip)."""
    return AuthResponse(**asdict(await accounts.signup(body)))


@router.post("/v1/auth/login", response_model=AuthResponse)
async def login(body: LoginBody, request: Request, accounts: Accounts) -> AuthResponse:
    """429 (with `Retry-After`) after too many failures for the email from this address, from this
    address, or for the email from anywhere."""
    return AuthResponse(**asdict(await accounts.login(body, client_address(request.scope))))


@router.post("/v1/admin/bootstrap", status_code=201, response_model=AuthResponse, tags=["admin"])
async def bootstrap(body: BootstrapBody, accounts: Accounts) -> AuthResponse:
    """The platform's first admin: an account (with its default team) made a platform admin by the
    one-time bootstrap token in the data directory. Works once; 401 for any other token."""
    return AuthResponse(**asdict(await accounts.bootstrap(body)))


@router.post("/v1/auth/switch-team", response_model=AuthResponse)
async def switch_team(body: SwitchTeamBody, caller: UserCaller, accounts: Accounts) -> AuthResponse:
    return AuthResponse(**asdict(await accounts.switch_team(caller, body.team_id)))


@router.get("/v1/me")
async def me(caller: UserCaller, accounts: Accounts) -> dict[str, object]:
    return await accounts.me(caller)
