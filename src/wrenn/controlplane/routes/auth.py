"""Sign-up, login, team switching and the caller's own account (`service.AccountService`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .._deps import Accounts, UserCaller
from .._limits import client_address
from ..service.accounts import AuthResponse, BootstrapBody, LoginBody, Pending, SignupBody, SwitchTeamBody

router = APIRouter(tags=["auth"])


class PendingActivation(BaseModel):
    user_id: str
    email: str
    message: str
    activation_required: bool = True


@router.post(
    "/v1/auth/signup",
    status_code=201,
    response_model=AuthResponse,
    responses={202: {"model": PendingActivation, "description": "activation by e-mail required"}},
)
async def signup(body: SignupBody, accounts: Accounts) -> Any:
    """Create an account and its default team: 201 with a token, or, where the operator requires
    activation, 202: the account signs in once the link e-mailed to it is followed."""
    done = await accounts.signup(body)
    if isinstance(done, Pending):
        return JSONResponse(PendingActivation(**asdict(done)).model_dump(), status_code=202)
    return AuthResponse(**asdict(done))


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
