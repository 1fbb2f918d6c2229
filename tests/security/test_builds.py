"""Template builds under attack, in-process over a recording agent: the upload URL is its own grant and
nothing else is (forged, expired, for another template or hash: 403); uploads are capped and must be tar
archives; build specs with unknown steps, files never uploaded, paths out of the archive or a user's
made-up base are refused before anything reaches a host; a registry on the platform's own network is refused
and registry credentials are sealed at rest and never shown; the admin routes are an admin's."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.controlplane._db import run
from wrenn.controlplane import Settings, create_app

from .conftest import ClientAddress, FakeAgent, account, admin_account, api_key


def _tar(name: str = "a.txt", data: bytes = b"hi") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_upload_urls_grant_only_what_they_name(cp: TestClient, fake_agent: FakeAgent) -> None:
    alice = account(cp, "alice@example.com")
    key = api_key(cp, alice)
    made = cp.post("/v3/templates", json={"name": "app"}, headers=key)
    assert made.status_code == 202, made.text
    template_id = made.json()["templateID"]
    files_hash = "a" * 64
    link = cp.get(f"/templates/{template_id}/files/{files_hash}", headers=key).json()
    assert link["present"] is False
    url = urlsplit(link["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    # Forged, expired, for another hash, for another template: refused, and nothing is kept.
    for path, params in (
        (url.path, {**query, "signature": "A" * 43}),
        (url.path, {**query, "expires": str(int(query["expires"]) + 1)}),
        (url.path, {**query, "expires": str(int(time.time()) - 10)}),
        (url.path.replace(files_hash, "b" * 64), query),
        (url.path.replace(template_id, "tpl-0000000000000000000000000"), query),
        (url.path, {}),
    ):
        r = cp.put(path, params=params, content=_tar())
        assert r.status_code in (400, 403), (path, params, r.status_code, r.text)
    assert cp.get(f"/templates/{template_id}/files/{files_hash}", headers=key).json()["present"] is False
    # Not a tar archive, or too big: refused.
    assert cp.put(url.path, params=query, content=b"#!/bin/sh\nrm -rf /\n").status_code == 400
    big = cp.app.state.settings.max_upload_bytes + 70_000  # type: ignore[attr-defined]
    assert cp.put(url.path, params=query, content=b"\0" * big).status_code == 413
    # The real thing works, once.
    assert cp.put(url.path, params=query, content=_tar()).status_code == 201
    assert cp.get(f"/templates/{template_id}/files/{files_hash}", headers=key).json() == {"present": True}


def test_bad_build_specs_reach_no_host(cp: TestClient, fake_agent: FakeAgent) -> None:
    alice = account(cp, "alice@example.com")
    key = api_key(cp, alice)
    made = cp.post("/v3/templates", json={"name": "app"}, headers=key).json()
    start = f"/v2/templates/{made['templateID']}/builds/{made['buildID']}"
    for body in (
        {"steps": [{"type": "EXEC", "args": ["id"]}]},
        {"steps": [{"type": "COPY", "args": ["a", "/b"], "filesHash": "c" * 64}]},  # never uploaded
        {"steps": [{"type": "RUN", "args": [1]}]},
        {"steps": "RUN id"},
        {"fromImage": "e2bdev/base/../../x", "steps": []},
        {"fromImage": "-oProxyCommand=x", "steps": []},
        {"fromTemplate": "somebody-elses", "steps": []},
    ):
        r = cp.post(start, json=body, headers=key)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    for recipe in (["COPY ../../etc/passwd /x"], ["COPY /etc/shadow /x"], ["EXEC id"], ["RUN"]):
        r = cp.post("/v1/templates/builds", json={"name": "r", "recipe": recipe}, headers=key)
        assert r.status_code == 400, (recipe, r.text)
    # None of them started the build: a good spec still can.
    assert cp.post(start, json={"fromTemplate": "minimal", "steps": []}, headers=key).status_code == 202


def test_admin_builds_are_an_admins(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin_account(cp)
    mallory = account(cp, "mallory@example.com")
    key = api_key(cp, mallory)
    body = {"name": "x", "recipe": ["RUN true"]}
    for headers in (mallory.jwt, key, {}):
        assert cp.post("/v1/admin/builds", json=body, headers=headers).status_code in (401, 403)
        assert cp.get("/v1/admin/builds", headers=headers).status_code in (401, 403)
    # A team's own builds route takes the same body, for its own team.
    r = cp.post("/v1/templates/builds", json=body, headers=key)
    assert r.status_code == 201, r.text
    assert r.json()["team_id"] == mallory.team_id


def test_registries_on_the_platforms_network_are_refused(
    cp_settings: Settings, fake_agent: FakeAgent
) -> None:
    """A registry is reached by a host agent: one on loopback, a private network or a host of the platform
    would be an SSRF, unless the operator listed it (`WRENN_REGISTRY_INSECURE`)."""
    settings = dataclasses.replace(cp_settings, registry_insecure=("127.0.0.1:5999",))
    with TestClient(ClientAddress(create_app(settings))) as cp:
        key = api_key(cp, account(cp, "alice@example.com"))
        secret = "hunter2-registry-password"

        made = cp.post("/v3/templates", json={"name": "app"}, headers=key).json()

        def start(body: dict[str, Any]) -> Any:
            return cp.post(
                f"/v2/templates/{made['templateID']}/builds/{made['buildID']}", json=body, headers=key
            )

        for image in ("127.0.0.1:5000/x:1", "localhost:5999/x", "10.0.0.8/x", "169.254.169.254/x",
                      "127.0.0.1:5998/x", "2130706433:5999/x", "0x7f.1:5999/x"):  # fmt: skip
            r = start({"fromImage": image, "steps": []})
            assert r.status_code == 400 and "registry_refused" in r.text, (image, r.text)
        assert start({"fromImage": "[::1]:5000/x", "steps": []}).status_code == 400
        # A recipe's (or a Dockerfile's) base with a `/` is an image, checked the same way.
        r = cp.post(
            "/v1/templates/builds",
            json={"name": "r", "base_template": "10.0.0.8/x", "recipe": []},
            headers=key,
        )
        assert r.status_code == 400 and "registry_refused" in r.text, r.text
        for registry in ({"type": "aws", "awsAccessKeyId": "a"}, {"type": "registry", "username": "a:b",
                         "password": "c"}, {"type": "registry", "username": "a"}, "user:pass"):  # fmt: skip
            r = start({"fromImage": "127.0.0.1:5999/x:1", "fromImageRegistry": registry, "steps": []})
            assert r.status_code == 400, (registry, r.text)
        # The operator's own registry is allowed; its credentials are sealed in the database and never shown.
        auth = {"type": "registry", "username": "bob", "password": secret}
        r = start({"fromImage": "127.0.0.1:5999/x:1", "fromImageRegistry": auth, "steps": []})
        assert r.status_code == 202, r.text
        status = f"/templates/{made['templateID']}/builds/{made['buildID']}/status"
        for _ in range(50):
            shown = cp.get(status, headers=key)
            if shown.json()["status"] != "waiting":
                break
            time.sleep(0.1)
        assert secret not in shown.text and secret not in r.text

        async def raw(session: Any) -> list[str]:
            return [
                row[0] for row in await session.execute(text("SELECT registry_auth FROM template_builds"))
            ]

        stored = [v for v in run(cp, raw) if v]
        assert len(stored) == 1 and stored[0].startswith("enc1:") and secret not in stored[0]
