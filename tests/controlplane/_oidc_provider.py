"""A real OpenID Connect provider for tests, assembled from authlib's server components on Flask and served
over HTTP on loopback by werkzeug: discovery, an authorization endpoint with a sign-in form, the token
endpoint (authorization code grant, client_secret_basic or _post), ID tokens signed with RS256, JWKS and
userinfo. It is strict where a test needs it to be: PKCE S256 is required (a request without a
`code_challenge` is refused; authlib's `CodeChallenge` checks the verifier at the token endpoint), a nonce
is required, codes are single-use and the redirect URI must be the registered one.

A test may also make it misbehave on purpose (`tamper`): sign ID tokens with a key it does not publish,
put a wrong nonce or audience in them, or claim an unverified e-mail."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlencode

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import KeySet, RSAKey

from tests._serving import serving_wsgi


@dataclass
class Account:
    password: str
    sub: str
    email: str
    email_verified: bool = True
    name: str = ""


@dataclass
class _Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "email", "profile"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class _Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: Account
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class Provider:
    """The provider's state: one registered client, its accounts, codes and tokens (in memory)."""

    def __init__(self, redirect_uri: str) -> None:
        self.client = _Client("wrenn-test", secrets.token_urlsafe(16), redirect_uri)
        self.accounts: dict[str, Account] = {}
        self.codes: dict[str, _Code] = {}
        self.tokens: dict[str, tuple[Account, str]] = {}
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.rogue_key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.issuer = ""
        #: Misbehaviours a test switches on: "unpublished_key", "nonce", "audience", "issuer".
        self.tamper: set[str] = set()
        self.token_requests: list[dict[str, str]] = []

    def add(self, username: str, account: Account) -> None:
        self.accounts[username] = account

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


def _build(provider: Provider) -> flask.Flask:
    app = flask.Flask("wrenn-test-oidc")
    app.config["OAUTH2_ERROR_URIS"] = []

    class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def save_authorization_code(self, code: str, request: Any) -> None:
            data = request.payload.data
            provider.codes[code] = _Code(
                code=code, client_id=request.client.client_id, redirect_uri=request.payload.redirect_uri,
                scope=request.payload.scope, user=request.user, nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"), code_challenge_method=data.get("code_challenge_method"),
            )  # fmt: skip

        def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
            found = provider.codes.get(code)
            return found if found is not None and found.client_id == client.client_id else None

        def delete_authorization_code(self, authorization_code: _Code) -> None:
            provider.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: _Code) -> Account:
            return authorization_code.user

    class IdToken(OpenIDCode):  # type: ignore[misc]
        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return any(c.nonce == nonce for c in provider.codes.values())

        def resolve_client_private_key(self, client: _Client) -> RSAKey:
            return provider.rogue_key if "unpublished_key" in provider.tamper else provider.key

        def get_client_algorithm(self, client: _Client) -> str:
            return "RS256"

        def get_encode_header(self, client: _Client) -> dict[str, str]:
            return {"alg": "RS256", "kid": "k1"}

        def get_client_claims(self, client: _Client) -> dict[str, Any]:
            now = int(time.time())
            issuer = provider.issuer + ("/elsewhere" if "issuer" in provider.tamper else "")
            audience = "someone-else" if "audience" in provider.tamper else client.client_id
            return {"iss": issuer, "aud": [audience], "iat": now, "exp": now + 300}

        def get_authorization_code_claims(self, authorization_code: _Code) -> dict[str, Any]:
            claims = super().get_authorization_code_claims(authorization_code)
            if "nonce" in provider.tamper:
                claims["nonce"] = "not-the-one-sent"
            return claims

        def generate_user_info(self, user: Account, scope: str) -> UserInfo:
            info = UserInfo(sub=user.sub, name=user.name)
            if "email" in scope:
                info["email"], info["email_verified"] = user.email, user.email_verified
            return info

    def save_token(token: dict[str, Any], request: Any) -> None:
        provider.tokens[token["access_token"]] = (request.user, token.get("scope", ""))

    server = AuthorizationServer(app, query_client=lambda cid: provider.client if cid == provider.client.client_id
                                 else None, save_token=save_token)  # fmt: skip
    server.register_grant(CodeGrant, [CodeChallenge(required=True), IdToken(require_nonce=True)])

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Any:
        base = provider.issuer
        return flask.jsonify({
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })  # fmt: skip

    @app.get("/favicon.ico")
    def favicon() -> Any:
        return "", 204  # a browser asks for one on the sign-in page

    @app.get("/jwks")
    def jwks() -> Any:
        return flask.jsonify(KeySet([provider.key]).as_dict(private=False))

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        args = flask.request.args
        if args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
            return flask.jsonify({"error": "invalid_request", "error_description": "PKCE S256 required"}), 400
        if flask.request.method == "GET":
            # The sign-in page a person would see.
            return (
                f'<form method="post" action="/authorize?{escape(urlencode(args))}">'
                '<input name="username"><input name="password" type="password"><button>Sign in</button></form>'
            )
        account = provider.accounts.get(flask.request.form.get("username", ""))
        if account is None or account.password != flask.request.form.get("password"):
            return "wrong username or password", 401
        try:
            grant = server.get_consent_grant(end_user=account)
            return server.create_authorization_response(grant=grant, grant_user=account)
        except OAuth2Error as exc:
            return flask.jsonify({"error": exc.error, "error_description": exc.description}), 400

    @app.post("/token")
    def token() -> Any:
        provider.token_requests.append(dict(flask.request.form))
        return server.create_token_response()

    @app.get("/userinfo")
    def userinfo() -> Any:
        scheme, _, value = flask.request.headers.get("Authorization", "").partition(" ")
        found = provider.tokens.get(value) if scheme.lower() == "bearer" else None
        if found is None:
            return flask.jsonify({"error": "invalid_token"}), 401
        user, scope = found
        return flask.jsonify(dict(IdToken().generate_user_info(user, scope)))

    return app


@contextmanager
def running_provider(redirect_uri: str, host: str = "127.0.0.2") -> Iterator[Provider]:
    """The provider on `host` (a loopback address of its own, so that it is not a host agent's) and a
    free port, in a thread; stopped afterwards."""
    provider = Provider(redirect_uri)
    with serving_wsgi(_build(provider), host) as url:
        provider.issuer = url
        yield provider
