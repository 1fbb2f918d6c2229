"""`wrenn backup DEST` and `wrenn restore SRC`: a node's database, secrets, templates and paused capsules.

A backup is a directory (mode 0700; `tar` it to move it):

    MANIFEST.json              what is in it, what is not, and the paused capsules it holds
    database/wrenn.db          SQLite: the online backup API's copy, consistent while the control plane runs
    database/wrenn.pgdump      PostgreSQL: `pg_dump --format=custom` (one consistent snapshot)
    secrets/                   SECRET, mode 0600: the sealing key (`encryption-key`: without it the sealed
                               columns, capsules' tokens and egress secrets, cannot be read), `jwt-secret`,
                               the internal CA (`ca.pem`, `ca-key.pem`), `agent-api-token`, `platform.json`
    agent/templates/           snapshot templates on this node's agent
    agent/blobs/               built templates' files (this node's template store cache)
    agent/sandboxes/<id>/      each capsule paused on this node: its memory snapshot and disk
    agent/images/              base images, only with `--images` (large; `wrenn up` rebuilds them)

The database is copied first, then the files. A capsule paused or resumed while the backup runs may be
left out or come back `error`: drain the host first (`wrenn admin hosts drain`) for a clean cut.
Restore writes onto a fresh data directory (and, for PostgreSQL, into an empty database) and refuses
anything else. Nothing here imports the control plane: the file names are the control plane's and agent's
own (`_secretbox.KEY_FILE`, ...), repeated.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from wrenn import __version__
from wrenn._shared.private import private_dir

FORMAT = 1
#: The control plane's and the local agent's secrets under the data directory.
SECRETS = ("encryption-key", "jwt-secret", "ca.pem", "ca-key.pem", "agent-api-token", "platform.json")
#: Environment variables that hold a secret instead of a file: a backup cannot contain them.
SECRET_ENV = {"WRENN_ENCRYPTION_KEY": "encryption-key", "JWT_SECRET": "jwt-secret"}
#: The agent's directories a backup holds (always, and with `--images`).
AGENT_DIRS = ("templates", "blobs")
NOTICE = """THIS DIRECTORY HOLDS SECRETS: secrets/encryption-key opens every sealed column of the database,
secrets/ca-key.pem signs host certificates, secrets/jwt-secret signs user sessions. Keep it as you keep
the server itself (mode 0700, encrypted at rest, off the machine). Restore: wrenn restore <this dir>.
"""


class BackupError(Exception):
    pass


def database_url(data_dir: Path, given: str | None) -> str:
    """The control plane's database: the given URL, else `DATABASE_URL`, else SQLite in the data dir."""
    return given or os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir / 'wrenn.db'}"


