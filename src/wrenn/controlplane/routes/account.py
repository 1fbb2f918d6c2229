"""The account's own routes: activation, password reset, settings (name, password, deletion), signing out,
linked identity providers (`service.AccountService`, `service.ProfileService`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from .._deps import Accounts, Profiles, UserCaller
from ..service.accounts import ActivateBody, AuthResponse, EmailBody, ResetConfirmBody
from ..service.profile import AccountDelete, PasswordChange, ProfileUpdate, SignOut

router = APIRouter(tags=["account"])


class Accepted(BaseModel):
    message: str


class Deleted(BaseModel):
    #: When the account is deleted for good (until then an operator can restore it).
    delete_after: datetime


@router.post("/v1/auth/activate", response_model=AuthResponse)
async def activate(body: ActivateBody, accounts: Accounts) -> AuthResponse:
    """Follow an activation link: the account becomes active; a token for its team. 401 for an unknown,
    used or expired link."""
    return AuthResponse(**asdict(await accounts.activate(body.token)))


@router.post("/v1/auth/activate/resend", status_code=202, response_model=Accepted)
async def resend_activation(body: EmailBody, accounts: Accounts) -> Accepted:
    """Send the activation e-mail again. The same answer for any address."""
    await accounts.resend_activation(body.email)
    return Accepted(message="if an account waits for activation at this address, an e-mail is on its way")


@router.post("/v1/me/password/reset", status_code=202, response_model=Accepted)
async def request_reset(body: EmailBody, accounts: Accounts) -> Accepted:
    """E-mail a single-use reset link (valid 15 minutes). The same answer whether or not the address has
    an account; 503 `email_disabled` when this Wrenn sends no e-mail."""
    await accounts.request_reset(body.email)
    return Accepted(message="if an account has this address, a reset link is on its way")


@router.post("/v1/me/password/reset/confirm", status_code=204)
async def confirm_reset(body: ResetConfirmBody, accounts: Accounts) -> Response:
    """Set a new password with the link's token; every session of the account is signed out. 401 for an
    unknown, used or expired token."""
    await accounts.confirm_reset(body)
    return Response(status_code=204)


@router.patch("/v1/me")
async def update_me(body: ProfileUpdate, caller: UserCaller, profiles: Profiles, accounts: Accounts) -> Any:
    await profiles.rename(caller, body)
    return await accounts.me(caller)


@router.post("/v1/me/password", response_model=AuthResponse)
async def change_password(body: PasswordChange, caller: UserCaller, profiles: Profiles) -> AuthResponse:
    """Change the password (`current_password` required if the account has one) or set a first one;
    every session is signed out and the answer is a new token. 403 `wrong_password`."""
    return AuthResponse(**asdict(await profiles.change_password(caller, body)))


@router.delete("/v1/me", status_code=202, response_model=Deleted)
async def delete_me(body: AccountDelete, caller: UserCaller, profiles: Profiles) -> Deleted:
    """Delete the account (`confirmation`: its e-mail). It stops working at once and is deleted for good,
    with the teams it owns, after the grace period. 409 `owns_shared_team`, `last_admin`."""
    return Deleted(delete_after=await profiles.delete(caller, body))


@router.post("/v1/auth/logout", status_code=204)
async def logout(body: SignOut, caller: UserCaller, profiles: Profiles) -> Response:
    """Revoke this token, or with `everywhere` every token of the account."""
    await profiles.sign_out(caller, body.everywhere)
    return Response(status_code=204)


@router.delete("/v1/me/providers/{provider}", status_code=204)
async def unlink_provider(provider: str, caller: UserCaller, profiles: Profiles) -> Response:
    """Unlink an identity provider; 409 `last_sign_in_method` if the account could not sign in then."""
    await profiles.unlink(caller, provider)
    return Response(status_code=204)
