"""Account e-mail as an attacker meets it, through a real SMTP server: reset and activation links are
single-use, expire, are stored hashed and work only for their purpose; a reset request answers the same
for every address and cannot be used to bomb a mailbox; guessing the current password is throttled. On
SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.controlplane._db import run
from tests.controlplane._smtp import Inbox, smtp_server
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane.db import EmailToken, utcnow

from .conftest import account, rows


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    with smtp_server(tmp_path, "starttls") as server:
        yield server


@pytest.fixture
def cp(database_url: str, tmp_path: Path, inbox: Inbox) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, data_dir=tmp_path / "cp", monitor_interval_s=3600,
                        login_attempts=3, **inbox.settings())  # type: ignore[arg-type]  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def _token(inbox: Inbox, index: int, page: str) -> str:
    text = inbox.wait(index + 1)[index].get_body(preferencelist=("plain",))
    assert text is not None
    found = re.search(rf"/{page}\?token=([0-9a-f]{{64}})", text.get_content())
    assert found is not None
    return found.group(1)


def test_a_reset_link_works_once_and_only_for_resets(cp: TestClient, inbox: Inbox) -> None:
    account(cp, "ada@example.com")
    assert cp.post("/v1/me/password/reset", json={"email": "ada@example.com"}).status_code == 202
    token = _token(inbox, 0, "reset-password")
    assert token not in repr(rows(cp))  # stored hashed
    assert cp.post("/v1/auth/activate", json={"token": token}).status_code == 401  # not an activation link
    confirm = {"token": token, "new_password": "battery staple"}
    assert cp.post("/v1/me/password/reset/confirm", json=confirm).status_code == 204
    assert (
        cp.post("/v1/me/password/reset/confirm", json=confirm | {"new_password": "evil password"}).status_code
        == 401
    )
    assert (
        cp.post("/v1/auth/login", json={"email": "ada@example.com", "password": "battery staple"}).status_code
        == 200
    )


def test_an_expired_reset_link_is_refused(cp: TestClient, inbox: Inbox) -> None:
    account(cp, "ada@example.com")
    cp.post("/v1/me/password/reset", json={"email": "ada@example.com"})
    token = _token(inbox, 0, "reset-password")

    async def expire(session: object) -> None:
        await session.execute(update(EmailToken).values(expires_at=utcnow() - timedelta(seconds=1)))  # type: ignore[attr-defined]

    run(cp, expire)  # type: ignore[arg-type]
    r = cp.post("/v1/me/password/reset/confirm", json={"token": token, "new_password": "battery staple"})
    assert r.status_code == 401
    assert (
        cp.post("/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse"}).status_code
        == 200
    )


@pytest.mark.parametrize("token", ["", "0" * 64, "x" * 128, "../../etc"])
def test_guessed_tokens_change_nothing(cp: TestClient, token: str) -> None:
    account(cp, "ada@example.com")
    before = rows(cp)
    for path, body in (("/v1/me/password/reset/confirm", {"token": token, "new_password": "battery staple"}),
                       ("/v1/auth/activate", {"token": token})):  # fmt: skip
        assert cp.post(path, json=body).status_code in (400, 401)
    assert rows(cp) == before


def test_resets_tell_nothing_and_cannot_bomb_a_mailbox(cp: TestClient, inbox: Inbox) -> None:
    account(cp, "ada@example.com")
    answers = {
        cp.post("/v1/me/password/reset", json={"email": email}).text
        for email in ("ada@example.com", "nobody@example.com", "not an address", "ADA@example.com")
        for _ in range(2)
    }
    assert len(answers) == 1  # the same answer whatever the address
    inbox.wait(3)
    assert len(inbox.received) == 3  # at most 3 links an hour reach one account
    assert {m["To"] for m in inbox.received} == {"ada@example.com"}


def test_guessing_the_current_password_is_throttled(cp: TestClient) -> None:
    ada = account(cp, "ada@example.com")
    for _ in range(3):
        r = cp.post(
            "/v1/me/password",
            json={"current_password": "guess guess", "new_password": "x" * 8},
            headers=ada.jwt,
        )
        assert r.status_code == 403
    r = cp.post(
        "/v1/me/password",
        json={"current_password": "correct horse", "new_password": "x" * 8},
        headers=ada.jwt,
    )
    assert r.status_code == 429 and r.headers["retry-after"]
