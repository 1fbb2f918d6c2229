"""Events, channels and webhooks, end to end in-process (SQLite and PostgreSQL), over the recording stand-in
agent: a real webhook receiver on loopback gets each capsule event signed, a 500 is retried, every attempt
is in the delivery log, and events recorded while no dispatcher ran are delivered after a restart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.security._fake_agent import FakeAgent
from wrenn.controlplane.db import Delivery, DeliveryAttempt, Event, utcnow

from ._db import run
from ._receiver import Received, Receiver, control_plane, events_settings, homeserver, owner, receiver
from .conftest import _reset_postgres

CAPSULE_EVENTS = [
    "capsule.created",
    "capsule.running",
    "capsule.paused",
    "capsule.resumed",
    "capsule.destroyed",
]


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as found:
        yield found


def webhook(api: TestClient, jwt: dict[str, str], url: str, events: list[str]) -> dict[str, Any]:
    r = api.post(
        "/v1/channels",
        json={"name": "hook", "provider": "webhook", "config": {"url": url}, "events": events},
        headers=jwt,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def body(request: Received) -> dict[str, Any]:
    return dict(json.loads(request.body))


def test_webhook_gets_signed_capsule_events_and_a_retry(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        channel = webhook(api, jwt, hook.url, CAPSULE_EVENTS)
        secret = channel["secret"]
        assert secret and secret.startswith("whsec_")
        hook.answers.append(500)  # the first delivery fails once
        capsule = api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"]
        assert api.post(f"/v1/capsules/{capsule}/pause", headers=jwt).status_code == 200
        assert api.post(f"/v1/capsules/{capsule}/resume", headers=jwt).status_code == 200
        assert api.delete(f"/v1/capsules/{capsule}", headers=jwt).status_code == 204

        def all_delivered(got: list[Received]) -> bool:
            return {body(r)["event"] for r in got if r.answered == 200} >= set(CAPSULE_EVENTS)

        got = hook.wait(all_delivered)
        assert all(r.verified(secret) for r in got)
        assert not got[0].verified("whsec_" + "0" * 48)  # the check can fail
        first = got[0]
        assert first.answered == 500
        retried = [r for r in got if r.headers["x-wrenn-delivery"] == first.headers["x-wrenn-delivery"]]
        assert [r.answered for r in retried] == [500, 200]
        assert retried[0].body == retried[1].body  # the same event, byte for byte
        payload = body(first)
        assert payload["resource"] == {"id": capsule, "type": "capsule"}
        assert payload["actor"]["type"] == "user" and payload["team_id"]
        assert payload["event"] in CAPSULE_EVENTS and payload["id"].startswith("evt-")
        for r in got:
            assert r.headers["x-wrenn-event"] == body(r)["event"]
            assert r.headers["content-type"] == "application/json"

        log = api.get(f"/v1/channels/{channel['id']}/deliveries", headers=jwt).json()
        by_id = {d["id"]: d for d in log}
        failed_once = by_id[first.headers["x-wrenn-delivery"]]
        assert failed_once["status"] == "delivered" and failed_once["attempts"] == 2
        assert [a["status_code"] for a in failed_once["log"]] == [500, 200]
        assert failed_once["log"][0]["error"] == "answered 500"
        assert {d["event_type"] for d in log} == set(CAPSULE_EVENTS)
        assert all(d["status"] == "delivered" for d in log)
        # the secret is shown once: never in a read
        assert api.get(f"/v1/channels/{channel['id']}", headers=jwt).json()["secret"] is None
        assert all(c["secret"] is None for c in api.get("/v1/channels", headers=jwt).json())


def test_a_receiver_that_keeps_failing_ends_failed_after_the_retries(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        channel = webhook(api, jwt, hook.url, ["capsule.created"])
        hook.answers.extend([503, 500, 502])
        api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt)
        hook.wait(lambda got: len(got) >= 3)

        def log() -> list[dict[str, Any]]:
            return list(api.get(f"/v1/channels/{channel['id']}/deliveries", headers=jwt).json())

        deadline = time.monotonic() + 10
        while log()[0]["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (delivery,) = log()
        assert delivery["status"] == "failed" and delivery["attempts"] == 3  # a try and two retries
        assert [a["status_code"] for a in delivery["log"]] == [503, 500, 502]
        assert len(hook.received) == 3  # nothing after it failed


def test_events_recorded_while_no_dispatcher_ran_are_delivered_after_a_restart(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    # A dispatcher that looks once at start and then not for an hour: the control plane stops with the
    # events recorded and undelivered, as one killed between an event and its delivery.
    asleep = events_settings(database_url, tmp_path / "cp", fake_agent, events_interval_s=3600)
    with control_plane(asleep) as api:
        jwt = owner(api)
        channel = webhook(api, jwt, hook.url, ["capsule.created", "capsule.running", "capsule.destroyed"])
        capsule = api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"]
        assert api.delete(f"/v1/capsules/{capsule}", headers=jwt).status_code == 204
    assert hook.received == []
    with control_plane(events_settings(database_url, tmp_path / "cp", fake_agent)) as api:
        got = hook.wait(lambda got: len(got) >= 3)
        # not in order (deliveries go out side by side; the body's timestamp orders them), each once
        assert sorted(body(r)["event"] for r in got) == [
            "capsule.created",
            "capsule.destroyed",
            "capsule.running",
        ]
        assert all(r.verified(channel["secret"]) and body(r)["resource"]["id"] == capsule for r in got)
        time.sleep(0.5)  # a few more rounds: each event once
        assert len(hook.received) == 3


def test_a_matrix_channel_gets_capsule_events_through_apprise(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    """A chat channel end to end: apprise's Matrix client talks to a homeserver on loopback (allowed here
    by `webhook_allow_networks`, as an operator allows an intranet server); the delivery log records it."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with homeserver() as server, control_plane(settings) as api:
        jwt = owner(api)
        config = {
            "homeserver_url": server.url,
            "access_token": "syt_wrenn_token_1",
            "room_id": "!room:example.org",
        }
        tested = api.post("/v1/channels/test", json={"provider": "matrix", "config": config}, headers=jwt)
        assert tested.status_code == 200 and tested.json() == {"status": "ok"}, tested.text
        assert "channel.test" in server.messages()[-1]["body"]
        r = api.post("/v1/channels", json={"name": "mx", "provider": "matrix", "config": config,
                                          "events": ["capsule.created"]}, headers=jwt)  # fmt: skip
        assert r.status_code == 201 and r.json()["secret"] is None, r.text
        capsule = api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"]
        deadline = time.monotonic() + 20
        while not any("capsule.created" in m["body"] for m in server.messages()[1:]):
            assert time.monotonic() < deadline, server.requests
            time.sleep(0.05)
        text = next(m["body"] for m in server.messages()[1:] if "capsule.created" in m["body"])
        assert capsule in text and server.messages()[-1]["msgtype"] == "m.text"
        assert all(auth == "Bearer syt_wrenn_token_1" for _, _, auth, _ in server.requests)
        assert not any(method == "PUT" and "/send/" in path and "capsule.running" in str(b)
                       for method, path, _, b in server.requests)  # fmt: skip  # not selected

        def log() -> list[tuple[str, str]]:  # the attempt is recorded once apprise has returned
            found = api.get(f"/v1/channels/{r.json()['id']}/deliveries", headers=jwt).json()
            return [(d["event_type"], d["status"]) for d in found]

        while log() != [("capsule.created", "delivered")]:
            assert time.monotonic() < deadline, log()
            time.sleep(0.05)


