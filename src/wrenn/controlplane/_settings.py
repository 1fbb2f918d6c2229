"""The control plane's settings, from the command line or the environment."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wrenn.proto.hostagent.v1.auth import TOKEN_FILE, read_token


def _flag(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


#: Settings read from the environment when set: (field, variable, how to read it).
_FROM_ENV: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("ca_cert_file", "WRENN_CA_CERT", Path),
    ("ca_key_file", "WRENN_CA_KEY", Path),
    ("local_agent_token_file", "WRENN_LOCAL_AGENT_TOKEN_FILE", Path),
    ("monitor_interval_s", "WRENN_MONITOR_INTERVAL_S", float),
    ("host_timeout_s", "WRENN_HOST_TIMEOUT_S", float),
    ("hibernate_after_s", "WRENN_HIBERNATE_AFTER_S", float),
    ("quota_capsules", "WRENN_QUOTA_CAPSULES", int),
    ("quota_vcpus", "WRENN_QUOTA_VCPUS", int),
    ("quota_memory_mb", "WRENN_QUOTA_MEMORY_MB", int),
    ("quota_disk_mb", "WRENN_QUOTA_DISK_MB", int),
    ("max_vcpus", "WRENN_MAX_VCPUS", int),
    ("max_memory_mb", "WRENN_MAX_MEMORY_MB", int),
    ("max_disk_mb", "WRENN_MAX_DISK_MB", int),
    ("max_body_bytes", "WRENN_MAX_BODY_BYTES", int),
    ("rate_per_key", "WRENN_RATE_PER_KEY", float),
    ("rate_per_address", "WRENN_RATE_PER_ADDRESS", float),
    ("rate_unauthenticated", "WRENN_RATE_UNAUTHENTICATED", float),
    ("rate_proxy_per_address", "WRENN_RATE_PROXY_PER_ADDRESS", float),
    ("require_signed_url_expiry", "WRENN_REQUIRE_SIGNED_URL_EXPIRY", _flag),
    ("build_concurrency", "WRENN_BUILD_CONCURRENCY", int),
    ("build_egress", "WRENN_BUILD_EGRESS", _csv),
    ("max_team_builds", "WRENN_MAX_TEAM_BUILDS", int),
    ("template_gc_grace_s", "WRENN_TEMPLATE_GC_GRACE_S", float),
    ("registry_insecure", "WRENN_REGISTRY_INSECURE", _csv),
)


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
    #: Failed logins allowed within `login_window_s` before 429: per email from one client address, per
    #: client address (any emails: password spraying), and per email from all addresses together (a
    #: guess spread over many addresses). The last is high, so that no single client locks a user out.
    login_attempts: int = 5
    login_attempts_per_address: int = 20
    login_attempts_per_email: int = 100
    login_window_s: int = 300
    max_upload_bytes: int = 100 << 20
    #: JSON (and every other) request body, at most; larger: 413. The streamed upload route is exempt and
    #: `files/write` has `max_upload_bytes`.
    max_body_bytes: int = 1 << 20
    #: Request rates (token buckets: a sustained rate per second and a burst), each per control plane
    #: process: per API key or user, per client address on the API, per client address on the routes that
    #: need no credential (sign-up, login, bootstrap, host registration and refresh), and per client
    #: address on the traffic proxy. 0: no limit.
    rate_per_key: float = 50.0
    burst_per_key: int = 500
    rate_per_address: float = 100.0
    burst_per_address: int = 1000
    rate_unauthenticated: float = 1.0
    burst_unauthenticated: int = 30
    rate_proxy_per_address: float = 500.0
    burst_proxy_per_address: int = 2000
    #: A team's quotas unless an admin set its own (`/v1/admin/teams/{id}/quotas`): capsules holding CPU
    #: and memory at once, their vCPUs and memory, and disk (capsules' disks, paused capsules' memory
    #: snapshots, templates).
    quota_capsules: int = 20
    quota_vcpus: int = 40
    quota_memory_mb: int = 40 * 1024
    quota_disk_mb: int = 200 * 1024
    #: One capsule's shape, at most (whatever a team's quota).
    max_vcpus: int = 8
    max_memory_mb: int = 16 * 1024
    max_disk_mb: int = 20 * 1024
    #: Refuse (403) envd file URLs signed without an expiry (E2B's SDK makes them without one unless asked
    #: for `use_signature_expiration`): an operator's policy, off by default for E2B compatibility.
    require_signed_url_expiry: bool = False
    #: Secrets the control plane must read back (capsules' envd and traffic tokens) are encrypted at rest
    #: with this key (64 hex characters, AES-256-GCM); generated under data_dir when empty. Several control
    #: planes on one database need the same key.
    encryption_key: str = ""
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
    #: Template builds (docs/templates.md): at most this many run at once over all control planes (more
    #: wait in the queue), at most `max_team_builds` waiting or running per team; each build may reach
    #: `build_egress` ("ip:port" or "cidr:port": a package index on the platform's network) besides the
    #: internet; a RUN step is killed after `build_step_timeout_s`, a whole build after `build_timeout_s`.
    build_concurrency: int = 1
    max_team_builds: int = 5
    build_egress: tuple[str, ...] = field(default=())
    build_step_timeout_s: float = 3600.0
    build_timeout_s: float = 4 * 3600.0
    build_poll_s: float = 1.0
    #: Deleting a template collects the template store, sparing blobs younger than this (a build on some
    #: host may be making them).
    template_gc_grace_s: float = 3600.0
    #: OCI registries (`host:port`) builds may pull from over plain HTTP although they are on a private or
    #: loopback address (an operator's own mirror): every other registry must resolve to public addresses
    #: and is reached over TLS.
    registry_insecure: tuple[str, ...] = field(default=())
    #: The built web dashboard served at `/`; None: the one in the package (`_dashboard`).
    dashboard_dir: Path | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        data_dir = Path(os.environ.get("WRENN_DIR", "/var/lib/wrenn"))
        values: dict[str, object] = {
            "database_url": os.environ.get("DATABASE_URL", ""),
            "data_dir": data_dir,
            "jwt_secret": os.environ.get("JWT_SECRET", ""),
            "encryption_key": os.environ.get("WRENN_ENCRYPTION_KEY", ""),
        }
        for key, env, kind in _FROM_ENV:
            if os.environ.get(env):
                values[key] = kind(os.environ[env])
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
