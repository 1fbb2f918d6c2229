"""Team isolation over every route: a team sees and touches only its own capsules, keys, hosts, members
and logs. The routes come from the app's OpenAPI spec, so a new route is covered (or fails here, asking
for a sample id) without editing this file.

Two plain users (no sign-up makes a platform admin) each own a team with a capsule on a
host, an API key and a second member. For every route with a path parameter naming a resource, team B
calls it with team A's ids (and every mix of A's and B's own ids), with its JWT and with its API key; the
answer must be a refusal (404, or 403; 401 where the credential cannot reach the route at all) and the
database must not change. Every parameterless GET, as B, must not mention any of A's ids.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from wrenn.controlplane import Settings
from wrenn.controlplane.routes import e2b

from ._db import (
    insert_built_template,
    insert_capsule,
    insert_channel,
    insert_e2b_webhook,
    insert_host,
    insert_template,
    snapshot,
)
from .test_accounts import auth, signup

#: Path parameters that do not name a team's resource, with the value to send.
#: (`files_hash`: a hash of files in the caller's own namespace: test_uploaded_files_are_per_team.)
NOT_IDS: dict[str, str] = {"selector": "1", "tag": "gpu", "provider": "github", "files_hash": "0" * 64}
#: Routes with path parameters that take no foreign ids. "METHOD /path" -> why.
ALLOWED: dict[str, str] = {
    "GET /v1/auth/oauth/{provider}": "a configured identity provider's name, the same for everyone",
    "GET /v1/auth/oauth/{provider}/callback": "likewise; the flow is bound to the browser's cookie",
    "GET /v1/me/providers/{provider}/connect": "the caller's own account, by provider name",
    "DELETE /v1/me/providers/{provider}": "the caller's own account, by provider name",
}
#: Routes authenticated by a host token: any user credential is 401 there.
HOST_AUTH = re.compile(r"^POST /v1/hosts/\{[a-z_]+\}/heartbeat$")
#: Routes authenticated by the dashboard's session cookie on a same-origin navigation alone: a JWT or an
#: API key is 401 there.
COOKIE_AUTH = re.compile(r"^GET /v1/dashboard/capsules/\{[a-z_]+\}/files/download$")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The suite's settings, without host monitor rounds during the test: its hosts are fakes whose
    agents never answer, and a round would change their rows under the test."""
    return Settings(database_url=database_url, data_dir=tmp_path / "cp", monitor_interval_s=3600)


class Team:
    def __init__(self, api: TestClient, email: str) -> None:
        account = signup(api, email)
        self.email = email
        self.user_id, self.team_id = account["user_id"], account["team_id"]
        self.jwt = auth(account["token"])
        created = api.post("/v1/api-keys", json={"name": "ci"}, headers=self.jwt)
        assert created.status_code == 201, created.text
        self.key_id, self.key = created.json()["id"], {"X-API-Key": created.json()["key"]}
        self.host_id = insert_host(api, team_id=self.team_id)  # a BYOC host of the team
        self.capsule_id = insert_capsule(api, self.team_id, status="running", host=self.host_id)
        self.template = insert_template(api, self.team_id, f"tpl-{email.split('@')[0]}", host=self.host_id)
        self.built = insert_built_template(api, self.team_id, f"built-{email.split('@')[0]}")
        self.channel_id = insert_channel(api, self.team_id)
        self.webhook_id = insert_e2b_webhook(api, self.team_id)
        mate = signup(api, f"mate.{email}")
        added = api.post(f"/v1/teams/{self.team_id}/members", json={"email": mate["email"]}, headers=self.jwt)
        assert added.status_code == 201, added.text
        self.mate_id = mate["user_id"]

    def ids(self) -> dict[str, list[str]]:
        """Each path parameter name -> this team's ids for it."""
        return {
            "capsule_id": [self.capsule_id],
            "key_id": [self.key_id],
            "team_id": [self.team_id],
            "user_id": [self.user_id, self.mate_id],
            "uid": [self.user_id, self.mate_id],
            "host_id": [self.host_id],
            "name": [self.template, self.built["name"]],  # a template's name (team-scoped)
            "sandbox_id": [self.capsule_id],  # E2B's name for a capsule id
            # E2B's /templates/{id}: a snapshot's name, a built template's id or name
            "template_id": [self.template, self.built["template_id"], self.built["name"]],
            "alias": [self.built["name"]],  # E2B's alias: a built template's name
            "build_id": [self.built["build_id"]],
            "channel_id": [self.channel_id],
            "webhook_id": [self.webhook_id],  # E2B's lifecycle webhooks
        }

    def secrets(self) -> list[str]:
        return [self.team_id, self.user_id, self.mate_id, self.key_id, self.host_id, self.capsule_id,
                self.built["template_id"], self.built["build_id"], self.channel_id, self.webhook_id]  # fmt: skip


