"""The control plane's tables (SQLAlchemy 2, typed mappings). Schema changes go through Alembic
(db/migrations); a test checks the migrations and these models agree."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ._sealed import Sealed, SealedText
from ._states import CapsuleStatus, HostStatus, UserStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC: SQLite hands back naive datetimes (they are stored as UTC), PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as aware UTC on every database (SQLite stores it naive, as
    UTC; PostgreSQL as `timestamptz`): nothing above the database ever sees a naive datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UtcDateTime()}


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    #: The team's own quotas, set by a platform admin; null: the control plane's default.
    quota_capsules: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_vcpus: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    quota_disk_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    #: Whether the team's owner may add BYOC hosts (set by a platform admin); null: the platform default.
    byoc_enabled: Mapped[bool | None] = mapped_column(Boolean, default=None)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    #: argon2; null for an account that signs in with an identity provider only.
    password_hash: Mapped[str | None] = mapped_column(String(200), default=None)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: `UserStatus`: inactive (not activated yet), active, disabled (by an admin), deleted (soft).
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Every user JWT carries the generation it was issued in; bumping it (password change, sign-out
    #: everywhere, disable, delete) makes every earlier token invalid at once.
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: When the account was soft-deleted: the janitor deletes it for good after the grace period.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Identity(Base):
    """An identity-provider account linked to a user: (`provider`, `subject`) signs the user in."""

    __tablename__ = "oauth_identities"
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The provider's stable id of the account (OIDC `sub`, GitHub's numeric id).
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmailToken(Base):
    """A single-use token sent by e-mail (account activation, password reset): its SHA-256 only, spent by a
    conditional delete, refused after `expires_at`."""

    __tablename__ = "email_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column()


class OAuthFlow(Base):
    """A sign-in with an identity provider under way: what the callback needs (PKCE verifier, nonce, the
    redirect URI), keyed by the SHA-256 of its `state`; single-use, expiring. In the database so that the
    callback may reach any control plane."""

    __tablename__ = "oauth_flows"
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    #: `login` (sign in or up) or `link` (add the provider to `user_id`'s account).
    intent: Mapped[str] = mapped_column(String(8), default="login")
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), default=None)
    #: authlib's flow data: code_verifier, nonce, redirect_uri (sealed: the verifier is a secret).
    data: Mapped[str] = mapped_column(Sealed("oauth_flow.data", 2000))
    #: Where the dashboard goes afterwards (a path on this site).
    next_path: Mapped[str] = mapped_column(String(512), default="/")
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RevokedToken(Base):
    """A user JWT signed out before it expires (`jti`), kept until it would have expired."""

    __tablename__ = "revoked_tokens"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class HostTag(Base):
    __tablename__ = "host_tags"
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class Membership(Base):
    __tablename__ = "users_teams"
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiKey(Base):
    __tablename__ = "team_api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: SHA-256 of the key: keys are 128 random bits, so a fast hash is safe and lookups stay O(1).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(default=None)
    #: `member` (everything a key reaches) or `viewer` (reads only: GET routes, no WebSockets).
    role: Mapped[str] = mapped_column(String(16), default="member", server_default="member")
    #: After this the key is refused (null: it does not expire).
    expires_at: Mapped[datetime | None] = mapped_column(default=None)


class LoginFailure(Base):
    """Failed logins, for rate limiting without state outside the database."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    #: The client address the attempt came from.
    address: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class BootstrapToken(Base):
    """The one-time token that creates the platform's first admin (SHA-256 of it; the plaintext is in the
    data directory of the control plane that made it). One row at most, removed when used."""

    __tablename__ = "bootstrap_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(16), default="regular")
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), default=None)
    #: Where the host agent's API answers: http(s)://address:port
    address: Mapped[str] = mapped_column(String(300))
    #: The port of its traffic listener (`/proxy/...` only) on the same address; 0: not known yet.
    proxy_port: Mapped[int] = mapped_column(Integer, default=0)
    #: The base images built there: [{name, version, envd_version, kernel_version, description, aliases,
    #: memory_mb (a create's default for it; 0 from an older agent)}].
    images: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default=HostStatus.PENDING)
    arch: Mapped[str] = mapped_column(String(32), default="")
    cpu_cores: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    slot_capacity: Mapped[int] = mapped_column(Integer, default=0)
    accelerator: Mapped[str] = mapped_column(String(16), default="")
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Given with `--local-agent URL` (plain HTTP, no heartbeat: the monitor pings it instead).
    local: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The user who created the host (not a foreign key: the host outlives its creator's account).
    created_by: Mapped[str | None] = mapped_column(String(40), default=None)
    registered_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Its certificate names its id (`<id>.hosts.wrenn.internal`), which the control plane verifies on
    #: every call. False: registered before certificates did; its next heartbeat is told to refresh.
    cert_pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Free space on the agent's data filesystem and its 1-minute load average, as it last reported them
    #: (heartbeat, or `GetHostInfo` for a local agent); placement weighs them (null: not known yet).
    disk_free_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    cpu_load: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: Taken out of placement by an operator (`cordon`, `drain`): no new capsules; running ones stay.
    cordoned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class HostToken(Base):
    """A one-time registration token (64 hex, shown once; stored as SHA-256)."""

    __tablename__ = "host_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class HostRefreshToken(Base):
    """A host's refresh token (64 hex, stored as SHA-256); consumed and replaced on every use."""

    __tablename__ = "host_refresh_tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class Capsule(Base):
    __tablename__ = "sandboxes"
    __table_args__ = (UniqueConstraint("team_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), default=None)
    template: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=CapsuleStatus.PENDING, index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_size_mb: Mapped[int] = mapped_column(Integer, default=5120)
    timeout_sec: Mapped[int] = mapped_column(Integer, default=0)
    host_ip: Mapped[str] = mapped_column(String(64), default="")
    #: Encrypted at rest (`_sealed.Sealed`): both tokens are returned to the capsule's team.
    envd_token: Mapped[str] = mapped_column(Sealed("capsule.envd_token"), default="")
    #: Set when created with `allow_public_traffic=false`: the traffic proxy then requires it.
    traffic_access_token: Mapped[str | None] = mapped_column(
        Sealed("capsule.traffic_access_token"), default=None
    )
    error: Mapped[str] = mapped_column(String(4000), default="")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    last_active_at: Mapped[datetime | None] = mapped_column(default=None)
    last_updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Since when it is paused: the monitor hibernates capsules paused longer than configured.
    paused_at: Mapped[datetime | None] = mapped_column(default=None)
    #: The caller's own key/value labels (E2B's `metadata`), filterable in lists.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: A lifetime deadline (E2B's `timeout`): at `end_at` the monitor kills the capsule, or pauses it
    #: when `on_timeout` is "pause". Null: no deadline (the idle timeout alone applies).
    end_at: Mapped[datetime | None] = mapped_column(default=None)
    on_timeout: Mapped[str] = mapped_column(String(8), default="kill")
    #: A create retried with the same `Idempotency-Key` returns this capsule (per team), if the request
    #: hashes the same.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str] = mapped_column(String(64), default="")
    #: Traffic to it while paused resumes it (E2B's `autoResume`); else the proxy answers that it is paused.
    auto_resume: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: Its egress policy without secrets (service/network.py's public form); {}: open.
    network: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The header values of its egress rules, `{domain: {header: value}}` as JSON, sealed.
    network_secrets: Mapped[str] = mapped_column(SealedText("capsule.network_secrets"), default="")
    #: Its own egress CA (for header rules): the certificate its guest trusts, and the key (sealed).
    egress_ca_cert: Mapped[str] = mapped_column(Text, default="")
    egress_ca_key: Mapped[str] = mapped_column(SealedText("capsule.egress_ca_key"), default="")


class Template(Base):
    """A template made from a capsule's snapshot (memory, processes, disk). Its files live on one host,
    under the agent-side name `id`; teams address it by `name`."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("team_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16), default="snapshot")
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), default=None)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_size_mb: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The capsule it was made from (not a foreign key: the template outlives it).
    source_capsule_id: Mapped[str] = mapped_column(String(40), default="")
    #: Who commands run as in capsules started from it ("": the platform's default user).
    default_user: Mapped[str] = mapped_column(String(64), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: A built template (`type` "build"): the build its capsules start from (its default tag); null until
    #: a build of it succeeded. Its files are in the template store, reachable from every host.
    build_id: Mapped[str | None] = mapped_column(String(40), default=None)
    #: The default egress policy of its capsules (that of the capsule it was made from), and its secrets.
    network: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    network_secrets: Mapped[str] = mapped_column(SealedText("template.network_secrets"), default="")


class TemplateBuild(Base):
    """One build of a built template (docs/templates.md): what to build, its status and what it made."""

    __tablename__ = "template_builds"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    #: `waiting` (created, or queued once `queued_at` is set), `building`, `ready`, `error`, `cancelled`.
    status: Mapped[str] = mapped_column(String(16), default="waiting", index=True)
    #: Which front door made it: `e2b`, `recipe`, `dockerfile`.
    kind: Mapped[str] = mapped_column(String(16), default="e2b")
    #: The build request: base, steps, start and ready commands, force.
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mb: Mapped[int] = mapped_column(Integer, default=512)
    disk_size_mb: Mapped[int] = mapped_column(Integer, default=5120)
    #: What the build made (the agent's `BuiltTemplate`: blobs, defaults), once `ready`.
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    reason_step: Mapped[str] = mapped_column(String(16), default="")
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), default=None)
    #: The control plane running it and until when its claim holds (renewed while it runs).
    worker: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The OCI registry's credentials of `fromImageRegistry` ("user:password"), encrypted at rest.
    registry_auth: Mapped[str | None] = mapped_column(Sealed("build.registry_auth", 2048), default=None)
    log_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(40), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class TemplateBuildLog(Base):
    """A build's log, line by line, in order (`seq` from 0)."""

    __tablename__ = "template_build_logs"
    __table_args__ = (UniqueConstraint("build_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("template_builds.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    step: Mapped[str] = mapped_column(String(16), default="")
    message: Mapped[str] = mapped_column(Text, default="")


class TemplateFile(Base):
    """Files a team uploaded for COPY steps: a tar archive (maybe gzipped), named by the client's hash of
    the files in it (E2B's `filesHash`) within the team."""

    __tablename__ = "template_files"
    __table_args__ = (UniqueConstraint("team_id", "files_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    files_hash: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TemplateTag(Base):
    """A tag of a built template naming one of its builds (`default`: the latest that succeeded)."""

    __tablename__ = "template_tags"
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("template_builds.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLog(Base):
    __tablename__ = "audit_logs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(40), default="")
    actor_name: Mapped[str] = mapped_column(String(320), default="")
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="success")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Event(Base):
    """Something that happened (`capsule.paused`, `host.down`), recorded in the transaction of the change
    itself: the outbox the dispatcher fans out to the team's channels (`dispatched_at` set once it has)."""

    __tablename__ = "events"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    #: The team it concerns; null: the platform's (a shared host going down).
    team_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    type: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64), default="")
    actor_type: Mapped[str] = mapped_column(String(16), default="system")
    actor_id: Mapped[str] = mapped_column(String(40), default="")
    actor_name: Mapped[str] = mapped_column(String(320), default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: When the dispatcher made its deliveries; null: not yet.
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Channel(Base):
    """Where a team's events go: a `webhook` (its URL and signing secret) or a chat service (its webhook URL
    or tokens), sealed in `config`."""

    __tablename__ = "channels"
    __table_args__ = (UniqueConstraint("team_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(16))
    #: The provider's fields as JSON (`{"url", "secret"}`, `{"webhook_url"}`...), sealed: credentials.
    config: Mapped[str] = mapped_column(SealedText("channel.config"))
    #: The event types it receives.
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Delivery(Base):
    """One event to one channel, tried until delivered or out of attempts. A control plane claims it by
    setting `lease_until`; one that dies mid-way leaves the lease to expire, and another delivers it."""

    __tablename__ = "deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    #: The exact body sent (every attempt sends the same bytes).
    payload: Mapped[str] = mapped_column(Text)
    #: `pending`, `delivered` or `failed` (out of attempts).
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class DeliveryAttempt(Base):
    """One try of a delivery: the receiver's status code, or why there was none."""

    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str] = mapped_column(String(500), default="")
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class CapsuleSample(Base):
    """One sample of a capsule's use as its host measured it, copied to the database before each pause and
    destroy and periodically, so its history outlives the VM (the agent's rings go with it).

    These three tables have no foreign keys on purpose: SQLite alters a table by copying and dropping it,
    and the drop would cascade to them. Their rows go with their retention (the janitor)."""

    __tablename__ = "capsule_samples"
    capsule_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    #: Unix seconds.
    t: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    cpu_pct: Mapped[float] = mapped_column(Float)
    mem_bytes: Mapped[int] = mapped_column(BigInteger)
    disk_bytes: Mapped[int] = mapped_column(BigInteger)


class TeamSample(Base):
    """What a team had running at one instant (`t`, unix seconds, a multiple of the sampling interval, so
    that several control planes sampling the same instant write one row)."""

    __tablename__ = "team_samples"
    team_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    running: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    #: The seconds this sample stands for (the sampling interval when it was taken).
    interval_s: Mapped[int] = mapped_column(Integer)


class TeamUsageDay(Base):
    """A team's usage of one finished UTC day, rolled up from its samples."""

    __tablename__ = "team_usage_days"
    team_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    cpu_minutes: Mapped[float] = mapped_column(Float)
    ram_mb_minutes: Mapped[float] = mapped_column(Float)
