"""A stand-in for GitHub's OAuth app endpoints and REST API (what GitHub Enterprise Server serves at its own
address), for the GitHub sign-in test: `/login/oauth/authorize` (a sign-in form), `/login/oauth/access_token`
(checks the client's id and secret in the form, as GitHub documents it, the code, the redirect URI and
the PKCE verifier), `/api/user`, `/api/user/emails`."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from typing import Any
from urllib.parse import urlencode

import flask

from tests._serving import serving_wsgi


@contextmanager
def running_github(redirect_uri: str, host: str = "127.0.0.2") -> Iterator[dict[str, Any]]:
    app = flask.Flask("fake-github")
    state: dict[str, Any] = {"client_id": "gh-client", "client_secret": secrets.token_hex(8), "codes": {},
                             "tokens": {}, "user": {"id": 4242, "login": "octo", "name": "Octo Cat"},
                             "emails": [{"email": "octo@gh.example", "primary": True, "verified": True}]}  # fmt: skip

    @app.route("/login/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        args = flask.request.args
        if args.get("client_id") != state["client_id"] or args.get("redirect_uri") != redirect_uri:
            return "bad client", 400
        if flask.request.method == "GET":
            return f'<form method="post" action="/login/oauth/authorize?{escape(urlencode(args))}"></form>'
        code = secrets.token_hex(8)
        state["codes"][code] = args.get("code_challenge")
        return flask.redirect(f"{redirect_uri}?{urlencode({'code': code, 'state': args['state']})}")

    @app.post("/login/oauth/access_token")
    def token() -> Any:
        form = flask.request.form
        challenge = state["codes"].pop(form.get("code"), None)
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        client_ok = (form.get("client_id"), form.get("client_secret")) == (
            state["client_id"],
            state["client_secret"],
        )
        if (
            not client_ok
            or challenge is None
            or digest != challenge
            or form.get("redirect_uri") != redirect_uri
        ):
            return flask.jsonify({"error": "bad_verification_code"}), 200  # GitHub answers errors with 200
        access = secrets.token_hex(8)
        state["tokens"][access] = True
        return flask.jsonify(
            {"access_token": access, "token_type": "bearer", "scope": "read:user,user:email"}
        )

    def _authorized() -> bool:
        scheme, _, value = flask.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and value in state["tokens"]

    @app.get("/api/user")
    def user() -> Any:
        return (flask.jsonify(state["user"]), 200) if _authorized() else ("", 401)

    @app.get("/api/user/emails")
    def emails() -> Any:
        return (flask.jsonify(state["emails"]), 200) if _authorized() else ("", 401)

    with serving_wsgi(app, host) as url:
        state["url"] = url
        yield state
