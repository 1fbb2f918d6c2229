"""Attacks on channels and on `/metrics`, in-process (SQLite and PostgreSQL) over the recording agent:
another team's channel is not there (404) and nothing of it changes; members who are not the team's
owner or admin change nothing; a webhook URL the control plane must not reach is refused (400) before
anything is sent or saved; secrets are sealed at rest; `/metrics` opens to the scrape token alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.controlplane._db import run
from tests.controlplane._receiver import Receiver, receiver
from wrenn.controlplane import create_app

from ._fake_agent import FakeAgent
from .conftest import account, api_key, make_settings, rows

METRICS_TOKEN = "m" * 40


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as found:
        yield found


@pytest.fixture
def cp(database_url: str, tmp_path: Path, fake_agent: FakeAgent) -> Iterator[TestClient]:
    """Webhooks may go to loopback (the test receiver), as an operator may allow an internal network."""
    settings = make_settings(
        database_url, tmp_path / "cp", local_agents=(fake_agent.url,), webhook_allow_networks=("127.0.0.0/8",),
        metrics_token=METRICS_TOKEN,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def _channel(cp: TestClient, jwt: dict[str, str], url: str) -> dict[str, str]:
    r = cp.post("/v1/channels", json={"name": "a", "provider": "webhook", "config": {"url": url},
                                      "events": ["capsule.created"]}, headers=jwt)  # fmt: skip
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_another_teams_channel_is_not_there(cp: TestClient, hook: Receiver) -> None:
    a, b = account(cp, "a@example.com"), account(cp, "b@example.com")
    channel = _channel(cp, a.jwt, hook.url)["id"]
    before = rows(cp)
    for method, path, body in [
        ("GET", f"/v1/channels/{channel}", None),
        ("PATCH", f"/v1/channels/{channel}", {"name": "mine", "events": []}),
        ("DELETE", f"/v1/channels/{channel}", None),
        ("PUT", f"/v1/channels/{channel}/config", {"config": {"url": hook.url, "secret": "s" * 32}}),
        ("POST", f"/v1/channels/{channel}/test", None),
        ("GET", f"/v1/channels/{channel}/deliveries", None),
    ]:
        r = cp.request(method, path, json=body, headers=b.jwt)
        assert r.status_code == 404, (method, path, r.text)
    assert cp.get("/v1/channels", headers=b.jwt).json() == []
    assert rows(cp) == before
    assert hook.received == []  # B's test reached nobody


def test_only_owners_and_admins_change_channels(cp: TestClient, hook: Receiver) -> None:
    a = account(cp, "a@example.com")
    channel = _channel(cp, a.jwt, hook.url)["id"]
    key = api_key(cp, a)  # a key acts as a member, not as the owner
    viewer = api_key(cp, a, role="viewer")

    def changed() -> dict[str, object]:
        found = rows(cp)
        found.pop("team_api_keys")  # a key's last_used moves with every use
        return found

    before = changed()
    for headers in (key, viewer):
        body = {"name": "k", "provider": "webhook", "config": {"url": hook.url}, "events": []}
        assert cp.post("/v1/channels", json=body, headers=headers).status_code == 403
        assert cp.delete(f"/v1/channels/{channel}", headers=headers).status_code == 403
        put = cp.put(f"/v1/channels/{channel}/config", json={"config": {"url": hook.url}}, headers=headers)
        assert put.status_code == 403
        assert cp.post(f"/v1/channels/{channel}/test", headers=headers).status_code == 403
        assert cp.get(f"/v1/channels/{channel}", headers=headers).status_code == 200  # members read
    assert changed() == before
    assert hook.received == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",  # loopback is allowed here, but a host agent listens on 127.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://localhost:9/",  # a name for an agent's address
        "file:///etc/passwd",
        "gopher://127.0.0.2/",
        "http:///nohost",
    ],
)
def test_a_webhook_url_the_control_plane_must_not_reach_is_refused(cp: TestClient, url: str) -> None:
    a = account(cp, "a@example.com")
    before = rows(cp)
    body = {"name": "x", "provider": "webhook", "config": {"url": url}, "events": []}
    r = cp.post("/v1/channels", json=body, headers=a.jwt)
    assert r.status_code == 400, r.text
    assert cp.post("/v1/channels/test", json={"provider": "webhook", "config": {"url": url}},
                   headers=a.jwt).status_code == 400  # fmt: skip
    assert rows(cp) == before


def test_private_addresses_are_refused_unless_allowed(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """Without `webhook_allow_networks`, loopback (the receiver's 127.0.0.2) is refused too."""
    settings = make_settings(database_url, tmp_path / "cp", local_agents=(fake_agent.url,))
    with TestClient(create_app(settings)) as plain:
        a = account(plain, "a@example.com")
        body = {"name": "x", "provider": "webhook", "config": {"url": hook.url}, "events": []}
        r = plain.post("/v1/channels", json=body, headers=a.jwt)
        assert r.status_code == 400 and "not a public address" in r.json()["error"]["message"]
    assert hook.received == []


def test_channel_secrets_are_sealed_at_rest(cp: TestClient, hook: Receiver) -> None:
    a = account(cp, "a@example.com")
    secret = _channel(cp, a.jwt, hook.url)["secret"]

    async def raw(session: object) -> str:
        return str((await session.execute(text("SELECT config FROM channels"))).scalar_one())  # type: ignore[attr-defined]

    stored = run(cp, raw)  # type: ignore[arg-type]
    assert secret not in stored and hook.url not in stored
    assert stored.startswith("enc1:")


def test_metrics_open_to_the_scrape_token_alone(cp: TestClient) -> None:
    a = account(cp, "a@example.com")
    key = api_key(cp, a)
    for headers in (
        {},
        key,
        {"Authorization": f"Bearer {key['X-API-Key']}"},
        a.jwt,
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}x"},
        {"Authorization": METRICS_TOKEN},
        {"X-API-Key": METRICS_TOKEN},
    ):
        r = cp.get("/metrics", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert "wrenn_" not in r.text
    # through the traffic proxy, /metrics is a path in a capsule, never the control plane's
    proxied = cp.get(
        "/metrics",
        headers={"Host": "8000-cl-abcdef.wrenn.example", "Authorization": f"Bearer {METRICS_TOKEN}"},
    )
    assert proxied.status_code in (404, 502) and "wrenn_capsules" not in proxied.text
    assert cp.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200


def test_metrics_are_not_served_without_a_token_set(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    settings = make_settings(database_url, tmp_path / "cp", local_agents=(fake_agent.url,))
    with TestClient(create_app(settings)) as plain:
        a = account(plain, "a@example.com")
        for headers in ({}, a.jwt, api_key(plain, a), {"Authorization": "Bearer "}):
            assert plain.get("/metrics", headers=headers).status_code == 404
