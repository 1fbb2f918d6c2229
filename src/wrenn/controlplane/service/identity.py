"""Sign-in with identity providers: GitHub (OAuth 2.0) and any OpenID Connect provider by its discovery URL
(Google, Okta, Keycloak, Entra ID, ...). The protocol is authlib's (its Starlette client: discovery,
authorization URL with PKCE S256 and a nonce, the code exchange, ID token validation against the
provider's JWKS: signature, `iss`, `aud`, `exp`, `nonce`, `at_hash`); what is Wrenn's is below.

**State.** A flow's data (PKCE verifier, nonce, redirect URI, intent, where to go after) is kept in the
database (`oauth_flows`, keyed by the SHA-256 of `state`, the verifier sealed), so the callback may reach
any control plane. It is single-use (a conditional delete) and expires in 10 minutes. The browser that
started the flow holds `state` in the `__Host-wrenn_oauth` cookie (`Secure`, `HttpOnly`, `SameSite=Lax`:
it must come back on the provider's top-level redirect); a callback whose `state` is not that cookie's is
refused, so nobody can make a victim's browser finish the attacker's sign-in (login CSRF).

**Accounts.** A known (provider, subject) signs its user in. An unknown one creates an account (and its
team) from the provider's e-mail, only if the provider says the address is verified (OIDC
`email_verified`, GitHub's primary verified e-mail) or the operator trusts the provider's e-mails; an
address that already has an account is refused (`email_taken`): its owner links the provider from their
settings, signed in, so a provider never takes over an account by e-mail. Linking: the flow remembers
the signed-in user; a provider account linked to someone else is refused (`identity_taken`).

**Outbound requests.** Provider URLs are the operator's (settings), not a user's, but the discovery
document names further endpoints, so every request goes through the SSRF guard (`_ssrf`): public
addresses only, unless the operator allows a network (`WRENN_IDP_ALLOW_NETWORKS`, e.g. an intranet
Keycloak, or loopback in tests); host agents' addresses are always refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import authlib.deprecate
import httpx
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn._shared import dial

from .. import _errors, _ssrf
from .._security import Tokens
from .._settings import IdentityProvider, Settings
from ..db import Identity, OAuthFlow, User, UserStatus, as_utc, utcnow
from .accounts import EMAIL, Issued, create_user_with_team, default_membership, issue, record_user

with warnings.catch_warnings():  # authlib asks for `httpx2`; httpx (the same API) is what we ship
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App
    from joserfc.errors import JoseError

log = logging.getLogger("wrenn.controlplane.identity")

FLOW_TTL_S = 600
#: The browser's half of a flow: its `state`.
COOKIE = "__Host-wrenn_oauth"
LOGIN, LINK = "login", "link"
#: Where the dashboard shows the outcome of a sign-in or a link that failed (`?error=<code>`).
ERROR_PAGES = {LOGIN: "/login", LINK: "/dashboard/settings"}


class FlowError(Exception):
    """A sign-in that did not succeed, with the code the dashboard shows."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Outcome:
    issued: Issued
    next_path: str
    intent: str


