"""Sign-in with identity providers (GitHub, OpenID Connect): the browser's round trip through the provider,
and linking a provider to the signed-in account (`service.IdentityService`). The callback signs the
browser in with the dashboard's session cookie; tokens never travel in URLs."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel
from starlette.responses import Response

from .. import _session
from .._deps import Identities, UserCaller
from ..service import identity
from ..service.identity import COOKIE, ERROR_PAGES, FLOW_TTL_S, FlowError, safe_next

router = APIRouter(tags=["auth"])
log = logging.getLogger("wrenn.controlplane.identity")

Next = Query(
    default=None, alias="next", max_length=512, description="a path on this site to go to afterwards"
)


class ProviderOut(BaseModel):
    id: str
    name: str
    kind: str


class AuthUrl(BaseModel):
    auth_url: str


def _remember(response: Response, state: str) -> None:
    """The browser's half of the flow. `SameSite=Lax`: the provider sends the browser back with a
    top-level navigation from its own site, which a `Strict` cookie would not come with."""
    response.set_cookie(
        COOKIE, state, max_age=FLOW_TTL_S, path="/", secure=True, httponly=True, samesite="lax"
    )


@router.get("/v1/auth/providers", response_model=list[ProviderOut])
async def providers(request: Request) -> list[ProviderOut]:
    """The identity providers this Wrenn signs in with (the sign-in page's buttons)."""
    configured = request.app.state.settings.identity_providers
    return [ProviderOut(id=p.id, name=p.display_name or p.id, kind=p.kind) for p in configured]


@router.get("/v1/auth/oauth/{provider}", status_code=302, response_class=RedirectResponse)
async def start(provider: str, identities: Identities, next_: str | None = Next) -> Response:
    """Go to the provider to sign in (or up). 404 `provider_not_found`; 400 for a `next` that is not a
    path on this site; 502 `provider_unreachable`."""
    url, state = await identities.start(provider, identity.LOGIN, safe_next(next_))
    response = RedirectResponse(url, status_code=302)
    _remember(response, state)
    return response


@router.get("/v1/me/providers/{provider}/connect", response_model=AuthUrl)
async def connect(
    provider: str, caller: UserCaller, identities: Identities, next_: str | None = Next
) -> Response:
    """The provider's URL to link it to the caller's account (the browser goes there next)."""
    url, state = await identities.start(provider, identity.LINK, safe_next(next_), user_id=caller.user_id)
    response = JSONResponse(AuthUrl(auth_url=url).model_dump())
    _remember(response, state)
    return response


@router.get("/v1/auth/oauth/{provider}/callback", status_code=302, response_class=RedirectResponse)
async def callback(
    provider: str,
    request: Request,
    identities: Identities,
    state: str = Query(default="", max_length=256),
    code: str | None = Query(default=None, max_length=2048),
    error: str | None = Query(default=None, max_length=200),
) -> Response:
    """Where the provider sends the browser back: signs it in (the session cookie) and goes on to the
    `next` path, or to the dashboard's sign-in (or settings) page with `?error=<code>`: `invalid_state`,
    `access_denied`, `missing_code`, `exchange_failed`, `provider_unreachable`, `email_unverified`,
    `email_taken`, `identity_taken`, `already_linked`, `account_disabled`."""
    identities.provider(provider)  # 404 for a provider that is not configured
    intent = await identities.intent_of(state)
    try:
        outcome = await identities.finish(provider, state, request.cookies.get(COOKIE), code, error)
    except FlowError as exc:
        log.info("sign-in with a provider failed", extra={"provider": provider, "code": exc.code})
        failed = RedirectResponse(f"{ERROR_PAGES[intent]}?{urlencode({'error': exc.code})}", status_code=302)
        failed.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return failed
    done = RedirectResponse(outcome.next_path, status_code=302)
    done.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    _session.set_cookie(done, outcome.issued.token, request.app.state.settings.jwt_ttl_s)
    return done
