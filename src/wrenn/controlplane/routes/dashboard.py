"""The dashboard's own routes: a session cookie instead of a token in page scripts, and file downloads
the browser streams to disk. The cookie's rules are in `_session`; every other route is the public API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from .. import _errors, _session
from .._deps import Db, UserCaller, _from_jwt
from . import auth, capsules

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


def _started(request: Request, found: auth.AuthResponse) -> JSONResponse:
    body = Session(user_id=found.user_id, team_id=found.team_id, email=found.email, name=found.name)
    response = JSONResponse(body.model_dump())
    _session.set_cookie(response, found.token, request.app.state.settings.jwt_ttl_s)
    return response


@router.get("/v1/dashboard/session")
async def current(request: Request, session: Db) -> dict[str, Any]:
    """`{"me": <GET /v1/me>}` for a valid session, else `{"me": null}` (200 either way: the dashboard asks
    this before anything else, and a visitor without a session is no error)."""
    token = _session.session_token(request)
    if token is None:
        return {"me": None}
    try:
        caller = await _from_jwt(token, session, request.app.state.tokens)
    except _errors.ApiError:
        return {"me": None}
    return {"me": await auth.me(caller, session)}


@router.post("/v1/dashboard/session", response_model=Session)
async def login(body: auth.LoginBody, request: Request, session: Db) -> JSONResponse:
    """`/v1/auth/login`, the token set as the session cookie instead of returned."""
    _require_dashboard(request)
    return _started(request, await auth.login(body, request, session))


@router.post("/v1/dashboard/signup", status_code=201, response_model=Session)
async def signup(body: auth.SignupBody, request: Request, session: Db) -> JSONResponse:
    _require_dashboard(request)
    response = _started(request, await auth.signup(body, request, session))
    response.status_code = 201
    return response


@router.post("/v1/dashboard/switch-team", response_model=Session)
async def switch_team(
    body: auth.SwitchTeamBody, request: Request, caller: UserCaller, session: Db
) -> JSONResponse:
    return _started(request, await auth.switch_team(body, request, caller, session))


@router.delete("/v1/dashboard/session", status_code=204)
async def logout(request: Request) -> Response:
    """Forget the cookie (the JWT itself stays valid until it expires: tokens are stateless)."""
    _require_dashboard(request)
    response = Response(status_code=204)
    _session.clear_cookie(response)
    return response


@router.get("/v1/dashboard/capsules/{capsule_id}/files/download")
async def download(
    capsule_id: str, request: Request, session: Db, path: str = Query(min_length=1, max_length=4096)
) -> StreamingResponse:
    """A file of a capsule as an attachment, streamed (`files/stream/read`), for a same-origin navigation
    carrying the session cookie; nothing else is accepted here."""
    token = _session.download_token(request)
    if token is None:
        raise _errors.unauthorized("downloads need the dashboard's session (a same-origin navigation)")
    caller = await _from_jwt(token, session, request.app.state.tokens)
    response = await capsules.stream_read(capsule_id, capsules.PathBody(path=path), request, caller, session)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "download"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"
    response.headers["content-disposition"] = disposition
    response.headers["x-content-type-options"] = "nosniff"
    return response
