"""Sign-up, login, team switching and the caller's own account (`service.AccountService`)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from pydantic import BaseModel

from .._deps import Accounts, UserCaller
from ..service.accounts import LoginBody, SignupBody, SwitchTeamBody

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
async def login(body: LoginBody, accounts: Accounts) -> AuthResponse:
    return AuthResponse(**asdict(await accounts.login(body)))


@router.post("/v1/auth/switch-team", response_model=AuthResponse)
async def switch_team(body: SwitchTeamBody, caller: UserCaller, accounts: Accounts) -> AuthResponse:
    return AuthResponse(**asdict(await accounts.switch_team(caller, body.team_id)))


@router.get("/v1/me")
async def me(caller: UserCaller, accounts: Accounts) -> dict[str, object]:
    return await accounts.me(caller)