@pytest.fixture
def teams(api: TestClient) -> tuple[Team, Team]:
    signup(api, "root@example.com")  # no sign-up makes an admin: A and B (and root) are plain users
    return Team(api, "ada@example.com"), Team(api, "bob@example.com")


def _operations(api: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    spec = api.app.openapi()  # type: ignore[attr-defined]
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if method in ("get", "post", "put", "patch", "delete"):
                ops.append((method.upper(), path, op))
    assert len(ops) > 10, "the spec lists hardly any routes"
    return ops


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


#: Values for fields that have to be meaningful for the request to reach the authorization check.
FIELD_SAMPLES: dict[str, Any] = {
    "email": "bob@example.com",
    "template": "minimal",
    "path": "/tmp",
    "cmd": "true",
    "name": "sample",
    "role": "member",
    "team_id": "team-nothing",
}


def _sample(spec: dict[str, Any], schema: dict[str, Any], field: str = "") -> Any:
    """A small value valid for `schema` (enough to pass validation, so authorization is what answers)."""
    schema = _resolve(spec, schema)
    if field in FIELD_SAMPLES:
        return FIELD_SAMPLES[field]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(spec, s).get("type") != "null"]
            return _sample(spec, options[0], field)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if kind == "object":
        required = schema.get("required", [])
        return {k: _sample(spec, v, k) for k, v in schema.get("properties", {}).items() if k in required}
    if kind == "array":
        return []
    if kind == "integer" or kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return "x" * max(1, schema.get("minLength", 1))


