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
from tests.controlplane._receiver import Receiver, homeserver, receiver
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


@pytest.mark.parametrize(
    ("provider", "config"),
    [
        ("slack", {"webhook_url": "https://127.0.0.2/services/T0/B0/" + "x" * 24}),  # not Slack's host
        ("slack", {"webhook_url": "http://hooks.slack.com/services/T0/B0/" + "x" * 24}),  # not https
        ("slack", {"webhook_url": "https://hooks.slack.com.evil.example/services/T0/B0/" + "x" * 24}),
        ("slack", {"webhook_url": "https://u:p@hooks.slack.com/services/T0/B0/" + "x" * 24}),
        ("slack", {"webhook_url": "https://discord.com/api/webhooks/1/abc"}),  # another service's URL
        ("slack", {"webhook_url": "json://127.0.0.2:9/"}),  # an apprise URL of another plugin
        ("discord", {"webhook_url": "https://169.254.169.254/api/webhooks/1/abc"}),
        ("teams", {"webhook_url": "https://evil.example/workflows/a/triggers/manual/paths/invoke?sig=x"}),
        ("googlechat", {"webhook_url": "https://chat.googleapis.com.evil.example/v1/spaces/A/messages"}),
        ("telegram", {"bot_token": "1:" + "a" * 30 + "@127.0.0.2", "chat_id": "1"}),  # no host smuggled in
        ("telegram", {"bot_token": "1:" + "a" * 30, "chat_id": "1/../../x?y=1"}),
        (
            "matrix",
            {"homeserver_url": "http://169.254.169.254", "access_token": "t" * 20, "room_id": "!r:e.org"},
        ),
        ("matrix", {"homeserver_url": "http://127.0.0.1:9", "access_token": "t" * 20, "room_id": "!r:e.org"}),
        (
            "matrix",
            {"homeserver_url": "http://[::ffff:10.0.0.1]", "access_token": "t" * 20, "room_id": "!r:e.org"},
        ),
        (
            "matrix",
            {"homeserver_url": "https://m.example/x?a=1", "access_token": "t" * 20, "room_id": "!r:e.org"},
        ),
        (
            "matrix",
            {"homeserver_url": "https://m.example", "access_token": "t@127.0.0.2/", "room_id": "!r:e.org"},
        ),
        ("matrix", {"homeserver_url": "file:///etc/passwd", "access_token": "t" * 20, "room_id": "!r:e.org"}),
        ("matrix", {"homeserver_url": "https://m.example", "access_token": "t" * 20}),  # a field missing
        ("discord", {"webhook_url": "https://discord.com/api/webhooks/1/abc", "url": "http://127.0.0.2/"}),
    ],
)
def test_a_chat_target_the_control_plane_must_not_reach_is_refused(
    cp: TestClient, hook: Receiver, provider: str, config: dict[str, str]
) -> None:
    """A chat channel reaches the service's own hosts only (Matrix: a public homeserver, or one the
    operator allowed; 127.0.0.1 is an agent's here): anything else is 400 before anything is sent or
    saved, to a create, a test and a rotation alike."""
    a = account(cp, "a@example.com")
    channel = _channel(cp, a.jwt, hook.url)["id"]
    before = rows(cp)
    body = {"name": "x", "provider": provider, "config": config, "events": []}
    r = cp.post("/v1/channels", json=body, headers=a.jwt)
    assert r.status_code == 400, r.text
    tested = cp.post("/v1/channels/test", json={"provider": provider, "config": config}, headers=a.jwt)
    assert tested.status_code == 400, tested.text
    # a rotation keeps the channel's provider: a webhook's config with chat fields is refused too
    assert cp.put(f"/v1/channels/{channel}/config", json={"config": config}, headers=a.jwt).status_code == 400
    assert rows(cp) == before
    assert hook.received == []


