"""Templates are a team's own: a name another team's template has, or its agent-side id (`tpl-...`), boots
nothing; the agent is never asked to look up a name a user typed. In-process over a recording agent (the
platform suite snapshots a real VM for the same attack)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.controlplane._db import insert_template, run
from wrenn.controlplane.db import Template
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .conftest import FakeAgent, account, admin_account, api_key, rows


def _template_id(cp: TestClient, name: str) -> str:
    async def find(session: object) -> str:
        from sqlalchemy import select

        return str((await session.execute(select(Template.id).where(Template.name == name))).scalar_one())  # type: ignore[attr-defined]

    return run(cp, find)  # type: ignore[arg-type]


def test_another_teams_template_boots_nothing(cp: TestClient, fake_agent: FakeAgent) -> None:
    admin = admin_account(cp)
    host_id = cp.get("/v1/hosts", headers=admin.jwt).json()[0]["id"]
    alice, mallory = account(cp, "alice@example.com"), account(cp, "mallory@example.com")
    insert_template(cp, alice.team_id, "secrets", host=host_id)
    tpl_id = _template_id(cp, "secrets")
    key = api_key(cp, mallory)
    before = rows(cp)
    for name in (
        "secrets",
        tpl_id,
        tpl_id.upper(),
        "tpl-0000000000000000000000000",
        "fork-x",
        "no-such-image",
    ):
        r = cp.post("/v1/capsules", json={"template": name}, headers=key)
        assert r.status_code in (400, 404), (name, r.text)
        r = cp.post("/sandboxes", json={"templateID": name}, headers={"X-API-KEY": key["X-API-Key"]})
        assert r.status_code == 404 and r.json()["error_code"] == "template_not_found", (name, r.text)
    after = rows(cp)
    after["team_api_keys"] = before["team_api_keys"]  # last_used
    assert after == before and fake_agent.recorder.names() == []

    # The owner's name reaches the agent as the template's id, in the field only ids go in.
    assert cp.post("/v1/capsules", json={"template": "secrets"}, headers=alice.jwt).status_code == 201
    assert cp.post("/v1/capsules", json={"template": "minimal"}, headers=mallory.jwt).status_code == 201
    creates = [r for n, r in fake_agent.recorder.calls if n == "create_sandbox"]
    assert [(c.template, c.snapshot_template) for c in creates] == [("", tpl_id), ("minimal", "")]
    assert all(isinstance(c, pb.CreateSandboxRequest) for c in creates)


def test_an_upload_url_with_a_forged_signature_is_refused_whatever_its_characters(cp: TestClient) -> None:
    """The signature is the upload's grant and comes from the query: non-ASCII ones (a string compare of
    those raised, a 500) and wrong ones are refused alike, and nothing is written."""
    before = rows(cp)
    expires = int(time.time()) + 600
    for signature in ("\u0080", "é" * 10, "0" * 64, ""):
        r = cp.put(f"/templates/tpl-x/files/{'0' * 64}/upload", params={"expires": expires, "signature": signature},
                   content=b"data")  # fmt: skip
        assert r.status_code == 403, (signature, r.status_code, r.text)
    assert rows(cp) == before
