"""Account e-mail end to end: activation and password reset through a real SMTP server the test starts
(aiosmtpd, STARTTLS and implicit TLS, login required), reading the mail it received; and what the flows
say when no SMTP server is configured. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from wrenn.controlplane import Settings, create_app

from ._smtp import Inbox, smtp_server
from .test_accounts import auth, signup

# the implicit-TLS server takes logins on a connection that is TLS from its first byte
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture(params=["starttls", "tls"])
def inbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Inbox]:
    with smtp_server(tmp_path, request.param) as server:
        yield server


def _app(database_url: str, tmp_path: Path, inbox: Inbox, **more: object) -> TestClient:
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path / "cp",
        monitor_interval_s=3600,
        **inbox.settings(),
        **more,
    )  # type: ignore[arg-type]
    return TestClient(create_app(settings))


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    page = message.get_body(preferencelist=("html",))
    assert text is not None and page is not None, "every e-mail has a text and an HTML part"
    return text.get_content(), page.get_content()


def _link(message: EmailMessage, page: str) -> str:
    text, html = _parts(message)
    found = re.search(rf"https://wrenn\.example\.com/{page}\?token=([0-9a-f]{{64}})", text)
    assert found is not None, text
    assert found.group(0) in html
    return found.group(1)


def test_activation_by_email(database_url: str, tmp_path: Path, inbox: Inbox) -> None:
    with _app(database_url, tmp_path, inbox, require_activation=True) as api:
        r = api.post(
            "/v1/auth/signup", json={"email": "Ada@Example.com", "password": "correct horse", "name": "Ada"}
        )
        assert r.status_code == 202, r.text
        assert r.json()["activation_required"] is True and "token" not in r.json()
        refused = api.post("/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "account_not_activated")

        [mail] = inbox.wait(1)
        assert mail["To"] == "ada@example.com" and mail["Subject"] == "Activate your Wrenn account"
        assert "wrenn@example.com" in mail["From"] and mail["Message-ID"].endswith("@example.com>")
        assert inbox.envelopes[0][1] == ["ada@example.com"]
        token = _link(mail, "activate")

        activated = api.post("/v1/auth/activate", json={"token": token})
        assert activated.status_code == 200, activated.text
        me = api.get("/v1/me", headers=auth(activated.json()["token"]))
        assert me.status_code == 200 and me.json()["email"] == "ada@example.com"
        again = api.post("/v1/auth/activate", json={"token": token})
        assert again.status_code == 401  # single-use
        login = api.post("/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
        assert login.status_code == 200


def test_password_reset_by_email(database_url: str, tmp_path: Path, inbox: Inbox) -> None:
    with _app(database_url, tmp_path, inbox) as api:
        account = signup(api, "ada@example.com")
        old = auth(account["token"])
        known = api.post("/v1/me/password/reset", json={"email": "ada@example.com"})
        unknown = api.post("/v1/me/password/reset", json={"email": "nobody@example.com"})
        assert known.status_code == unknown.status_code == 202
        assert known.json() == unknown.json()  # no account enumeration
        [mail] = inbox.wait(1)
        assert mail["To"] == "ada@example.com" and mail["Subject"] == "Reset your Wrenn password"
        token = _link(mail, "reset-password")

        short = api.post("/v1/me/password/reset/confirm", json={"token": token, "new_password": "short"})
        assert short.status_code == 400
        done = api.post(
            "/v1/me/password/reset/confirm", json={"token": token, "new_password": "battery staple"}
        )
        assert done.status_code == 204, done.text
        assert api.get("/v1/me", headers=old).status_code == 401  # every session signed out
        assert (
            api.post(
                "/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"}
            ).status_code
            == 401
        )
        assert (
            api.post(
                "/v1/auth/login", json={"email": "ada@example.com", "password": "battery staple"}
            ).status_code
            == 200
        )
        reused = api.post(
            "/v1/me/password/reset/confirm", json={"token": token, "new_password": "another one"}
        )
        assert reused.status_code == 401

        notice = inbox.wait(2)[1]  # the "password changed" notice
        assert notice["Subject"] == "Your Wrenn password was changed" and notice["To"] == "ada@example.com"
        assert "reset your password" in _parts(notice)[0]
        assert len(inbox.received) == 2  # nothing went to the unknown address


def test_changing_the_password_and_deleting_the_account_send_notices(
    database_url: str, tmp_path: Path, inbox: Inbox
) -> None:
    with _app(database_url, tmp_path, inbox) as api:
        jwt = auth(signup(api, "ada@example.com")["token"])
        changed = api.post("/v1/me/password", json={"current_password": "correct horse", "new_password": "battery staple"},
                           headers=jwt)  # fmt: skip
        assert changed.status_code == 200
        assert inbox.wait(1)[0]["Subject"] == "Your Wrenn password was changed"
        fresh = auth(changed.json()["token"])
        deleted = api.request("DELETE", "/v1/me", json={"confirmation": "ada@example.com"}, headers=fresh)
        assert deleted.status_code == 202, deleted.text
        notice = inbox.wait(2)[1]
        assert notice["Subject"] == "Your Wrenn account was deleted"
        assert deleted.json()["delete_after"][:10] in _parts(notice)[0]


def test_without_smtp_the_flows_say_so(api: TestClient, settings: Settings) -> None:
    signup(api, "ada@example.com")
    for path in ("/v1/me/password/reset", "/v1/auth/activate/resend"):
        r = api.post(path, json={"email": "ada@example.com"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "email_disabled", r.text
        assert "SMTP" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="SMTP_HOST"):
        create_app(
            Settings(database_url=settings.database_url, data_dir=settings.data_dir, require_activation=True)
        )
    with pytest.raises(ValueError, match="WRENN_PUBLIC_URL"):
        create_app(Settings(database_url=settings.database_url, smtp_host="127.0.0.1", smtp_from="a@b.c"))