def e2b_verified(request: Received, secret: str) -> bool:
    """E2B's documented check: SHA-256 of the secret followed by the raw body, base64url, no padding."""
    digest = hashlib.sha256(secret.encode() + request.body).digest()
    expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return hmac.compare_digest(request.headers["e2b-signature"], expected)


def test_e2b_lifecycle_webhooks_are_registered_signed_and_retried(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """E2B's `/events/webhooks` with an API key, as E2B programs call it: the receiver gets
    `sandbox.lifecycle.*` bodies signed as E2B signs, a 500 is retried, a disabled webhook gets nothing,
    and the webhook is not one of `/v1/channels`."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        key = {"X-API-Key": api.post("/v1/api-keys", json={"name": "k"}, headers=jwt).json()["key"]}
        secret = "e2b-signature-secret"
        r = api.post("/events/webhooks", json={
            "name": "My Sandbox Webhook", "url": hook.url, "enabled": True, "signatureSecret": secret,
            "events": ["sandbox.lifecycle.created", "sandbox.lifecycle.paused", "sandbox.lifecycle.killed"],
        }, headers=key)  # fmt: skip
        assert r.status_code == 201, r.text
        webhook = r.json()
        assert set(webhook) == {"id", "teamID", "name", "createdAt", "enabled", "url", "events"}
        assert (
            webhook["name"] == "My Sandbox Webhook"
            and webhook["enabled"] is True
            and webhook["url"] == hook.url
        )
        assert api.get("/events/webhooks", headers=key).json() == [webhook]
        assert api.get(f"/events/webhooks/{webhook['id']}", headers=key).json() == webhook
        assert api.get("/v1/channels", headers=jwt).json() == []
        assert api.get(f"/v1/channels/{webhook['id']}", headers=jwt).status_code == 404
        bad = api.post("/events/webhooks", json={"url": hook.url, "signatureSecret": secret,
                                                 "events": ["sandbox.exploded"]}, headers=key)  # fmt: skip
        assert bad.status_code == 400 and set(bad.json()) >= {"code", "message"}, bad.text

        hook.answers.append(500)  # the first delivery fails once
        e2b = {"X-API-Key": key["X-API-Key"]}
        sandbox = api.post(
            "/sandboxes", json={"templateID": "minimal", "metadata": {"user": "u1"}}, headers=e2b
        )
        assert sandbox.status_code == 201, sandbox.text
        sid = sandbox.json()["sandboxID"]
        assert api.post(f"/sandboxes/{sid}/pause", headers=e2b).status_code == 204
        assert api.delete(f"/sandboxes/{sid}", headers=e2b).status_code == 204
        wanted = {"sandbox.lifecycle.created", "sandbox.lifecycle.paused", "sandbox.lifecycle.killed"}
        got = hook.wait(lambda got: {body(r)["type"] for r in got if r.answered == 200} >= wanted)
        assert all(e2b_verified(r, secret) for r in got)
        assert not e2b_verified(got[0], secret + "x")  # the check can fail
        retried = [r for r in got if r.headers["e2b-delivery-id"] == got[0].headers["e2b-delivery-id"]]
        assert [r.answered for r in retried] == [500, 200] and retried[0].body == retried[1].body
        for r in got:
            assert r.headers["e2b-webhook-id"] == webhook["id"] and r.headers["e2b-signature-version"] == "v1"
            payload = body(r)
            assert payload["sandboxId"] == sid and payload["sandboxTemplateId"] == "minimal"
            assert payload["sandboxTeamId"] == webhook["teamID"] and payload["id"].startswith("evt-")
            assert payload["eventData"]["sandbox_metadata"]["user"] == "u1"
        killed = next(body(r) for r in got if body(r)["type"] == "sandbox.lifecycle.killed")
        assert (
            killed["eventData"]["execution"]["memory_mb"] > 0
            and "execution_time" in killed["eventData"]["execution"]
        )
        assert not any(body(r)["type"] == "sandbox.lifecycle.resumed" for r in got)  # not selected

        # disabled: nothing more is sent; deleted: gone
        r = api.patch(f"/events/webhooks/{webhook['id']}", json={"enabled": False}, headers=key)
        assert (
            r.status_code == 200 and r.json()["enabled"] is False and r.json()["events"] == webhook["events"]
        )
        count = len(hook.received)
        other = api.post("/sandboxes", json={"templateID": "minimal"}, headers=e2b).json()["sandboxID"]
        api.delete(f"/sandboxes/{other}", headers=e2b)
        time.sleep(0.5)
        assert len(hook.received) == count
        assert api.delete(f"/events/webhooks/{webhook['id']}", headers=key).status_code == 200
        assert api.get(f"/events/webhooks/{webhook['id']}", headers=key).status_code == 404


def test_a_control_plane_killed_before_delivering_delivers_after_its_restart(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """`python -m wrenn.controlplane` as a process, SIGKILLed (no shutdown of any kind) after a capsule's
    events are committed and before its dispatcher's next round; the next control plane on the database
    delivers them, signed, each once."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from tests.controlplane.conftest import _free_port

    def start(interval_s: float) -> tuple[subprocess.Popen[bytes], str]:
        port = _free_port()
        env = os.environ | {
            "WRENN_EVENTS_INTERVAL_S": str(interval_s), "WRENN_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "WRENN_WEBHOOK_RETRY_S": "0.2", "WRENN_MONITOR_INTERVAL_S": "3600",
        }  # fmt: skip
        log = (tmp_path / f"cp-{port}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrenn.controlplane", "--port", str(port), "--database-url", database_url,
             "--data-dir", str(tmp_path / "cp"), "--local-agent", fake_agent.url],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / f"cp-{port}.log"
            ).read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code < 500:
                    return proc, url
            except httpx.TransportError:
                time.sleep(0.1)

    (tmp_path / "cp").mkdir()
    first, url = start(3600)  # its dispatcher looked once, at start, and not again for an hour
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            token = http.post("/v1/auth/signup", json={"email": "k@example.com", "password": "correct horse"})
            jwt = {"Authorization": f"Bearer {token.json()['token']}"}
            channel = http.post("/v1/channels", json={"name": "h", "provider": "webhook", "config": {"url": hook.url},
                                                     "events": ["capsule.created", "capsule.destroyed"]}, headers=jwt)  # fmt: skip
            assert channel.status_code == 201, channel.text
            capsule = http.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"]
            assert http.delete(f"/v1/capsules/{capsule}", headers=jwt).status_code == 204
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert hook.received == []
    second, _ = start(0.1)
    try:
        got = hook.wait(lambda got: len(got) >= 2)
        time.sleep(0.5)  # more rounds: each event once
        assert sorted(body(r)["event"] for r in hook.received) == ["capsule.created", "capsule.destroyed"]
        assert all(r.verified(channel.json()["secret"]) and body(r)["resource"]["id"] == capsule for r in got)
    finally:
        second.terminate()
        second.wait(20)


