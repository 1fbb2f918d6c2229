"""`wrenn admin ...` as an operator meets it, against a control plane on loopback (no host agent: these
commands reach the database through the API only), as the admin's token in `WRENN_ACCESS_TOKEN`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._serving import serving_asgi
from tests.conftest import bootstrap_admin
from wrenn.controlplane import Settings, create_app

WRENN = [sys.executable, "-c", "from wrenn.cli import main; main()"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("cli-admin")
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{root / 'wrenn.db'}", data_dir=root,
                              monitor_interval_s=3600))  # fmt: skip
    with serving_asgi(app) as base:
        admin = bootstrap_admin(httpx.post, Path(root), "root@example.com", base=base).json()["token"]
        yield base, {"WRENN_BASE_URL": base, "WRENN_ACCESS_TOKEN": admin}


def wrenn(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*WRENN, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **env})  # fmt: skip
    if check:
        assert done.returncode == 0, f"wrenn {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def test_users_teams_capsules_and_the_audit_log(server: tuple[str, dict[str, str]]) -> None:
    base, env = server
    ada = httpx.post(
        f"{base}/v1/auth/signup", json={"email": "ada@example.com", "password": "correct horse"}
    ).json()
    listed = wrenn(env, "admin", "users", "list").stdout
    assert "ada@example.com" in listed and "root@example.com" in listed and "2 of 2" in listed
    assert "disabled" in wrenn(env, "admin", "users", "disable", "ada@example.com").stdout
    me = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {ada['token']}"})
    assert me.status_code == 403  # at once
    assert "active" in wrenn(env, "admin", "users", "enable", "ada@example.com").stdout
    assert "platform admin" in wrenn(env, "admin", "users", "promote", "ada@example.com").stdout
    assert "no longer" in wrenn(env, "admin", "users", "demote", ada["user_id"]).stdout

    teams = wrenn(env, "admin", "teams", "list", "--search", "ada").stdout
    assert ada["team_id"] in teams and "ada@example.com" in teams
    assert "not allowed" in wrenn(env, "admin", "teams", "byoc", ada["team_id"], "off").stdout
    quotas = wrenn(env, "admin", "teams", "quotas", ada["team_id"], "--capsules", "3").stdout
    assert "capsules\t0\t3\town" in quotas  # tab-separated when not a terminal
    assert "0 of 0" in wrenn(env, "admin", "capsules", "list").stdout
    assert "deleted" in wrenn(env, "admin", "teams", "delete", ada["team_id"], "--yes").stdout

    log = wrenn(env, "admin", "audit", "--limit", "20").stdout
    for action in ("disable", "enable", "grant_admin", "byoc", "delete"):
        assert action in log, log

    unknown = wrenn(env, "admin", "users", "disable", "nobody@example.com", check=False)
    assert unknown.returncode != 0 and "nobody@example.com" in unknown.stderr
    plain = httpx.post(
        f"{base}/v1/auth/signup", json={"email": "bob@example.com", "password": "correct horse"}
    )
    refused = wrenn(
        {**env, "WRENN_ACCESS_TOKEN": plain.json()["token"]}, "admin", "users", "list", check=False
    )
    assert refused.returncode == 1 and "forbidden" in refused.stderr


def test_cordon_drain_and_uncordon_a_host(server: tuple[str, dict[str, str]]) -> None:
    base, env = server
    admin = {"Authorization": f"Bearer {env['WRENN_ACCESS_TOKEN']}"}
    host = httpx.post(f"{base}/v1/hosts", json={"type": "regular"}, headers=admin).json()["host"]["id"]
    assert f"host {host} cordoned" in wrenn(env, "admin", "hosts", "cordon", host).stdout
    assert httpx.get(f"{base}/v1/hosts/{host}", headers=admin).json()["cordoned"] is True
    drained = wrenn(env, "admin", "hosts", "drain", host, "--deadline", "5").stdout
    assert "0 capsule(s) paused" in drained and "not paused" not in drained
    assert f"host {host} uncordoned" in wrenn(env, "admin", "hosts", "uncordon", host).stdout
    assert httpx.get(f"{base}/v1/hosts/{host}", headers=admin).json()["cordoned"] is False
    unknown = wrenn(env, "admin", "hosts", "drain", "host-nope", check=False)
    assert unknown.returncode == 1 and "not_found" in unknown.stderr
