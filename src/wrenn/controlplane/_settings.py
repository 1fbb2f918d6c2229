"""The control plane's settings, from the command line or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from wrenn.proto.hostagent.v1.auth import TOKEN_FILE, read_token


@dataclass(frozen=True, slots=True)
class Settings:
    #: SQLAlchemy URL: an SQLite file by default, PostgreSQL (postgresql+asyncpg://...) for several hosts.
    database_url: str = ""
    #: Where the control plane keeps what it generates on first start (the JWT secret) when not given.
    data_dir: Path = Path("/var/lib/wrenn")
    #: HS256 secret for user JWTs; generated and stored under data_dir when empty. Never logged.
    jwt_secret: str = ""
    jwt_ttl_s: int = 6 * 3600
    #: Host agents to register at start without a registration token (the single-machine setup).
    local_agents: tuple[str, ...] = field(default=())
    #: The secret local agents require (the file the agent created, mode 0600). None:
    #: `{data_dir}/agent-api-token`, where `wrenn up`'s agent keeps it.
    local_agent_token_file: Path | None = None
    #: Failed logins allowed per email within `login_window_s` before 429.
    login_attempts: int = 5
    login_window_s: int = 300
    max_upload_bytes: int = 100 << 20
    #: The internal CA of control plane <-> agent mutual TLS: generated under data_dir when not given.
    #: Several control planes on one database need the same CA (and the same JWT secret).
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None
    #: The host monitor: how often it runs, and how long a registered host may stay silent before it is
    #: `unreachable` (its capsules `missing`).
    monitor_interval_s: float = 15.0
    host_timeout_s: float = 90.0
    #: Seconds the monitor waits for an agent's answer (GetHostInfo, ListSandboxes).
    agent_probe_timeout_s: float = 10.0
    #: Capsules paused longer than this go to their host's cold storage (0: never). Hosts share that
    #: storage, so a hibernated capsule resumes on whichever host has room.
    hibernate_after_s: float = 0.0
    registration_token_ttl_s: int = 3600
    host_jwt_ttl_s: int = 7 * 24 * 3600
    host_refresh_ttl_s: int = 60 * 24 * 3600
    #: The built web dashboard served at `/`; None: the one in the package (`_dashboard`).
    dashboard_dir: Path | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        data_dir = Path(os.environ.get("WRENN_DIR", "/var/lib/wrenn"))
        values: dict[str, object] = {
            "database_url": os.environ.get("DATABASE_URL", ""),
            "data_dir": data_dir,
            "jwt_secret": os.environ.get("JWT_SECRET", ""),
        }
        for key, env in (
            ("ca_cert_file", "WRENN_CA_CERT"),
            ("ca_key_file", "WRENN_CA_KEY"),
            ("local_agent_token_file", "WRENN_LOCAL_AGENT_TOKEN_FILE"),
        ):
            if os.environ.get(env):
                values[key] = Path(os.environ[env])
        for key, env in (
            ("monitor_interval_s", "WRENN_MONITOR_INTERVAL_S"),
            ("host_timeout_s", "WRENN_HOST_TIMEOUT_S"),
            ("hibernate_after_s", "WRENN_HIBERNATE_AFTER_S"),
        ):
            if os.environ.get(env):
                values[key] = float(os.environ[env])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def local_agent_token(self) -> str | None:
        """The local agents' secret, or None when there is no file to read it from."""
        path = self.local_agent_token_file or self.data_dir / TOKEN_FILE
        try:
            return read_token(path) or None
        except FileNotFoundError:
            if self.local_agent_token_file is not None:
                raise
            return None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'wrenn.db'}"
