"""A capsule end to end: REST API -> control plane -> a real host agent -> a real VM (TCG here)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.agent._agent import AgentProcess, running_agent
from tests.conftest import bootstrap_admin
from wrenn.controlplane import Settings, create_app

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]
PREFIX = f"wc{os.getpid() % 1000:03d}p"


@pytest.fixture(scope="module")
def agent(image: object) -> Iterator[AgentProcess]:
    with running_agent(PREFIX) as process:
        yield process


@pytest.fixture(scope="module")
def api(agent: AgentProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("cp")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{root / 'wrenn.db'}",
        data_dir=root,
        local_agents=(agent.url,),
        local_agent_token_file=agent.token_file,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def teams(api: TestClient) -> dict[str, dict[str, str]]:
    out = {}
    for name in ("ada", "bob"):
        account = api.post(
            "/v1/auth/signup", json={"email": f"{name}@example.com", "password": "correct horse"}
        ).json()
        key = api.post(
            "/v1/api-keys", json={"name": "k"}, headers={"Authorization": f"Bearer {account['token']}"}
        )
        out[name] = {"X-API-Key": key.json()["key"]}
    return out


def test_a_capsule_end_to_end(api: TestClient, teams: dict[str, dict[str, str]], agent: AgentProcess) -> None:
    ada, bob = teams["ada"], teams["bob"]
    created = api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=ada)
    assert created.status_code == 201, created.text
    capsule = created.json()
    cid = capsule["id"]
    assert cid.startswith("cl-") and capsule["status"] == "running" and capsule["host_ip"] == ""  # not told
    assert [c["id"] for c in api.get("/v1/capsules", headers=ada).json()] == [cid]
    assert api.get("/v1/capsules", headers=bob).json() == []

    run = api.post(f"/v1/capsules/{cid}/exec", headers=ada, json={
        "cmd": "/bin/sh", "args": ["-c", 'python3 -c "print(6*7)"; pwd; echo "$X"; echo err >&2; exit 3'],
        "envs": {"X": "from-envs"}, "cwd": "/tmp",
    })  # fmt: skip
    assert run.status_code == 200, run.text
    body = run.json()
    assert (body["stdout"], body["stderr"], body["exit_code"], body["encoding"]) == (
        "42\n/tmp\nfrom-envs\n", "err\n", 3, "utf-8")  # fmt: skip
    binary = api.post(
        f"/v1/capsules/{cid}/exec", headers=ada, json={"cmd": "/bin/sh", "args": ["-c", "printf '\\377'"]}
    )
    assert binary.json()["encoding"] == "base64" and binary.json()["stdout"] == "/w=="

    for other in (f"/v1/capsules/{cid}", f"/v1/capsules/{cid}/processes"):  # bob cannot see or touch it
        assert api.get(other, headers=bob).status_code == 404
    assert api.post(f"/v1/capsules/{cid}/exec", headers=bob, json={"cmd": "true"}).status_code == 404
    assert api.delete(f"/v1/capsules/{cid}", headers=bob).status_code == 404

    wrote = api.post(f"/v1/capsules/{cid}/files/write", headers=ada, data={"path": "/home/user/a/b.txt"},
                     files={"file": ("b.txt", b"hello")})  # fmt: skip
    assert wrote.status_code == 204, wrote.text
    assert (
        api.post(f"/v1/capsules/{cid}/files/read", headers=ada, json={"path": "/home/user/a/b.txt"}).content
        == b"hello"
    )
    streamed = api.post(
        f"/v1/capsules/{cid}/files/stream/read", headers=ada, json={"path": "/home/user/a/b.txt"}
    )
    assert streamed.content == b"hello"
    listed = api.post(
        f"/v1/capsules/{cid}/files/list", headers=ada, json={"path": "/home/user", "depth": 2}
    ).json()
    assert {e["path"] for e in listed["entries"]} >= {"/home/user/a", "/home/user/a/b.txt"}
    entry = next(e for e in listed["entries"] if e["path"] == "/home/user/a/b.txt")
    assert entry["type"] == "file" and entry["size"] == 5 and entry["owner"] == "user"
    made = api.post(f"/v1/capsules/{cid}/files/mkdir", headers=ada, json={"path": "/home/user/new"})
    assert made.json()["entry"]["type"] == "directory"
    assert (
        api.post(f"/v1/capsules/{cid}/files/remove", headers=ada, json={"path": "/home/user/a"}).status_code
        == 204
    )
    missing = api.post(f"/v1/capsules/{cid}/files/read", headers=ada, json={"path": "/home/user/a/b.txt"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    bg = api.post(
        f"/v1/capsules/{cid}/exec",
        headers=ada,
        json={"cmd": "sleep", "args": ["600"], "background": True, "tag": "nap"},
    )
    assert bg.status_code == 202 and bg.json()["tag"] == "nap"
    procs = api.get(f"/v1/capsules/{cid}/processes", headers=ada).json()["processes"]
    assert any(p["tag"] == "nap" and p["cmd"] == "sleep" for p in procs)
    assert api.delete(f"/v1/capsules/{cid}/processes/nap", headers=ada).status_code == 204
    assert api.post(f"/v1/capsules/{cid}/ping", headers=ada).status_code == 204
    assert api.get(f"/v1/capsules/{cid}/metrics?range=5m", headers=ada).json()["sandbox_id"] == cid

    assert api.delete(f"/v1/capsules/{cid}", headers=ada).status_code == 204
    assert api.get(f"/v1/capsules/{cid}", headers=ada).json()["status"] == "stopped"
    assert api.get("/v1/capsules", headers=ada).json() == []
    assert api.delete(f"/v1/capsules/{cid}", headers=ada).status_code == 204  # twice is harmless
    again = api.post(f"/v1/capsules/{cid}/exec", headers=ada, json={"cmd": "true"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_a_drained_host_pauses_its_capsule_for_real(
    api: TestClient, teams: dict[str, dict[str, str]]
) -> None:
    """Drain and cordon with a real VM: the drain pauses it on its host through the pause path (a memory
    snapshot), the cordoned host takes no new capsule nor resumes it, and after `uncordon` it resumes
    with its files."""
    ada = teams["ada"]
    admin = bootstrap_admin(api.post, api.app.state.settings.data_dir, "root@example.com").json()  # type: ignore[attr-defined]
    as_admin = {"Authorization": f"Bearer {admin['token']}"}
    [host] = api.get("/v1/hosts", headers=as_admin).json()
    cid = api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=ada).json()["id"]
    wrote = api.post(f"/v1/capsules/{cid}/files/write", headers=ada, data={"path": "/home/user/kept.txt"},
                     files={"file": ("kept.txt", b"kept over the drain")})  # fmt: skip
    assert wrote.status_code == 204, wrote.text

    drained = api.post(f"/v1/hosts/{host['id']}/drain", json={"deadline_s": 120}, headers=as_admin)
    assert drained.status_code == 200, drained.text
    assert drained.json()["paused"] == [cid] and drained.json()["not_paused"] == {}
    assert api.get(f"/v1/capsules/{cid}", headers=ada).json()["status"] == "paused"
    refused = api.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256}, headers=ada)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_hosts_available"
    assert api.post(f"/v1/capsules/{cid}/resume", headers=ada).json()["error"]["code"] == "host_cordoned"

    assert api.post(f"/v1/hosts/{host['id']}/uncordon", headers=as_admin).status_code == 200
    assert api.post(f"/v1/capsules/{cid}/resume", headers=ada).status_code == 200
    read = api.post(f"/v1/capsules/{cid}/files/read", headers=ada, json={"path": "/home/user/kept.txt"})
    assert read.content == b"kept over the drain"
    assert api.delete(f"/v1/capsules/{cid}", headers=ada).status_code == 204


def test_a_capsule_whose_agent_is_gone_says_so(
    api: TestClient, teams: dict[str, dict[str, str]], agent: AgentProcess
) -> None:
    ada = teams["ada"]
    cid = api.post("/v1/capsules", json={"memory_mb": 256}, headers=ada).json()["id"]
    agent.stop(signal.SIGKILL)  # the VM keeps running; its agent does not answer
    r = api.post(f"/v1/capsules/{cid}/exec", headers=ada, json={"cmd": "true"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable", r.text
