"""The control plane's settings, from the command line or the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from wrenn.proto.hostagent.v1.auth import TOKEN_FILE, read_token


def _flag(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "")


def _words(value: str) -> tuple[str, ...]:
    return tuple(w for w in value.replace(",", " ").split() if w)


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    """A way to sign in: GitHub (OAuth 2.0) or any OpenID Connect provider found by its discovery URL."""

    #: In URLs (`/v1/auth/oauth/{id}`) and in linked identities: `github`, or the operator's name.
    id: str
    kind: str  # "github" | "oidc"
    client_id: str
    client_secret: str
    #: Shown on the sign-in button.
    display_name: str = ""
    #: OIDC: `https://issuer/.well-known/openid-configuration`.
    discovery_url: str = ""
    scopes: str = "openid email profile"
    #: Take the provider's e-mail addresses as verified although it does not say so (`email_verified`):
    #: for an organisation's own provider whose addresses it assigns (Entra ID sends no such claim).
    trust_email: bool = False
    #: GitHub (or a GitHub Enterprise Server): its web and API addresses.
    github_url: str = "https://github.com"
    github_api_url: str = "https://api.github.com"


_PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def identity_providers_from_env(env: Mapping[str, str]) -> tuple[IdentityProvider, ...]:
    """GitHub from `OAUTH_GITHUB_CLIENT_ID`/`_SECRET` (as the seed; `OAUTH_GITHUB_URL`/`_API_URL` for GitHub
    Enterprise Server), and each OIDC provider named in `WRENN_OIDC_PROVIDERS` from
    `WRENN_OIDC_<NAME>_DISCOVERY_URL`, `_CLIENT_ID`, `_CLIENT_SECRET`, `_DISPLAY_NAME`, `_SCOPES`,
    `_TRUST_EMAIL`."""
    found: list[IdentityProvider] = []
    if env.get("OAUTH_GITHUB_CLIENT_ID"):
        found.append(
            IdentityProvider(
                id="github",
                kind="github",
                client_id=env["OAUTH_GITHUB_CLIENT_ID"],
                client_secret=env.get("OAUTH_GITHUB_CLIENT_SECRET", ""),
                display_name="GitHub",
                scopes="read:user user:email",
                github_url=env.get("OAUTH_GITHUB_URL", "https://github.com").rstrip("/"),
                github_api_url=env.get("OAUTH_GITHUB_API_URL", "https://api.github.com").rstrip("/"),
            )
        )
    for name in _words(env.get("WRENN_OIDC_PROVIDERS", "")):
        pid, prefix = name.lower(), f"WRENN_OIDC_{name.upper().replace('-', '_')}_"
        if not _PROVIDER_ID.match(pid) or pid == "github":
            raise ValueError(f"WRENN_OIDC_PROVIDERS: {name!r} is not a provider name ([a-z0-9-], not github)")
        missing = [k for k in ("DISCOVERY_URL", "CLIENT_ID") if not env.get(prefix + k)]
        if missing:
            raise ValueError(f"OIDC provider {pid}: set {', '.join(prefix + k for k in missing)}")
        found.append(
            IdentityProvider(
                id=pid,
                kind="oidc",
                client_id=env[prefix + "CLIENT_ID"],
                client_secret=env.get(prefix + "CLIENT_SECRET", ""),
                display_name=env.get(prefix + "DISPLAY_NAME", "") or name,
                discovery_url=env[prefix + "DISCOVERY_URL"],
                scopes=env.get(prefix + "SCOPES", "") or "openid email profile",
                trust_email=_flag(env.get(prefix + "TRUST_EMAIL", "")),
            )
        )
    return tuple(found)


#: Settings read from the environment when set: (field, variable, how to read it).
_FROM_ENV: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("ca_cert_file", "WRENN_CA_CERT", Path),
    ("ca_key_file", "WRENN_CA_KEY", Path),
    ("local_agent_token_file", "WRENN_LOCAL_AGENT_TOKEN_FILE", Path),
    ("monitor_interval_s", "WRENN_MONITOR_INTERVAL_S", float),
    ("shutdown_grace_s", "WRENN_SHUTDOWN_GRACE_S", float),
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
    ("build_egress", "WRENN_BUILD_EGRESS", _words),
    ("max_team_builds", "WRENN_MAX_TEAM_BUILDS", int),
    ("template_gc_grace_s", "WRENN_TEMPLATE_GC_GRACE_S", float),
    ("registry_insecure", "WRENN_REGISTRY_INSECURE", _words),
    ("public_url", "WRENN_PUBLIC_URL", lambda v: v.rstrip("/")),
    ("sandbox_domain", "WRENN_SANDBOX_DOMAIN", lambda v: v.strip().strip(".").lower()),
    ("tls_cert", "WRENN_TLS_CERT", Path),
    ("tls_key", "WRENN_TLS_KEY", Path),
    ("tls_sandbox_cert", "WRENN_TLS_SANDBOX_CERT", Path),
    ("tls_sandbox_key", "WRENN_TLS_SANDBOX_KEY", Path),
    ("smtp_host", "SMTP_HOST", str),
    ("smtp_port", "SMTP_PORT", int),
    ("smtp_username", "SMTP_USERNAME", str),
    ("smtp_password", "SMTP_PASSWORD", str),
    ("smtp_from", "SMTP_FROM", str),
    ("smtp_security", "SMTP_SECURITY", str),
    ("smtp_ca_file", "SMTP_CA_FILE", Path),
    ("require_activation", "WRENN_REQUIRE_ACTIVATION", _flag),
    ("account_grace_days", "WRENN_ACCOUNT_GRACE_DAYS", float),
    ("janitor_interval_s", "WRENN_JANITOR_INTERVAL_S", float),
    ("byoc_default", "WRENN_BYOC_DEFAULT", _flag),
    ("idp_allow_networks", "WRENN_IDP_ALLOW_NETWORKS", _words),
    ("metrics_token", "WRENN_METRICS_TOKEN", str),
    ("events_interval_s", "WRENN_EVENTS_INTERVAL_S", float),
    ("webhook_retry_s", "WRENN_WEBHOOK_RETRY_S", lambda v: tuple(float(w) for w in _words(v))),
    ("webhook_allow_networks", "WRENN_WEBHOOK_ALLOW_NETWORKS", _words),
    ("events_retention_days", "WRENN_EVENTS_RETENTION_DAYS", float),
    ("stats_interval_s", "WRENN_STATS_INTERVAL_S", float),
    ("metrics_flush_interval_s", "WRENN_METRICS_FLUSH_INTERVAL_S", float),
    ("metrics_retention_days", "WRENN_METRICS_RETENTION_DAYS", float),
    ("stats_retention_days", "WRENN_STATS_RETENTION_DAYS", float),
    ("usage_retention_days", "WRENN_USAGE_RETENTION_DAYS", float),
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
    #: At SIGTERM: seconds the requests under way get to finish before the rest are cut (streams,
    #: WebSockets, proxied connections: their clients reconnect; a create cut short is settled by the
    #: host monitor, as after a crash).
    shutdown_grace_s: float = 10.0
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
    #: The address users reach Wrenn at (`https://wrenn.example.com`): links in e-mails and identity
    #: providers' callbacks are made from it, never from a request's `Host`. Needed by both.
    public_url: str = ""
    #: The domain capsule ports are served under (`{port}-{capsule_id}.<sandbox_domain>`); empty: any
    #: domain. A registrable domain of its own (`wrenn-sandbox.net`), apart from `public_url`'s, keeps
    #: guest pages off the dashboard's site (docs/security.md).
    sandbox_domain: str = ""
    #: HTTPS on the listener (PEM files; `_tls`): the API and dashboard's certificate and key, and a
    #: wildcard one for `*.<sandbox_domain>` served to the traffic proxy's host names (SNI). None: plain HTTP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_sandbox_cert: Path | None = None
    tls_sandbox_key: Path | None = None
    #: Outgoing e-mail (activation, password reset, notices); off while `smtp_host` is empty. `security`:
    #: `starttls` (port 587 by default), `tls` (implicit TLS, 465) or `none` (25; a relay on loopback).
    #: `smtp_ca_file`: CAs to trust for the server's certificate instead of the system's.
    smtp_host: str = ""
    smtp_port: int = 0
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_security: str = "starttls"
    smtp_ca_file: Path | None = None
    smtp_timeout_s: float = 30.0
    #: New accounts must follow the link in an activation e-mail before they can sign in (needs SMTP).
    require_activation: bool = False
    activation_ttl_s: int = 24 * 3600
    #: Password reset links: valid this long, single-use; at most `reset_mails_per_hour` per account.
    reset_ttl_s: int = 15 * 60
    reset_mails_per_hour: int = 3
    #: A deleted account is kept (disabled) this long, then deleted for good by the janitor.
    account_grace_days: float = 15.0
    #: How often the janitor runs (hard deletes, expired tokens and sign-ins).
    janitor_interval_s: float = 3600.0
    #: Whether a team's owner may add BYOC hosts unless a platform admin set it for the team.
    byoc_default: bool = True
    #: Sign-in with identity providers (`identity_providers_from_env`).
    identity_providers: tuple[IdentityProvider, ...] = ()
    #: Networks the control plane may reach identity providers on although they are not public (an
    #: intranet Keycloak, a provider on loopback): every fetch for sign-in goes through the SSRF guard.
    idp_allow_networks: tuple[str, ...] = ()
    #: The bearer token Prometheus scrapes `/metrics` with; empty: `/metrics` answers 404.
    metrics_token: str = ""
    #: How often the event dispatcher looks for events to fan out and deliveries due.
    events_interval_s: float = 1.0
    #: Seconds to wait before each retry of a failed webhook delivery (the seed's 10 s and 30 s); once
    #: they are used up the delivery is `failed`.
    webhook_retry_s: tuple[float, ...] = (10.0, 30.0)
    webhook_timeout_s: float = 10.0
    #: How long a control plane holds a delivery it is making before another may take it over.
    delivery_lease_s: float = 60.0
    #: Networks webhooks may point to although they are not public (an intranet receiver, loopback in
    #: tests); host agents stay refused (`_ssrf`).
    webhook_allow_networks: tuple[str, ...] = ()
    #: Events and finished deliveries (with their attempts) are kept this long; the janitor removes them.
    events_retention_days: float = 30.0
    #: How often each team's running capsules, vCPUs and memory are sampled (`/v1/capsules/stats`; usage
    #: counts each sample as this many seconds).
    stats_interval_s: float = 10.0
    #: How often the samples host agents hold of running capsules are copied to the database (they are
    #: also copied before each pause and destroy).
    metrics_flush_interval_s: float = 60.0
    #: Per-capsule samples (CPU, memory, disk) are kept this long, capsule running, paused or destroyed.
    metrics_retention_days: float = 7.0
    #: Team capacity samples are kept this long (the stats' 30-day range and peaks need 30).
    stats_retention_days: float = 31.0
    #: Daily usage rolled up is kept this long.
    usage_retention_days: float = 400.0

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
        values["identity_providers"] = identity_providers_from_env(os.environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def mail_enabled(self) -> bool:
        return bool(self.smtp_host)

    def check(self) -> None:
        """Refuse settings that cannot work together (at start, before serving)."""
        if self.require_activation and not self.mail_enabled:
            raise ValueError("WRENN_REQUIRE_ACTIVATION needs outgoing e-mail: set SMTP_HOST (and SMTP_FROM)")
        if self.mail_enabled and not (self.smtp_from and self.public_url):
            raise ValueError("SMTP_HOST needs SMTP_FROM and WRENN_PUBLIC_URL (the links in e-mails)")
        if self.smtp_security not in ("starttls", "tls", "none"):
            raise ValueError("SMTP_SECURITY is starttls, tls or none")
        if self.identity_providers and not self.public_url:
            raise ValueError("identity providers need WRENN_PUBLIC_URL (their callback address)")
        if self.public_url and not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", self.public_url):
            raise ValueError("WRENN_PUBLIC_URL must be an http(s) URL without query or fragment")
        self._check_sandbox_domain()

    def _check_sandbox_domain(self) -> None:
        domain = self.sandbox_domain
        if not domain:
            return
        if not re.fullmatch(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}", domain):
            raise ValueError("WRENN_SANDBOX_DOMAIN must be a domain name (wrenn-sandbox.net)")
        host = (urlsplit(self.public_url).hostname or "") if self.public_url else ""
        if host and (host == domain or host.endswith("." + domain) or domain.endswith("." + host)):
            raise ValueError(
                "WRENN_SANDBOX_DOMAIN must lie apart from WRENN_PUBLIC_URL's host (neither inside the other)"
            )

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
