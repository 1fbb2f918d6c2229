"""The seed's published SDK (`wrenn` 0.3.0 from PyPI, unmodified, in a virtualenv of its own: our package
is called `wrenn` too) against a running Wrenn with real VMs, on SQLite and on PostgreSQL: its whole
public surface (`seed_sdk_surface.py`), once per database. Every `/v1` answer it gets is also what the
seed's OpenAPI document describes (`tests/seed_openapi.py`, checked in-process by every API test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _control_plane
from tests.controlplane.conftest import _reset_postgres

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the host agent needs root")]

SEED_VERSION = "0.3.0"
#: Cached between runs (installing takes a while and needs PyPI); rebuilt when it does not import.
SEED_VENV = Path(os.environ.get("WRENN_SEED_SDK_VENV", f"/var/tmp/wrenn-seed-sdk-{SEED_VERSION}"))
SCRIPT = Path(__file__).with_name("seed_sdk_surface.py")


@pytest.fixture(scope="module")
def seed_python() -> Path:
    """The seed SDK as its users install it: `pip install wrenn==0.3.0`, which declares Python >= 3.13 but
    runs on 3.11 (`--ignore-requires-python`)."""
    python = SEED_VENV / "bin" / "python"
    probe = [
        str(python),
        "-c",
        f"import wrenn.client, importlib.metadata as m; assert m.version('wrenn') == '{SEED_VERSION}'",
    ]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(SEED_VENV)], check=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--ignore-requires-python", f"wrenn=={SEED_VERSION}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"cannot install the seed SDK: {done.stderr[-2000:]}")
    return python


@pytest.fixture(scope="module")
def agent(image: object) -> Iterator[object]:
    from tests.agent._agent import running_agent

    with running_agent(f"sd{os.getpid() % 1000:03d}k") as process:
        yield process


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_seed_sdks_whole_surface(
    database: str, agent: object, seed_python: Path, request: pytest.FixtureRequest
) -> None:
    url = None
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _reset_postgres(url)
    platform = _control_plane(agent.url, agent.token_file, database_url=url)  # type: ignore[attr-defined]
    base_url, api_key = next(platform)
    try:
        done = subprocess.run(
            [str(seed_python), str(SCRIPT), base_url, api_key],
            capture_output=True, text=True, timeout=1100, env={**os.environ, "PYTHONPATH": ""},
            cwd="/",
        )  # fmt: skip
    finally:
        platform.close()
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [f"{r['check']}: {r['detail']}" for r in results if not r["ok"]]
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(results) > 80, done.stdout[-3000:] + done.stderr[-3000:]
    assert not failed, "\n\n".join(failed)