def _request(spec: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    query = {
        p["name"]: _sample(spec, p.get("schema", {}), p["name"])
        for p in op.get("parameters", [])
        if p["in"] == "query" and p.get("required")
    }
    if query:
        kwargs["params"] = query
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        kwargs["json"] = _sample(spec, body["schema"])
    return kwargs


def _path_params(path: str) -> list[str]:
    return re.findall(r"\{([^}]+)\}", path)


def test_every_route_with_an_id_refuses_another_teams(api: TestClient, teams: tuple[Team, Team]) -> None:
    a, b = teams
    spec = api.app.openapi()  # type: ignore[attr-defined]
    foreign, own = a.ids(), b.ids()
    checked = 0
    for method, path, op in _operations(api):
        names = _path_params(path)
        route = f"{method} {path}"
        if not names or route in ALLOWED:
            continue
        unknown = [n for n in names if n not in NOT_IDS and n not in foreign]
        assert not unknown, f"{route}: add sample ids for {unknown} to Team.ids() (or NOT_IDS / ALLOWED)"
        id_names = [n for n in names if n not in NOT_IDS]
        assert id_names, f"{route}: no id parameter; list it in ALLOWED with the reason"
        choices = [[("own", v) for v in own[n]] + [("foreign", v) for v in foreign[n]] for n in id_names]
        kwargs = _request(spec, op)
        for combo in itertools.product(*choices):
            if all(side == "own" for side, _ in combo):
                continue  # B's own resources: not an isolation question
            values = dict(zip(id_names, (v for _, v in combo), strict=True)) | {
                n: NOT_IDS[n] for n in names if n in NOT_IDS
            }
            url = path.format(**values)
            for credential, headers in (("jwt", b.jwt), ("key", b.key)):
                before = snapshot(api)
                r = api.request(method, url, headers=headers, **kwargs)
                allowed = (
                    {403, 404}
                    if credential == "jwt" and not (HOST_AUTH.match(route) or COOKIE_AUTH.match(route))
                    else {401, 403, 404}
                )
                assert r.status_code in allowed, (
                    f"{route} as B ({credential}) with {url}: {r.status_code} {r.text}"
                )
                body = r.json() if e2b.is_e2b_path(path) else r.json()["error"]  # E2B's own shape
                assert set(body) >= {"code", "message"}
                after = snapshot(api)
                assert _drop_last_used(after) == _drop_last_used(before), (
                    f"{route} ({credential}) changed data"
                )
                checked += 1
    assert checked >= 20


def _drop_last_used(tables: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
    """B's own API key records its last use; nothing else may move."""
    from wrenn.controlplane.db import ApiKey

    col = [c.name for c in ApiKey.__table__.columns].index("last_used")
    keys = [r[:col] + r[col + 1 :] for r in tables.get(ApiKey.__tablename__, [])]
    return tables | {ApiKey.__tablename__: keys}


def test_lists_show_nothing_of_another_team(api: TestClient, teams: tuple[Team, Team]) -> None:
    a, b = teams
    spec = api.app.openapi()  # type: ignore[attr-defined]
    looked = 0
    for method, path, op in _operations(api):
        if method != "GET" or _path_params(path) or path == "/v1/events/stream":
            continue  # the stream never ends: test_event_stream.py shows it is the team's alone
        kwargs = _request(spec, op)
        if path == "/v1/users/search":
            kwargs["params"] = {"email": "bob@"}  # finds B; finding A by exact local part is by design
        for headers in (b.jwt, b.key):
            r = api.get(path, headers=headers, **kwargs)
            assert r.status_code < 500, f"GET {path}: {r.status_code} {r.text}"
            leaked = [s for s in [*a.secrets(), a.email] if s in r.text]
            assert not leaked, f"GET {path} as B shows A's {leaked}"
            looked += 1
    assert looked >= 6


def test_admin_routes_refuse_everyone_but_platform_admins(api: TestClient, teams: tuple[Team, Team]) -> None:
    """Every `/v1/admin/*` route (but the bootstrap, which takes its one-time token) refuses a plain user's
    JWT with 403 and an API key with 401, whatever the ids and body, and changes nothing."""
    a, b = teams
    spec = api.app.openapi()  # type: ignore[attr-defined]
    checked = 0
    for method, path, op in _operations(api):
        if not path.startswith("/v1/admin/") or path == "/v1/admin/bootstrap":
            continue
        ids = a.ids()
        values = {n: ids[n][0] if n in ids else NOT_IDS.get(n, "x") for n in _path_params(path)}
        url = path.format(**values)
        for who, headers, allowed in (("B's jwt", b.jwt, {403}), ("A's jwt", a.jwt, {403}),
                                      ("B's key", b.key, {401})):  # fmt: skip
            before = snapshot(api)
            r = api.request(method, url, headers=headers, **_request(spec, op))
            assert r.status_code in allowed, f"{method} {path} as {who}: {r.status_code} {r.text}"
            assert _drop_last_used(snapshot(api)) == _drop_last_used(before), f"{method} {path} changed data"
            checked += 1
    assert checked >= 3 * 12


def test_ids_in_bodies_are_checked_too(api: TestClient, teams: tuple[Team, Team]) -> None:
    a, b = teams
    r = api.post("/v1/auth/switch-team", json={"team_id": a.team_id}, headers=b.jwt)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # B cannot pull A's member into B's team's management either: adding by email only adds, never moves
    assert (
        api.post(f"/v1/teams/{b.team_id}/members", json={"email": a.email}, headers=b.jwt).status_code == 201
    )
    assert {t["id"] for t in api.get("/v1/teams", headers=a.jwt).json()} == {a.team_id, b.team_id}
    assert api.get(f"/v1/teams/{a.team_id}", headers=b.jwt).status_code == 404


def test_uploaded_files_are_per_team(api: TestClient, teams: tuple[Team, Team]) -> None:
    """A team's uploaded build files are its own: another team asking for the same hash (on its own
    template) is told they are not there, and gets a URL for its own template only."""
    a, b = teams
    mine = api.get(f"/templates/{a.built['template_id']}/files/{a.built['files_hash']}", headers=a.key)
    assert mine.status_code == 201 and mine.json() == {"present": True}
    theirs = api.get(f"/templates/{b.built['template_id']}/files/{a.built['files_hash']}", headers=b.key)
    assert theirs.status_code == 201 and theirs.json()["present"] is False
    assert a.built["template_id"] not in theirs.json()["url"]