def test_a_matrix_homeserver_on_a_private_address_needs_the_operators_allowance(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    """The same loopback homeserver the events test delivers to is refused without
    `webhook_allow_networks`, and nothing reaches it."""
    with homeserver() as server:
        settings = make_settings(database_url, tmp_path / "cp", local_agents=(fake_agent.url,))
        with TestClient(create_app(settings)) as plain:
            a = account(plain, "a@example.com")
            config = {"homeserver_url": server.url, "access_token": "t" * 20, "room_id": "!room:example.org"}
            body = {"name": "x", "provider": "matrix", "config": config, "events": []}
            r = plain.post("/v1/channels", json=body, headers=a.jwt)
            assert r.status_code == 400 and "not a public address" in r.json()["error"]["message"], r.text
            assert (
                plain.post("/v1/channels/test", json=body | {"name": None}, headers=a.jwt).status_code == 400
            )
        assert server.requests == []


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


def test_chat_tokens_are_sealed_at_rest_and_never_shown(cp: TestClient) -> None:
    a = account(cp, "a@example.com")
    url = "https://hooks.slack.com/services/T0AAAA/B0BBBB/" + "s3cr3t" * 4
    r = cp.post("/v1/channels", json={"name": "s", "provider": "slack", "config": {"webhook_url": url},
                                      "events": ["capsule.created"]}, headers=a.jwt)  # fmt: skip
    assert r.status_code == 201 and r.json()["secret"] is None, r.text
    assert "s3cr3t" not in cp.get(f"/v1/channels/{r.json()['id']}", headers=a.jwt).text

    async def raw(session: object) -> str:
        return str((await session.execute(text("SELECT config FROM channels"))).scalar_one())  # type: ignore[attr-defined]

    stored = run(cp, raw)  # type: ignore[arg-type]
    assert "s3cr3t" not in stored and stored.startswith("enc1:")


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


def test_e2b_webhooks_are_the_teams_own_and_reach_only_allowed_addresses(
    cp: TestClient, hook: Receiver
) -> None:
    """E2B's `/events/webhooks`: another team's webhook is 404 to every method and unchanged; a viewer's
    key changes nothing (403); a URL the control plane must not reach is 400 on register and update; the
    signature secret is sealed at rest and never shown."""
    a, b = account(cp, "a@example.com"), account(cp, "b@example.com")
    key_a, key_b = api_key(cp, a), api_key(cp, b)
    viewer = api_key(cp, a, role="viewer")
    secret = "e2b-secret-" + "z" * 20
    body = {"url": hook.url, "signatureSecret": secret, "events": ["sandbox.lifecycle.created"]}
    r = cp.post("/events/webhooks", json=body, headers=key_a)
    assert r.status_code == 201 and secret not in r.text, r.text
    webhook = r.json()["id"]

    def changed() -> dict[str, object]:
        found = rows(cp)
        found.pop("team_api_keys")  # a key's last_used moves with every use
        return found

    before = changed()
    for method, path, payload in [
        ("GET", f"/events/webhooks/{webhook}", None),
        ("PATCH", f"/events/webhooks/{webhook}", {"url": hook.url + "/b"}),
        ("DELETE", f"/events/webhooks/{webhook}", None),
    ]:
        assert cp.request(method, path, json=payload, headers=key_b).status_code == 404, (method, path)
    assert cp.get("/events/webhooks", headers=key_b).json() == []
    assert cp.post("/events/webhooks", json=body, headers=viewer).status_code == 403
    assert cp.patch(f"/events/webhooks/{webhook}", json={"enabled": False}, headers=viewer).status_code == 403
    assert cp.delete(f"/events/webhooks/{webhook}", headers=viewer).status_code == 403
    for url in (
        "http://127.0.0.1:9/",
        "http://169.254.169.254/latest/",
        "file:///etc/passwd",
        "http://[::ffff:10.0.0.1]/",
    ):
        assert cp.post("/events/webhooks", json=body | {"url": url}, headers=key_a).status_code == 400, url
        assert cp.patch(f"/events/webhooks/{webhook}", json={"url": url}, headers=key_a).status_code == 400, (
            url
        )
    assert (
        cp.post("/events/webhooks", json=body | {"signatureSecret": "short"}, headers=key_a).status_code
        == 400
    )
    assert changed() == before
    assert hook.received == []

    async def raw(session: object) -> str:
        return str((await session.execute(text("SELECT config FROM channels"))).scalar_one())  # type: ignore[attr-defined]

    stored = run(cp, raw)  # type: ignore[arg-type]
    assert secret not in stored and hook.url not in stored and stored.startswith("enc1:")
