"""A request's id (`X-Request-Id`), in-process over the recording stand-in agent: the control plane takes the
client's (or makes one), answers with it, has it in its log records for that request, and sends it to the
agent with the calls it makes for it; a malformed one is replaced, never echoed. (The whole chain with a
real agent and VM is in `test_capsules_e2e.py`.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._fake_agent import FakeAgent
from wrenn._shared.logs import RequestIdFilter

from ._receiver import control_plane, events_settings, owner


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())  # as `logs.configure` installs it

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler, root = Kept(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_create_carries_its_request_id_to_the_logs_and_the_agent(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, kept: Kept
) -> None:
    with control_plane(events_settings(database_url, tmp_path / "cp", fake_agent)) as api:
        jwt = owner(api)
        r = api.post(
            "/v1/capsules", json={"template": "minimal"}, headers=jwt | {"X-Request-Id": "req-given.1"}
        )
        assert r.status_code == 201 and r.headers["x-request-id"] == "req-given.1", r.text
        assert fake_agent.recorder.request_ids[-1] == "req-given.1"
        created = [rec for rec in kept.records if rec.getMessage() == "capsule created"]
        assert [getattr(rec, "request_id", None) for rec in created] == ["req-given.1"]
        assert created[0].capsule == r.json()["id"]  # type: ignore[attr-defined]

        # none given: one is made, answered and sent on; each request its own
        made = api.post("/v1/capsules", json={"template": "minimal"}, headers=jwt)
        other = api.get("/v1/capsules", headers=jwt)
        assert (
            made.headers["x-request-id"].startswith("req-")
            and fake_agent.recorder.request_ids[-1] == made.headers["x-request-id"]
        )
        assert other.headers["x-request-id"] not in (made.headers["x-request-id"], "req-given.1")

        # a malformed id (spaces, too long, a header injection attempt) is not taken
        for bad in ("two words", "x" * 129, "a\tb"):
            r = api.get("/v1/capsules", headers=jwt | {"X-Request-Id": bad})
            assert r.status_code == 200 and r.headers["x-request-id"].startswith("req-"), bad
        # outside a request, records have none
        logging.getLogger("wrenn.test").info("outside")
        assert not hasattr(kept.records[-1], "request_id")
