"""Property-based fuzzing of the whole REST API from its own OpenAPI spec (schemathesis, in-process ASGI,
SQLite). Each generated request is sent as three callers: the platform admin's JWT (made with the bootstrap token),
a plain user's JWT and an API key. Every answer must be

- never a server error, except 503 `no_hosts_available` / `host_unavailable`: in-process there is no host
  agent, so capsule creation has nowhere to go and the API says so; that 503 is the documented answer
  to "no capacity", not a crash; and 501 `not_implemented` from the seed's routes Wrenn does not serve yet
  (any other 5xx, including 500 `internal_error`, fails);
- for every 4xx, the error contract `{"error": {"code": str, "message": str}}`.

Bounded (20 examples per operation, no deadline) so the module runs in under a minute, on SQLite;
`WRENN_FUZZ_POSTGRES=1` runs it on the suite's PostgreSQL instead.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.python import asgi

from tests.conftest import bootstrap_admin
from wrenn.controlplane import Settings, create_app
from wrenn.controlplane._ids import new_id
from wrenn.controlplane.db import Capsule, Host, make_engine, sessions
from wrenn.controlplane.routes import e2b

from .conftest import _reset_postgres

#: 5xx answers that are statements about capacity or configuration, or about what an agent does not
#: implement (`not_implemented`), not failures of the control plane (`email_disabled`: this control plane
#: has no SMTP server, so password resets cannot be sent).
ACCEPTED_5XX = {
    (503, "no_hosts_available"), (503, "host_unavailable"), (503, "email_disabled"), (501, "not_implemented")
}  # fmt: skip


#: The spec comes from an app that never starts (no database): the requests go to a second instance,
#: on a fresh SQLite file, through `fuzzed`'s in-process client. (Not `schemathesis.pytest.from_fixture`:
#: its lazy loader breaks on pytest 9.)
_SPEC_APP = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
# Signing out revokes the caller's token: fuzzed, it would leave the rest of the run unauthenticated
# (tests/controlplane/test_account_lifecycle.py covers it).
# The event stream never ends: a fuzzed GET would wait forever (test_event_stream.py covers it).
schema = (
    schemathesis.openapi.from_dict(_SPEC_APP.openapi())
    .exclude(path="/v1/auth/logout")
    .exclude(path="/v1/events/stream")
)
schema.app = _SPEC_APP


@pytest.fixture(scope="module")
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite+aiosqlite:///{root / 'wrenn.db'}"
    if os.environ.get("WRENN_FUZZ_POSTGRES"):  # slower; worth a run after touching queries or models
        url = request.getfixturevalue("postgres_url")
        _reset_postgres(url)
    # Rate limits off: the fuzzer sends thousands of requests from one address in a minute. Background
    # jobs off: this fuzzes the requests. (Known, to fix: on SQLite a request whose transaction read
    # before it writes can get "database is locked" at once when a background job wrote meanwhile.)
    app = create_app(
        Settings(
            database_url=url, data_dir=root, monitor_interval_s=3600, events_interval_s=3600,
            stats_interval_s=3600, metrics_flush_interval_s=3600, janitor_interval_s=3600,
            rate_per_key=0, rate_per_address=0, rate_unauthenticated=0,
        )
    )  # fmt: skip
    with asgi.get_client(app) as client:  # runs the app's lifespan (migrations) on schemathesis' loop

        def account(email: str) -> dict[str, str]:
            r = client.post("/v1/auth/signup", json={"email": email, "password": "correct horse"})
            assert r.status_code == 201, r.text
            return {"Authorization": f"Bearer {r.json()['token']}"}

        made = bootstrap_admin(client.post, root, "root@example.com")
        admin = {"Authorization": f"Bearer {made.json()['token']}"}
        user = account("user@example.com")
        key = client.post("/v1/api-keys", json={"name": "fuzz"}, headers=user)
        assert key.status_code == 201, key.text
        callers = {"admin": admin, "user": user, "key": {"X-API-Key": key.json()["key"]}}
        teams = {
            c: client.get("/v1/me", headers=h).json()["team_id"]
            for c, h in (("admin", admin), ("user", user))
        }
    # A running capsule per team, on a host whose agent does not answer: requests get past the ownership
    # and state checks to the code that builds the agent call (then 503 host_unavailable).
    capsules = {caller: asyncio.run(_running_capsule(url, team)) for caller, team in teams.items()}
    capsules["key"] = capsules["user"]
    with asgi.get_client(app) as client:
        yield {"client": client, "callers": callers, "capsules": capsules}
    asgi.shutdown_lifespans()


async def _running_capsule(url: str, team_id: str) -> str:
    engine = make_engine(url)
    host_id, capsule_id = new_id("host"), new_id("cl")
    async with sessions(engine)() as session:
        session.add(Host(id=host_id, address="http://127.0.0.1:9", status="online", memory_mb=1 << 20))
        await session.flush()
        session.add(
            Capsule(id=capsule_id, team_id=team_id, host_id=host_id, template="minimal", status="running",
                    vcpus=1, memory_mb=512, host_ip="10.11.0.2")
        )  # fmt: skip
        await session.commit()
    await engine.dispose()
    return capsule_id


def _check(case: schemathesis.Case, response: Any, caller: str, headers: dict[str, str]) -> None:
    where = f"as {caller}: {response.status_code} {response.text[:300]}\n{case.as_curl_command(headers)}"
    status = response.status_code
    if status < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"error body is not JSON {where}") from None
    if e2b.is_e2b_path(case.path):  # E2B's shape: {"code": <status>, "message", "error_code"?}
        assert isinstance(body, dict) and body.get("code") == status, f"no E2B error object {where}"
        assert isinstance(body.get("message"), str), f"no error message {where}"
        code = str(body.get("error_code", ""))
    else:
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"no error object {where}"
        assert isinstance(error.get("code"), str) and error["code"], f"no error code {where}"
        assert isinstance(error.get("message"), str), f"no error message {where}"
        code = error["code"]
    if status >= 500:
        assert (status, code) in ACCEPTED_5XX, f"server error {where}"


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
def test_api_never_crashes_and_errors_keep_the_contract(
    case: schemathesis.Case, fuzzed: dict[str, Any]
) -> None:
    for caller, headers in fuzzed["callers"].items():
        response = case.call(session=fuzzed["client"], headers=headers)
        _check(case, response, caller, headers)
        if "capsule_id" in (case.path_parameters or {}):  # again, on the caller's own running capsule
            case.path_parameters = {**case.path_parameters, "capsule_id": fuzzed["capsules"][caller]}
            response = case.call(session=fuzzed["client"], headers=headers)
            _check(case, response, caller, headers)


def test_values_the_database_cannot_store_are_400(api: TestClient) -> None:
    """Found by fuzzing: PostgreSQL refuses NUL characters in text, which was a 500 on every route that
    looks a string up (SQLite stores them, hence a regression test over both)."""
    token = api.post("/v1/auth/signup", json={"email": "ada@example.com", "password": "correct horse"})
    headers = {"Authorization": f"Bearer {token.json()['token']}"}
    for method, url, body in [
        ("POST", "/v1/auth/login", {"email": "a\u0000b@example.com", "password": "whatever1"}),
        ("GET", "/v1/capsules/cl-%00", None),
        ("POST", "/v1/teams", {"name": "a\u0000b"}),
        ("GET", "/v1/users/search?email=ab%00@", None),
    ]:
        r = api.request(method, url, json=body, headers=headers)
        assert r.status_code < 500, (url, r.status_code, r.text)
        assert r.status_code < 400 or r.json()["error"]["code"], r.text
