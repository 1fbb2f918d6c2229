"""The dashboard's own routes: a session cookie instead of a token in page scripts, and file downloads
the browser streams to disk. The cookie's rules are in `_session`; every other route is the public API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from .. import _errors, _session
from .._deps import Accounts, Capsules, Db, Profiles, UserCaller, jwt_principal
from .._limits import client_address
from ..service import Guest
from ..service.accounts import ActivateBody, Issued, LoginBody, Pending, SignupBody, SwitchTeamBody
from ..service.profile import PasswordChange

router = APIRouter(tags=["dashboard"])


class Session(BaseModel):
    user_id: str
    team_id: str
    email: str
    name: str


def _require_dashboard(request: Request) -> None:
    """Login, sign-up and logout only from the dashboard's own scripts (no login CSRF)."""
    if request.headers.get(_session.HEADER) != "1":
        raise _errors.forbidden(f"send {_session.HEADER}: 1 (this route is the dashboard's)")


def _started(request: Request, issued: Issued, status: int = 200) -> JSONResponse:
    body = Session(user_id=issued.user_id, team_id=issued.team_id, email=issued.email, name=issued.name)
    response = JSONResponse(body.model_dump(), status_code=status)
    _session.set_cookie(response, issued.token, request.app.state.settings.jwt_ttl_s)
    return response


@router.get("/v1/dashboard/session")
async def current(request: Request, session: Db, accounts: Accounts) -> dict[str, Any]:
    """`{"me": <GET /v1/me>, "sandbox_domain": ...}` for a valid session (the domain capsule ports are
    served under, "" for any: the dashboard shows their URLs), else `{"me": null}` (200 either way: the
    dashboard asks this before anything else, and a visitor without a session is no error)."""
    token = _session.session_token(request)
    if token is None:
        return {"me": None}
    try:
        caller = await jwt_principal(token, session, request.app.state.tokens)
    except _errors.ApiError:
        return {"me": None}
    return {"me": await accounts.me(caller), "sandbox_domain": request.app.state.settings.sandbox_domain}


@router.post("/v1/dashboard/session", response_model=Session)
async def login(body: LoginBody, request: Request, accounts: Accounts) -> JSONResponse:
    """`/v1/auth/login`, the token set as the session cookie instead of returned."""
    _require_dashboard(request)
    return _started(request, await accounts.login(body, client_address(request.scope)))


@router.post("/v1/dashboard/signup", status_code=201, response_model=Session)
async def signup(body: SignupBody, request: Request, accounts: Accounts) -> JSONResponse:
    """As `/v1/auth/signup`: 201 and the cookie, or 202 `{message, activation_required}` without one."""
    _require_dashboard(request)
    done = await accounts.signup(body)
    if isinstance(done, Pending):
        return JSONResponse({"message": done.message, "activation_required": True}, status_code=202)
    return _started(request, done, status=201)


@router.post("/v1/dashboard/activate", response_model=Session)
async def activate(body: ActivateBody, request: Request, accounts: Accounts) -> JSONResponse:
    """`/v1/auth/activate`, signed in with the session cookie."""
    _require_dashboard(request)
    return _started(request, await accounts.activate(body.token))


@router.post("/v1/dashboard/password", response_model=Session)
async def change_password(
    body: PasswordChange, request: Request, caller: UserCaller, profiles: Profiles
) -> JSONResponse:
    """`/v1/me/password`: every other session is signed out, this one goes on with a new cookie."""
    return _started(request, await profiles.change_password(caller, body))


@router.post("/v1/dashboard/switch-team", response_model=Session)
async def switch_team(
    body: SwitchTeamBody, request: Request, caller: UserCaller, accounts: Accounts
) -> JSONResponse:
    return _started(request, await accounts.switch_team(caller, body.team_id))


@router.delete("/v1/dashboard/session", status_code=204)
async def logout(request: Request, session: Db, profiles: Profiles) -> Response:
    """Sign the session out: its token is revoked (whoever holds a copy) and the cookie cleared."""
    _require_dashboard(request)
    token = _session.session_token(request)
    if token is not None:
        try:
            caller = await jwt_principal(token, session, request.app.state.tokens)
        except _errors.ApiError:
            caller = None  # expired or revoked already: nothing to revoke
        if caller is not None:
            await profiles.sign_out(caller, everywhere=False)
    response = Response(status_code=204)
    _session.clear_cookie(response)
    return response


@router.get("/v1/dashboard/capsules/{capsule_id}/files/download")
async def download(
    capsule_id: str,
    request: Request,
    session: Db,
    capsules: Capsules,
    path: str = Query(min_length=1, max_length=4096),
) -> StreamingResponse:
    """A file of a capsule as an attachment, streamed (as `files/stream/read`), for a same-origin
    navigation carrying the session cookie; nothing else is accepted here."""
    token = _session.download_token(request)
    if token is None:
        raise _errors.unauthorized("downloads need the dashboard's session (a same-origin navigation)")
    caller = await jwt_principal(token, session, request.app.state.tokens)
    capsule, host = await capsules.running(caller.team_id, capsule_id)
    chunks = await Guest(capsules.agents, capsule, host).read_stream(path)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "download"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    headers = {
        "content-disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}",
        "x-content-type-options": "nosniff",
    }
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