@dataclass(frozen=True, slots=True)
class Profile:
    """Who the provider says signed in."""

    subject: str
    email: str
    email_verified: bool
    name: str


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in (never another site: no open redirect)."""
    if not value:
        return "/"
    parts = urlsplit(value)
    if (
        len(value) > 512
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        or parts.scheme
        or parts.netloc
    ):
        raise _errors.bad_request("next: a path on this site (starting with one '/') is expected")
    return value


def _hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def _verified(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


class IdentityService:
    def __init__(self, session: AsyncSession, tokens: Tokens, settings: Settings) -> None:
        self.session = session
        self.tokens = tokens
        self.settings = settings

    def provider(self, provider_id: str) -> IdentityProvider:
        for provider in self.settings.identity_providers:
            if provider.id == provider_id:
                return provider
        raise _errors.ApiError(
            404, "provider_not_found", f"no identity provider {provider_id!r} is configured"
        )

    def callback_url(self, provider: IdentityProvider) -> str:
        return f"{self.settings.public_url}/v1/auth/oauth/{provider.id}/callback"

    async def _client(self, provider: IdentityProvider) -> StarletteOAuth2App:
        """authlib's client for the provider, every connection through the SSRF guard."""
        guard = _ssrf.AddressGuard(
            blocked=await _ssrf.agent_addresses(self.session), allow=self.settings.idp_allow_networks
        )
        client_kwargs: dict[str, Any] = {
            "scope": provider.scopes,
            "code_challenge_method": "S256",
            "transport": dial.transport(_ssrf.GuardedBackend(guard)),
            "timeout": httpx.Timeout(15.0),
            "trust_env": False,
            "follow_redirects": False,
        }
        options: dict[str, Any] = {
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "client_kwargs": client_kwargs,
        }
        if provider.kind == "github":
            client_kwargs["token_endpoint_auth_method"] = "client_secret_post"  # noqa: S105 (a method's name) as GitHub documents it
            options |= {
                "authorize_url": f"{provider.github_url}/login/oauth/authorize",
                "access_token_url": f"{provider.github_url}/login/oauth/access_token",
                "api_base_url": f"{provider.github_api_url}/",
            }
        else:
            guard.check_url(provider.discovery_url)
            options["server_metadata_url"] = provider.discovery_url
        client = OAuth().register(provider.id, **options)
        assert isinstance(client, StarletteOAuth2App)
        return client

    async def start(
        self, provider_id: str, intent: str, next_path: str, user_id: str | None = None
    ) -> tuple[str, str]:
        """Begin a sign-in (or, for `user_id`, a link): the provider's authorization URL and the `state`
        the browser must keep (the `COOKIE`). 502 `provider_unreachable` if its discovery fails."""
        provider = self.provider(provider_id)
        client = await self._client(provider)
        redirect_uri = self.callback_url(provider)
        try:
            made = await client.create_authorization_url(redirect_uri)
        except (httpx.HTTPError, OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("identity provider unreachable", extra={"provider": provider.id, "error": str(exc)})
            raise _errors.ApiError(
                502, "provider_unreachable", f"the identity provider {provider.id} did not answer"
            ) from None
        data = {k: made[k] for k in ("code_verifier", "nonce") if k in made} | {"redirect_uri": redirect_uri}
        self.session.add(
            OAuthFlow(
                state_hash=_hash(made["state"]),
                provider=provider.id,
                intent=intent,
                user_id=user_id,
                data=json.dumps(data),
                next_path=next_path,
                expires_at=utcnow() + timedelta(seconds=FLOW_TTL_S),
            )
        )
        await self.session.commit()
        return str(made["url"]), str(made["state"])

    async def _claim(self, provider_id: str, state: str, held: str | None) -> OAuthFlow:
        """The flow `state` names, spent; FlowError(`invalid_state`) unless it is this browser's, unused,
        unexpired and for this provider."""
        same = bool(state and held) and hmac.compare_digest(state.encode(), (held or "").encode())
        if not state or len(state) > 256 or not same:
            raise FlowError("invalid_state", "the state is missing or is not this browser's")
        digest = _hash(state)
        flow = await self.session.get(OAuthFlow, digest)
        if flow is None:
            raise FlowError("invalid_state", "unknown or used state")
        spent = await self.session.execute(
            delete(OAuthFlow)
            .where(OAuthFlow.state_hash == digest)
            .execution_options(synchronize_session=False)
        )
        await self.session.commit()
        if getattr(spent, "rowcount", 0) != 1 or as_utc(flow.expires_at) <= utcnow():
            raise FlowError("invalid_state", "used or expired state")
        if flow.provider != provider_id:
            raise FlowError("invalid_state", "the state is another provider's")
        return flow

    async def intent_of(self, state: str | None) -> str:
        """The intent of the flow `state` names (to pick the page an error goes to), else `login`."""
        flow = await self.session.get(OAuthFlow, _hash(state)) if state and len(state) <= 256 else None
        return flow.intent if flow is not None else LOGIN

    async def finish(
        self, provider_id: str, state: str, held: str | None, code: str | None, error: str | None
    ) -> Outcome:
        """The provider's callback: check the state against the browser's, exchange the code (with the PKCE
        verifier), validate the ID token (nonce included), then sign in, sign up or link."""
        provider = self.provider(provider_id)
        flow = await self._claim(provider.id, state, held)
        if error:
            raise FlowError("access_denied", f"the provider answered {error[:100]}")
        if not code or len(code) > 2048:
            raise FlowError("missing_code")
        data = json.loads(flow.data)
        client = await self._client(provider)
        try:
            token = await client.fetch_access_token(
                redirect_uri=data["redirect_uri"], code=code, code_verifier=data.get("code_verifier")
            )
            profile = await self._profile(provider, client, token, data.get("nonce"))
        except (OAuthError, JoseError, ValueError, KeyError) as exc:
            log.warning("identity provider refused the sign-in", extra={"provider": provider.id,
                                                                       "error": str(exc)[:300]})  # fmt: skip
            raise FlowError("exchange_failed", str(exc)[:200]) from None
        except (httpx.HTTPError, OSError) as exc:
            log.warning("identity provider unreachable", extra={"provider": provider.id, "error": str(exc)})
            raise FlowError("provider_unreachable") from None
        if flow.intent == LINK:
            assert flow.user_id is not None
            user = await self._link(provider, profile, flow.user_id)
        else:
            user = await self._sign_in(provider, profile)
        member = await default_membership(self.session, user.id)
        issued = issue(self.tokens, user, member.team_id, member.role)
        await self.session.commit()
        return Outcome(issued=issued, next_path=flow.next_path, intent=flow.intent)

    async def _profile(
        self, provider: IdentityProvider, client: StarletteOAuth2App, token: dict[str, Any], nonce: str | None
    ) -> Profile:
        if provider.kind == "github":
            user = (await client.get("user", token=token)).raise_for_status().json()
            emails = (await client.get("user/emails", token=token)).raise_for_status().json()
            primary = next((e for e in emails if e.get("primary") and e.get("verified")), None)
            return Profile(
                subject=str(user["id"]),
                email=str(primary["email"]) if primary else "",
                email_verified=primary is not None,
                name=str(user.get("name") or user.get("login") or ""),
            )
        if "id_token" not in token or not nonce:
            raise ValueError("the provider returned no ID token")
        claims = dict(await client.parse_id_token(token, nonce=nonce))
        if "email" not in claims:
            info = dict(await client.userinfo(token=token))
            if info.get("sub") != claims.get("sub"):
                raise ValueError("the userinfo answer is about another subject")
            claims = info | claims
        if not claims.get("sub"):
            raise ValueError("the ID token names no subject")
        return Profile(
            subject=str(claims["sub"]),
            email=str(claims.get("email") or ""),
            email_verified=provider.trust_email or _verified(claims.get("email_verified")),
            name=str(claims.get("name") or claims.get("preferred_username") or ""),
        )

    async def _identity(self, provider: IdentityProvider, subject: str) -> Identity | None:
        return await self.session.get(Identity, (provider.id, subject[:255]))

    async def _sign_in(self, provider: IdentityProvider, profile: Profile) -> User:
        identity = await self._identity(provider, profile.subject)
        if identity is not None:
            user = await self.session.get(User, identity.user_id)
            assert user is not None
            if user.status != UserStatus.ACTIVE:
                raise FlowError("account_disabled")
            record_user(self.session, user, None, "login", provider=provider.id)
            return user
        email = profile.email.strip().lower()
        if not email or not EMAIL.match(email) or not profile.email_verified:
            raise FlowError("email_unverified", "the provider gave no verified e-mail address")
        if (await self.session.execute(select(User.id).where(User.email == email))).first() is not None:
            raise FlowError("email_taken", "an account has this e-mail: sign in and link the provider")
        user, team = await create_user_with_team(self.session, email, None, profile.name[:200])
        self.session.add(Identity(provider=provider.id, subject=profile.subject[:255], user_id=user.id,
                                  email=email))  # fmt: skip
        record_user(self.session, user, team.id, "signup", provider=provider.id)
        return user

    async def _link(self, provider: IdentityProvider, profile: Profile, user_id: str) -> User:
        user = await self.session.get(User, user_id)
        if user is None or user.status != UserStatus.ACTIVE:
            raise FlowError("account_disabled")
        identity = await self._identity(provider, profile.subject)
        if identity is not None and identity.user_id != user.id:
            raise FlowError("identity_taken", "this provider account is linked to another Wrenn account")
        if identity is None:
            linked = await self.session.execute(
                select(Identity).where(Identity.user_id == user.id, Identity.provider == provider.id)
            )
            if linked.first() is not None:
                raise FlowError("already_linked", "unlink the other account of this provider first")
            self.session.add(Identity(provider=provider.id, subject=profile.subject[:255], user_id=user.id,
                                      email=profile.email[:320]))  # fmt: skip
            record_user(self.session, user, None, "link_provider", provider=provider.id)
        return user