def _sqlite_path(url: str) -> Path:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"not a SQLite file: {url}")
    return Path(database)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore, and the environment carrying its password (never argv)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    env = {**os.environ}
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None, query={})
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {done.stderr.strip()[-2000:]}")


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy a directory's content into `dest`, keeping modes, owners and holes (disk images are sparse)."""
    private_dir(dest)
    done = subprocess.run(
        ["cp", "-a", "--sparse=always", "--reflink=auto", f"{src}/.", str(dest)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BackupError(f"cannot copy {src}: {done.stderr.strip()}")


def _copy_secret(src: Path, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())


def _paused(sandboxes: Path) -> list[str]:
    """The sandboxes the agent has paused (their state file says so)."""
    found = []
    for state in sorted(sandboxes.glob("*/state.json")):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text()).get("status") == "paused":
                found.append(state.parent.name)
    return found


def backup(data_dir: Path, dest: Path, *, url: str | None = None, images: bool = False) -> dict[str, Any]:
    """Write a backup of the node at `data_dir` into `dest` (new or empty); its manifest."""
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty")
    url = database_url(data_dir, url)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.chmod(0o700)
    (dest / "database").mkdir(mode=0o700)
    manifest: dict[str, Any] = {"format": FORMAT, "wrenn_version": __version__, "created_at": time.time()}
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if not path.is_file():
            raise BackupError(f"no database at {path}")
        source, target = sqlite3.connect(path), sqlite3.connect(dest / "database" / "wrenn.db")
        try:
            source.backup(target)  # one consistent snapshot, while others write
        finally:
            source.close()
            target.close()
        (dest / "database" / "wrenn.db").chmod(0o600)
        manifest["database"] = {"dialect": "sqlite", "file": "database/wrenn.db"}
    elif url.startswith("postgresql"):
        libpq, env = _libpq(url)
        out = dest / "database" / "wrenn.pgdump"
        _run(
            [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={out}", libpq],
            env,
        )
        out.chmod(0o600)
        manifest["database"] = {"dialect": "postgresql", "file": "database/wrenn.pgdump"}
    else:
        raise BackupError(f"unsupported database URL: {url.split(':', 1)[0]}")

    private_dir(dest / "secrets")
    held, missing = [], []
    for name in SECRETS:
        if (data_dir / name).is_file():
            _copy_secret(data_dir / name, dest / "secrets" / name)
            held.append(name)
    for env_name, name in SECRET_ENV.items():
        if os.environ.get(env_name) and name not in held:
            missing.append(f"{name}: given by {env_name}, not a file: keep it yourself")
    if "encryption-key" not in held and not any("encryption-key" in m for m in missing):
        missing.append("encryption-key: none in the data dir (no sealed columns can be read without one)")
    manifest["secrets"] = {"files": held, "not_included": missing}

    copied = []
    for name in (*AGENT_DIRS, *(("images",) if images else ())):
        if (data_dir / name).is_dir():
            _copy_tree(data_dir / name, dest / "agent" / name)
            copied.append(name)
    paused = _paused(data_dir / "sandboxes")
    for sandbox_id in paused:
        _copy_tree(data_dir / "sandboxes" / sandbox_id, dest / "agent" / "sandboxes" / sandbox_id)
    manifest["agent"] = {
        "dirs": copied,
        "paused_sandboxes": paused,
        "not_included": [
            "running capsules (pause them first: they come back `error` with their disks gone)",
            "hibernated capsules' archives in cold storage (--cold-storage: back that store up on its own)",
            "the template store when shared (--template-store): back it up on its own",
            "other hosts' (remote, BYOC) files: each keeps its own data dir",
            *(
                []
                if images
                else ["base images (--images): `wrenn up` rebuilds them, maybe as another version"]
            ),
        ],
    }
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    (dest / "README-SECRET.txt").write_text(NOTICE)
    return manifest


def restore(src: Path, data_dir: Path, *, url: str | None = None) -> dict[str, Any]:
    """Restore the backup at `src` onto a fresh `data_dir` (and database); its manifest."""
    try:
        manifest: dict[str, Any] = json.loads((src / "MANIFEST.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src} is not a Wrenn backup: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r}: this Wrenn reads format {FORMAT}")
    taken = [n for n in (*SECRETS, "wrenn.db", *AGENT_DIRS) if (data_dir / n).exists()]
    taken += [
        f"sandboxes/{i}"
        for i in manifest["agent"]["paused_sandboxes"]
        if (data_dir / "sandboxes" / i).exists()
    ]
    if taken:
        raise BackupError(
            f"{data_dir} is not fresh (it holds {', '.join(taken)}): restore onto a new data dir"
        )
    url = database_url(data_dir, url)
    dialect = manifest["database"]["dialect"]
    if not url.startswith(dialect):
        raise BackupError(f"this backup holds a {dialect} database; the target is {url.split(':', 1)[0]}")
    private_dir(data_dir)
    dump = src / manifest["database"]["file"]
    if dialect == "sqlite":
        path = _sqlite_path(url)
        if path.exists():
            raise BackupError(f"a database exists at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        source, target = sqlite3.connect(f"file:{dump}?mode=ro", uri=True), sqlite3.connect(path)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        path.chmod(0o600)
    else:
        libpq, env = _libpq(url)
        _run([_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
              f"--dbname={libpq}", str(dump)], env)  # fmt: skip
    for name in manifest["secrets"]["files"]:
        _copy_secret(src / "secrets" / name, data_dir / name)
    for name in manifest["agent"]["dirs"]:
        _copy_tree(src / "agent" / name, data_dir / name)
    if manifest["agent"]["paused_sandboxes"]:
        private_dir(data_dir / "sandboxes")
        for sandbox_id in manifest["agent"]["paused_sandboxes"]:
            _copy_tree(src / "agent" / "sandboxes" / sandbox_id, data_dir / "sandboxes" / sandbox_id)
    return manifest
