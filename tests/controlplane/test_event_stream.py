"""The seed's event stream (`GET /v1/events/stream`) over a real HTTP server (uvicorn on loopback, SQLite and
PostgreSQL, the recording stand-in agent): a team's stream gets the `connected` sentinel, then its
capsule's create, pause and destroy as they happen, in the seed's wire format (read back with the seed
SDK's own parser and models when its virtualenv is there); another team's stream gets none of them; a
client that reconnects with `Last-Event-ID` gets what it missed."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests._serving import serving_asgi
from tests.security._fake_agent import FakeAgent
from wrenn.controlplane import create_app
from wrenn.sdk import WrennClient

from ._receiver import events_settings

#: The seed SDK's virtualenv `test_seed_sdk.py` installs (its parser and models check our frames).
SEED_PYTHON = Path("/var/tmp/wrenn-seed-sdk-0.3.0/bin/python")
SEED_PARSE = """
import json, sys
from wrenn.client import _iter_sse_events
lines = json.load(sys.stdin)
print(json.dumps([e.model_dump(mode="json", exclude_none=True) for e in _iter_sse_events(iter(lines))]))
"""


class Reader:
    """A stream read in a thread until `until(frames)` holds or it is quiet for `quiet_s`."""

    def __init__(self, base: str, jwt: str, until: Any, quiet_s: float, last_id: str = "") -> None:
        self.lines: list[str] = []
        self.status = 0
        headers = {"Authorization": f"Bearer {jwt}"} | ({"Last-Event-ID": last_id} if last_id else {})
        self.connected = threading.Event()

        def read() -> None:
            timeout = httpx.Timeout(5.0, read=quiet_s)
            with httpx.Client(base_url=base, timeout=timeout) as http:
                try:
                    with http.stream("GET", "/v1/events/stream", headers=headers) as r:
                        self.status = r.status_code
                        for line in r.iter_lines():
                            self.lines.append(line)
                            if line.startswith("data:") and '"connected"' in line:
                                self.connected.set()
                            if until(self.frames()):
                                return
                except httpx.ReadTimeout:
                    pass
                finally:
                    self.connected.set()

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        assert self.connected.wait(15)

    def frames(self) -> list[dict[str, Any]]:
        """Each frame's `id`, `event` name and data."""
        found, current = [], {}
        for line in self.lines:
            if not line:
                if "data" in current:
                    found.append(current)
                current = {}
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
        return found

    def join(self) -> list[dict[str, Any]]:
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.frames()


def _signup(http: httpx.Client, email: str) -> str:
    r = http.post("/v1/auth/signup", json={"email": email, "password": "correct horse"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_the_event_stream_serves_a_teams_events_as_they_happen(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    app = create_app(events_settings(database_url, tmp_path / "cp", fake_agent))
    with serving_asgi(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        a, b = _signup(http, "a@example.com"), _signup(http, "b@example.com")
        assert http.get("/v1/events/stream").status_code == 401
        done = lambda frames: any(f["event"] == "capsule.destroy" for f in frames)  # noqa: E731
        mine = Reader(base, a, done, quiet_s=20)
        theirs = Reader(base, b, done, quiet_s=6)
        auth = {"Authorization": f"Bearer {a}"}
        capsule = http.post("/v1/capsules", json={"template": "minimal"}, headers=auth).json()["id"]
        assert http.post(f"/v1/capsules/{capsule}/pause", headers=auth).status_code == 200
        assert http.delete(f"/v1/capsules/{capsule}", headers=auth).status_code == 204
        frames = mine.join()
        assert mine.status == 200
        assert frames[0]["event"] == "connected" and frames[0]["data"]["event"] == "connected"
        kinds = [(f["event"], f["data"].get("outcome")) for f in frames[1:]]
        assert kinds == [
            ("capsule.create", "success"),
            ("capsule.state.changed", None),
            ("capsule.pause", "success"),
            ("capsule.destroy", "success"),
        ], kinds
        created = frames[1]
        assert created["data"]["resource"] == {"id": capsule, "type": "capsule"}
        assert created["data"]["actor"]["type"] == "user"
        assert created["data"]["sandbox"]["id"] == capsule
        assert frames[2]["data"]["metadata"]["to"] == "running"
        assert all(f["id"].startswith("evt-") for f in frames[1:])
        assert [f["event"] for f in theirs.join()] == ["connected"]  # another team's capsule: nothing

        # a client that lost the connection after the create resumes after it
        again = Reader(base, a, done, quiet_s=20, last_id=created["id"])
        assert [f["event"] for f in again.join()] == [
            "connected", "capsule.state.changed", "capsule.pause", "capsule.destroy",
        ]  # fmt: skip

        # our SDK reads the same stream (an API key's, resuming after the pause)
        key = http.post("/v1/api-keys", json={"name": "k"}, headers=auth).json()["key"]
        with WrennClient(api_key=key, base_url=base) as wrenn:
            stream = wrenn.events.stream(last_event_id=frames[3]["id"])
            read = [next(stream), next(stream)]
            stream.close()
        assert [e["event"] for e in read] == ["connected", "capsule.destroy"]
        assert read[1]["id"] == frames[4]["id"] and read[1]["sandbox"]["id"] == capsule

    if SEED_PYTHON.exists():  # the seed SDK reads every frame into its SSEEvent model
        parsed = subprocess.run(
            [str(SEED_PYTHON), "-c", SEED_PARSE], input=json.dumps([*mine.lines, ""]),
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # its own `wrenn`, never ours
        )  # fmt: skip
        assert parsed.returncode == 0, parsed.stderr[-3000:]
        events = json.loads(parsed.stdout)
        assert [e["event"] for e in events] == [
            "connected", "capsule.create", "capsule.state.changed", "capsule.pause", "capsule.destroy",
        ]  # fmt: skip
        assert events[1]["sandbox"]["id"] == capsule and events[1]["outcome"] == "success"


def test_the_event_stream_keeps_the_connection_alive(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent, monkeypatch: Any
) -> None:
    from wrenn.controlplane.service import event_stream

    monkeypatch.setattr(event_stream, "KEEPALIVE_S", 0.5)
    app = create_app(events_settings(database_url, tmp_path / "cp", fake_agent))
    with serving_asgi(app) as base, httpx.Client(base_url=base, timeout=10) as http:
        auth = {"Authorization": f"Bearer {_signup(http, 'a@example.com')}"}
        with http.stream("GET", "/v1/events/stream", headers=auth) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert next(lines) == "event: connected"
            started = time.monotonic()
            while next(lines) != ": keepalive":
                assert time.monotonic() - started < 5