def test_a_finished_build_is_an_event(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """`template.build.finished` with the build's end (here: an error, the stand-in agent builds nothing)."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        webhook(api, jwt, hook.url, ["template.build.finished"])
        r = api.post("/v1/templates/builds", json={"name": "app", "recipe": ["RUN true"]}, headers=jwt)
        assert r.status_code == 201, r.text
        got = hook.wait(lambda got: len(got) >= 1)
        payload = body(got[0])
        assert payload["event"] == "template.build.finished" and payload["resource"]["type"] == "build"
        assert payload["resource"]["id"] == r.json()["id"] and payload["data"]["status"] == "error"


def test_channel_crud_selection_test_and_rotation(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        channel = webhook(api, jwt, hook.url, ["capsule.destroyed"])
        cid = channel["id"]
        # a second channel of the same name: 409
        again = api.post("/v1/channels", json={"name": "hook", "provider": "webhook",
                                               "config": {"url": hook.url}, "events": []}, headers=jwt)  # fmt: skip
        assert again.status_code == 409
        assert api.post("/v1/channels", json={"name": "x", "provider": "webhook", "config": {"url": hook.url},
                                              "events": ["capsule.exploded"]}, headers=jwt).status_code == 400  # fmt: skip
        slack = {"name": "s", "provider": "slack", "config": {"webhook_url": hook.url}, "events": []}
        assert api.post("/v1/channels", json=slack, headers=jwt).status_code == 400  # not Slack's host

        # only selected events are sent: a create is not, the destroy is
        capsule = api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"]
        api.delete(f"/v1/capsules/{capsule}", headers=jwt)
        got = hook.wait(lambda got: len(got) >= 1)
        time.sleep(0.4)
        assert [body(r)["event"] for r in hook.received] == ["capsule.destroyed"]
        assert got[0].verified(channel["secret"])

        r = api.patch(
            f"/v1/channels/{cid}", json={"name": "renamed", "events": ["capsule.created"]}, headers=jwt
        )
        assert (
            r.status_code == 200
            and r.json()["events"] == ["capsule.created"]
            and r.json()["name"] == "renamed"
        )

        # rotation: a new secret, shown once; the old one no longer verifies
        rotated = api.put(
            f"/v1/channels/{cid}/config", json={"config": {"url": hook.url}}, headers=jwt
        ).json()
        assert rotated["secret"] and rotated["secret"] != channel["secret"]
        tested = api.post(f"/v1/channels/{cid}/test", headers=jwt)
        assert tested.status_code == 200, tested.text
        assert tested.json()["status"] == "delivered" and tested.json()["log"][0]["status_code"] == 200
        last = hook.received[-1]
        assert body(last)["event"] == "channel.test"
        assert last.verified(rotated["secret"]) and not last.verified(channel["secret"])

        # testing a config without saving it
        ok = api.post(
            "/v1/channels/test", json={"provider": "webhook", "config": {"url": hook.url}}, headers=jwt
        )
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        hook.answers.append(500)
        bad = api.post(
            "/v1/channels/test", json={"provider": "webhook", "config": {"url": hook.url}}, headers=jwt
        )
        assert bad.status_code == 400 and "500" in bad.json()["error"]["message"]

        assert api.delete(f"/v1/channels/{cid}", headers=jwt).status_code == 204
        assert api.get(f"/v1/channels/{cid}", headers=jwt).status_code == 404
        assert api.get(f"/v1/channels/{cid}/deliveries", headers=jwt).status_code == 404


def test_two_control_planes_deliver_each_event_once(
    postgres_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """Two control planes on one PostgreSQL database, both dispatching: each event is fanned out once and
    each delivery made once (rows claimed FOR UPDATE SKIP LOCKED, deliveries leased)."""
    _reset_postgres(postgres_url)
    settings = events_settings(postgres_url, tmp_path / "cp", fake_agent, events_interval_s=0.05)
    with control_plane(settings) as one, control_plane(settings) as two:
        jwt = owner(one)
        webhook(one, jwt, hook.url, ["capsule.created", "capsule.running", "capsule.destroyed"])
        ids = []
        for api in (one, two, one, two, one, two):
            ids.append(api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"])
        for i, capsule in enumerate(ids):
            assert (one if i % 2 else two).delete(f"/v1/capsules/{capsule}", headers=jwt).status_code == 204
        hook.wait(lambda got: len(got) >= 3 * len(ids))
        time.sleep(0.5)  # rounds of both dispatchers go on: nothing comes twice
    events = [(body(r)["event"], body(r)["resource"]["id"]) for r in hook.received]
    assert len(events) == 3 * len(ids) and len(set(events)) == len(events)
    assert len({r.headers["x-wrenn-delivery"] for r in hook.received}) == len(events)


def test_a_delivery_left_by_a_dead_control_plane_is_taken_over(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """A control plane that claimed a delivery and died leaves its lease: another delivers it once the lease
    ends, not before."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        channel = webhook(api, jwt, hook.url, ["capsule.created"])
        claimed_until = utcnow() + timedelta(seconds=1.5)

        async def claimed(session: AsyncSession) -> str:
            delivery = Delivery(
                id="dlv-left", channel_id=channel["id"], event_id="evt-left", event_type="capsule.created",
                payload='{"id":"evt-left","event":"capsule.created"}', lease_until=claimed_until,
            )  # fmt: skip
            session.add(delivery)
            return delivery.id

        run(api, claimed)
        time.sleep(0.8)
        assert hook.received == []  # leased: the (dead) holder may still be sending it
        (got,) = hook.wait(lambda got: len(got) >= 1)
        assert got.headers["x-wrenn-delivery"] == "dlv-left" and got.verified(channel["secret"])


def test_a_capsule_ended_by_its_timeout_is_told_as_destroyed_by_the_platform(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """E2B's create with a 1 s timeout: the deadline loop kills it, and the event says the platform did."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        webhook(api, jwt, hook.url, ["capsule.destroyed"])
        key = api.post("/v1/api-keys", json={"name": "e2b"}, headers=jwt).json()["key"]
        created = api.post(
            "/sandboxes", json={"templateID": "minimal", "timeout": 1}, headers={"X-API-Key": key}
        )
        assert created.status_code == 201, created.text
        (got,) = hook.wait(lambda got: len(got) >= 1, timeout=15)
        payload = body(got)
        assert payload["event"] == "capsule.destroyed"
        assert payload["resource"]["id"] == created.json()["sandboxID"]
        assert payload["actor"]["type"] == "system"


def test_the_janitor_prunes_old_events_and_finished_deliveries(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    settings = events_settings(
        database_url, tmp_path / "cp", fake_agent, events_retention_days=0.0001, webhook_retry_s=(3600.0,)
    )
    with control_plane(settings) as api:
        jwt = owner(api)
        webhook(api, jwt, hook.url, ["capsule.created"])
        second = {
            "name": "second",
            "provider": "webhook",
            "config": {"url": hook.url},
            "events": ["capsule.created"],
        }
        assert api.post("/v1/channels", json=second, headers=jwt).status_code == 201
        hook.answers.append(500)  # one of the two deliveries fails once: pending its retry in an hour
        api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt)
        hook.wait(lambda got: len(got) >= 2)

        async def counts(session: AsyncSession) -> tuple[int, ...]:
            return tuple(
                [int(await session.scalar(select(func.count()).select_from(m)) or 0)
                 for m in (Event, Delivery, DeliveryAttempt)]
            )  # fmt: skip

        time.sleep(9)  # older than the retention (8.64 s)
        assert run(api, counts)[0] > 0
        api.portal.call(api.app.state.janitor.prune)  # type: ignore[attr-defined,union-attr]
        # dispatched events go; the delivered delivery goes with its attempt; the pending one is kept
        assert run(api, counts) == (0, 1, 1)


def test_the_monitor_records_what_it_finds(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, hook: Receiver
) -> None:
    """A capsule gone from its host is told as destroyed by the host monitor; a local agent that stops
    answering is `host.down` (a platform host's: recorded, to no team's channel)."""
    settings = events_settings(database_url, tmp_path / "cp", fake_agent)
    with control_plane(settings) as api:
        jwt = owner(api)
        webhook(api, jwt, hook.url, ["capsule.destroyed", "host.down"])
        capsule = api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt).json()["id"]
        time.sleep(0.05)  # the agent's list is taken after the capsule's last change
        api.portal.call(api.app.state.monitor.tick)  # type: ignore[attr-defined,union-attr]
        (got,) = hook.wait(lambda got: len(got) >= 1)
        payload = body(got)
        assert payload["event"] == "capsule.destroyed" and payload["resource"]["id"] == capsule
        assert payload["actor"] == {"type": "system", "id": "host-monitor", "name": "host monitor"}
        assert payload["data"]["reason"] == "gone from its host"

        fake_agent.stop()
        api.portal.call(api.app.state.monitor.tick)  # type: ignore[attr-defined,union-attr]

        async def host_events(session: AsyncSession) -> list[tuple[str, str | None]]:
            rows = await session.execute(
                select(Event.type, Event.team_id).where(Event.resource_type == "host")
            )
            return [(t, team) for t, team in rows.all()]

        assert run(api, host_events) == [("host.up", None), ("host.down", None)]
        time.sleep(0.5)
        assert len(hook.received) == 1
