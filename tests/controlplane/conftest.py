"""Control plane fixtures: the app in-process on SQLite and on a real, private PostgreSQL cluster."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests import seed_openapi
from tests.security._fake_agent import FakeAgent, settled, start_fake_agent
from wrenn.controlplane import Settings, create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (initdb + pg_ctl as the postgres user, ~1 s)."""
    if os.environ.get("WRENN_TEST_DATABASE_URL"):
        yield os.environ["WRENN_TEST_DATABASE_URL"]
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql): the suite runs on it too")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="wrenn-pg-"))
    root.chmod(0o755)
    data = root / "data"
    shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
                    str(root / "log"), "start"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*as_postgres, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "wrenn"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/wrenn"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _reset_postgres(url: str) -> None:
    """Drop every table so each test module starts from migrations on an empty database."""
    import asyncio

    from sqlalchemy import text

    from wrenn.controlplane.db import make_engine

    async def drop() -> None:
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(drop())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'wrenn.db'}"
    url: str = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    """A recording stand-in host agent on loopback (`tests/security/_fake_agent.py`)."""
    agent = start_fake_agent()
    yield agent
    agent.stop()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "cp", login_attempts=3)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The app in-process; every `/v1` answer is checked against the seed's OpenAPI document."""
    app = create_app(settings)
    with TestClient(app) as client:
        settled(app)
        client.event_hooks["response"].append(seed_openapi.hook)
        yield client
