"""Hosts: creation with a one-time registration token, registration of an agent (credentials: a host JWT,
a rotating refresh token and a certificate from the internal CA), heartbeats, listing and deletion.

Every piece of state lives in the database: registration and refresh tokens are stored as SHA-256 hashes
and consumed with a conditional DELETE, so a token works once even with several control planes."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._agents import AgentPool
from .._ca import CertificateAuthority, split_address
from .._deps import Capsules, Db, UserCaller, audit_fields
from .._ids import new_id, new_token
from .._settings import Settings
from .._time import Timestamp
from ..db import (
    CapsuleStatus,
    Host,
    HostRefreshToken,
    HostStatus,
    HostToken,
    Membership,
    utcnow,
)
from ..service import events, maintenance
from ..service.hosts import active_capsules, byoc_allowed, managed_host
from ..service.hosts import is_admin as _is_admin
from ..service.hosts import may_manage as _may_manage
from ..service.hosts import visible_host as _visible

router = APIRouter(tags=["hosts"])
#: The largest value an integer column holds (PostgreSQL's `integer`).
INT32 = 2**31 - 1
log = logging.getLogger("wrenn.controlplane.hosts")
#: Capsules that keep a host from being deleted without `force`.


class HostCreate(BaseModel):
    #: `regular` (platform capacity, admins only) or `byoc` (a team's own server). Default: regular for
    #: an admin, byoc otherwise.
    type: Literal["regular", "byoc"] | None = None
    team_id: str | None = None
    provider: str = Field(default="", max_length=64)
    availability_zone: str = Field(default="", max_length=64)


class ImageFact(BaseModel):
    """A base image the host has built."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    version: str = Field(max_length=64)
    envd_version: str = Field(default="", max_length=32)
    kernel_version: str = Field(default="", max_length=128)
    description: str = Field(default="", max_length=500)
    aliases: list[str] = Field(default_factory=list, max_length=16)


class RegisterBody(BaseModel):
    token: str = Field(min_length=1, max_length=128)
    arch: str = Field(default="", max_length=32)
    cpu_cores: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)
    disk_gb: int = Field(default=0, ge=0)
    disk_free_mb: int | None = Field(default=None, ge=0, le=INT32)
    cpu_load: float = Field(default=0.0, ge=0, le=1e6)
    #: `ip:port` (or `name:port`) where the control plane reaches this agent; the certificate names it.
    address: str = Field(min_length=3, max_length=300)
    slot_capacity: int = Field(default=0, ge=0)
    accelerator: str = Field(default="", max_length=16)
    #: The port of the agent's traffic listener, on the same address.
    proxy_port: int = Field(default=0, ge=0, le=65535)
    images: list[ImageFact] = Field(default_factory=list, max_length=256)


class Usage(BaseModel):
    """A host's capacity and use, as its agent reports them (placement weighs them)."""

    cpu_cores: int | None = Field(default=None, ge=0, le=65536)
    cpu_load: float | None = Field(default=None, ge=0, le=1e6)
    memory_mb: int | None = Field(default=None, ge=0, le=INT32)
    disk_gb: int | None = Field(default=None, ge=0, le=INT32)
    disk_free_mb: int | None = Field(default=None, ge=0, le=INT32)

    def apply(self, host: Host) -> None:
        for name in ("cpu_cores", "cpu_load", "memory_mb", "disk_gb", "disk_free_mb"):
            value = getattr(self, name)
            if value is not None:
                setattr(host, name, value)


class HeartbeatBody(Usage):
    proxy_port: int | None = Field(default=None, ge=0, le=65535)
    images: list[ImageFact] | None = Field(default=None, max_length=256)


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=128)


class HostOut(BaseModel):
    id: str
    type: str
    team_id: str | None
    address: str
    status: str
    arch: str
    cpu_cores: int
    memory_mb: int
    disk_gb: int
    disk_free_mb: int | None
    cpu_load: float
    cordoned: bool
    slot_capacity: int
    accelerator: str
    local: bool
    last_heartbeat_at: Timestamp | None
    registered_at: Timestamp | None
    created_at: Timestamp


class HostCreated(BaseModel):
    host: HostOut
    registration_token: str


class Credentials(BaseModel):
    host: HostOut
    token: str
    refresh_token: str
    cert_pem: str
    key_pem: str
    ca_cert_pem: str


def _out(h: Host) -> HostOut:
    return HostOut(
        id=h.id,
        type=h.type,
        team_id=h.team_id,
        address=h.address,
        status=h.status,
        arch=h.arch,
        cpu_cores=h.cpu_cores,
        memory_mb=h.memory_mb,
        disk_gb=h.disk_gb,
        disk_free_mb=h.disk_free_mb,
        cpu_load=h.cpu_load,
        cordoned=h.cordoned,
        slot_capacity=h.slot_capacity,
        accelerator=h.accelerator,
        local=h.local,
        last_heartbeat_at=h.last_heartbeat_at,
        registered_at=h.registered_at,
        created_at=h.created_at,
    )


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _ca(request: Request) -> CertificateAuthority:
    ca: CertificateAuthority = request.app.state.ca
    return ca


async def _new_registration_token(
    session: AsyncSession, settings: Settings, host: Host, user_id: str | None
) -> str:
    token = new_token(32)
    session.add(
        HostToken(
            id=new_id("htok"),
            host_id=host.id,
            token_hash=_hash(token),
            created_by=user_id,
            expires_at=utcnow() + timedelta(seconds=settings.registration_token_ttl_s),
        )
    )
    return token


@router.post("/v1/hosts", status_code=201, response_model=HostCreated)
async def create_host(body: HostCreate, request: Request, caller: UserCaller, session: Db) -> HostCreated:
    """A `pending` host and its one-time registration token (valid 1 hour)."""
    admin = await _is_admin(session, caller)
    kind = body.type or ("regular" if admin else "byoc")
    team_id: str | None = None
    if kind == "regular":
        if not admin:
            raise _errors.forbidden("only an admin creates regular (platform) hosts")
    else:
        team_id = body.team_id or caller.team_id
        member = await session.get(Membership, (team_id, caller.user_id))
        if not admin and (member is None or member.role != "owner"):
            raise _errors.forbidden("only the team's owner (or an admin) creates a BYOC host for a team")
        if not admin and not await byoc_allowed(session, _settings(request), team_id):
            raise _errors.forbidden("this team may not add its own hosts (BYOC): a platform admin decides")
    host = Host(id=new_id("host"), type=kind, team_id=team_id, address="", status=HostStatus.PENDING)
    host.created_by = caller.user_id
    session.add(host)
    await session.flush()
    token = await _new_registration_token(session, _settings(request), host, caller.user_id)
    _audit.record(
        session, **audit_fields(caller), resource_type="host", resource_id=host.id, action="create", type=kind
    )
    await session.commit()
    return HostCreated(host=_out(host), registration_token=token)


@router.post("/v1/hosts/{host_id}/token", status_code=201, response_model=HostCreated)
async def new_token_for(host_id: str, request: Request, caller: UserCaller, session: Db) -> HostCreated:
    """Another registration token for a host that has not registered yet."""
    host, admin = await _visible(session, caller, host_id)
    await _may_manage(session, caller, host, admin)
    if host.status != HostStatus.PENDING:
        raise _errors.invalid_state(f"host {host_id} is already registered")
    token = await _new_registration_token(session, _settings(request), host, caller.user_id)
    await session.commit()
    return HostCreated(host=_out(host), registration_token=token)


async def _credentials(request: Request, session: AsyncSession, host: Host) -> Credentials:
    """A host JWT, a new refresh token (stored hashed) and a new certificate; the caller commits."""
    settings, ca = _settings(request), _ca(request)
    refresh = new_token(32)
    session.add(
        HostRefreshToken(
            id=new_id("hrt"),
            host_id=host.id,
            token_hash=_hash(refresh),
            expires_at=utcnow() + timedelta(seconds=settings.host_refresh_ttl_s),
        )
    )
    cert = ca.issue_host(host.id)
    host.cert_pinned = True
    return Credentials(
        host=_out(host),
        token=request.app.state.tokens.issue_host(host.id, settings.host_jwt_ttl_s),
        refresh_token=refresh,
        cert_pem=cert.cert_pem,
        key_pem=cert.key_pem,
        ca_cert_pem=ca.cert_pem,
    )


async def _consume(session: AsyncSession, model: Any, token: str) -> str:
    """The host id of a valid, unexpired token, which is deleted (committed by the caller); 401 otherwise.
    The conditional DELETE makes the token single-use even under concurrent requests."""
    row = (await session.execute(select(model).where(model.token_hash == _hash(token)))).scalar_one_or_none()
    if row is None:
        raise _errors.unauthorized("unknown or already used token")
    host_id = row.host_id
    consumed = await session.execute(
        delete(model)
        .where(model.id == row.id, model.expires_at > utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(consumed, "rowcount", 0) != 1:
        await session.execute(
            delete(model).where(model.id == row.id).execution_options(synchronize_session=False)
        )
        await session.commit()
        raise _errors.unauthorized("expired or already used token")
    return str(host_id)


@router.post("/v1/hosts/register", status_code=201, response_model=Credentials)
async def register(body: RegisterBody, request: Request, session: Db) -> Credentials:
    """An agent trades its registration token for credentials; the host becomes `online`."""
    name, port = split_address(body.address)
    if not name or port is None or not 0 < port < 65536:
        raise _errors.bad_request("address must be host:port (e.g. 10.0.0.5:50051)")
    host_id = await _consume(session, HostToken, body.token)
    host = await session.get(Host, host_id, with_for_update=True)
    if host is None:
        raise _errors.unauthorized("unknown or already used token")
    host.address = f"https://{body.address.strip()}"
    host.arch, host.cpu_cores, host.memory_mb, host.disk_gb = (
        body.arch, body.cpu_cores, body.memory_mb, body.disk_gb
    )  # fmt: skip
    host.slot_capacity, host.accelerator = body.slot_capacity, body.accelerator
    host.disk_free_mb, host.cpu_load = body.disk_free_mb, body.cpu_load
    host.proxy_port, host.images = body.proxy_port, [i.model_dump() for i in body.images]
    host.status, host.last_heartbeat_at, host.registered_at = HostStatus.ONLINE, utcnow(), utcnow()
    events.host_changed(session, host, up=True, actor=("host", host.id, host.address))
    # Registering again (a new token for a reinstalled host) revokes the old refresh tokens.
    await session.execute(
        delete(HostRefreshToken)
        .where(HostRefreshToken.host_id == host.id)
        .execution_options(synchronize_session=False)
    )
    creds = await _credentials(request, session, host)
    _audit.record(
        session,
        team_id=host.team_id,
        actor_type="host",
        actor_id=host.id,
        actor_name=host.address,
        resource_type="host",
        resource_id=host.id,
        action="register",
    )
    await session.commit()
    agents: AgentPool = request.app.state.agents
    agents.forget(host.id)
    log.info("host registered", extra={"host": host.id, "address": host.address})
    return creds


@router.post("/v1/hosts/auth/refresh", response_model=Credentials)
async def refresh(body: RefreshBody, request: Request, session: Db) -> Credentials:
    """A new host JWT, a new refresh token (the old one is spent) and a new certificate."""
    host_id = await _consume(session, HostRefreshToken, body.refresh_token)
    host = await session.get(Host, host_id)
    if host is None:
        raise _errors.unauthorized("unknown or already used token")
    creds = await _credentials(request, session, host)
    await session.commit()
    return creds


async def host_caller(request: Request, x_host_token: Annotated[str | None, Header()] = None) -> str:
    """The host id of the `X-Host-Token` JWT."""
    if not x_host_token:
        raise _errors.unauthorized("send X-Host-Token: <host token>")
    host_id = request.app.state.tokens.verify_host(x_host_token)
    if host_id is None:
        raise _errors.unauthorized("invalid or expired host token")
    return str(host_id)


HostCaller = Annotated[str, Depends(host_caller)]


@router.post("/v1/hosts/{host_id}/heartbeat", status_code=204)
async def heartbeat(
    host_id: str, caller: HostCaller, session: Db, body: HeartbeatBody | None = None
) -> Response:
    if caller != host_id:
        raise _errors.forbidden("a host token only heartbeats for its own host")
    host = await session.get(Host, host_id)
    if host is None:
        raise _errors.not_found(f"host {host_id}")  # deleted: the agent drops its credentials
    if not host.cert_pinned:
        # Registered before certificates named host ids: the control plane cannot verify who answers at
        # its address. A 401 makes the agent refresh its credentials (and its certificate) at once.
        raise _errors.unauthorized("refresh this host's credentials: its certificate does not name its id")
    host.last_heartbeat_at = utcnow()
    if body is not None:
        body.apply(host)
    if body is not None and body.proxy_port is not None:
        host.proxy_port = body.proxy_port
    if body is not None and body.images is not None:
        host.images = [i.model_dump() for i in body.images]
    if host.status != HostStatus.ONLINE:
        log.info("host back online", extra={"host": host.id, "was": host.status})
        host.status = HostStatus.ONLINE
        events.host_changed(session, host, up=True, actor=("host", host.id, host.address))
    await session.commit()
    return Response(status_code=204)


@router.get("/v1/hosts", response_model=list[HostOut])
async def list_hosts(caller: UserCaller, session: Db) -> list[HostOut]:
    """Admins: every host. Others: their team's (BYOC) hosts."""
    query = select(Host).order_by(Host.created_at)
    if not await _is_admin(session, caller):
        query = query.where(Host.team_id == caller.team_id)
    return [_out(h) for h in (await session.execute(query)).scalars()]


@router.get("/v1/hosts/{host_id}", response_model=HostOut)
async def get_host(host_id: str, caller: UserCaller, session: Db) -> HostOut:
    return _out((await _visible(session, caller, host_id))[0])


@router.delete("/v1/hosts/{host_id}", status_code=204)
async def delete_host(
    host_id: str, request: Request, caller: UserCaller, session: Db, force: bool = False
) -> Response:
    """409 `has_active_sandboxes` (with `sandbox_ids`) unless `force`; with force the capsules are
    stopped and the agent is told to `Terminate` (destroy everything and exit)."""
    host, admin = await _visible(session, caller, host_id)
    await _may_manage(session, caller, host, admin)
    active = await active_capsules(session, host.id)
    if active and not force:
        raise _errors.ApiError(
            409,
            "has_active_sandboxes",
            f"host {host_id} has {len(active)} active capsule(s); delete them or use ?force=true",
            sandbox_ids=[c.id for c in active],
        )
    agents: AgentPool = request.app.state.agents
    if host.address and host.status != HostStatus.PENDING:
        try:  # best effort: an unreachable agent learns of it from its next heartbeat (404)
            await agents.client(host.address, host_id=host.id).terminate(
                pb.TerminateRequest(), timeout_ms=30_000
            )
        except Exception as exc:  # noqa: BLE001 - the host goes either way
            log.warning("cannot terminate the host's agent", extra={"host": host.id, "error": str(exc)})
    for capsule in active:
        capsule.status, capsule.error = CapsuleStatus.STOPPED, "host deleted"
    agents.forget(host.id)
    extra: dict[str, Any] = {"force": force, "capsules": len(active)}
    _audit.record(
        session, **audit_fields(caller), resource_type="host", resource_id=host.id, action="delete", **extra
    )
    await session.delete(host)
    await session.commit()
    return Response(status_code=204)


# --- maintenance: cordon, uncordon, drain ---------------------------------------------------------------


class DrainBody(BaseModel):
    #: Seconds from now after which no further pause starts (a pause under way finishes).
    deadline_s: int = Field(default=300, ge=1, le=3600)


class DrainOut(BaseModel):
    host: HostOut
    paused: list[str]
    #: {capsule id: why not} (still booting, unreachable, the deadline, or the pause failed).
    not_paused: dict[str, str]


@router.post("/v1/hosts/{host_id}/cordon", response_model=HostOut)
async def cordon(host_id: str, caller: UserCaller, capsules: Capsules) -> HostOut:
    """No new capsules on the host (running ones stay; its paused ones are not resumed there)."""
    host = await managed_host(capsules.session, caller, host_id)
    return _out(await maintenance.set_cordoned(capsules, caller, host, True))


@router.post("/v1/hosts/{host_id}/uncordon", response_model=HostOut)
async def uncordon(host_id: str, caller: UserCaller, capsules: Capsules) -> HostOut:
    host = await managed_host(capsules.session, caller, host_id)
    return _out(await maintenance.set_cordoned(capsules, caller, host, False))


@router.post("/v1/hosts/{host_id}/drain", response_model=DrainOut)
async def drain(
    host_id: str, caller: UserCaller, capsules: Capsules, body: DrainBody | None = None
) -> DrainOut:
    """Cordon the host and pause its running capsules until the deadline; what was and was not paused."""
    host = await managed_host(capsules.session, caller, host_id)
    report = await maintenance.drain(capsules, caller, host, (body or DrainBody()).deadline_s)
    host = await capsules.session.get(Host, host_id) or host
    return DrainOut(host=_out(host), paused=report.paused, not_paused=report.not_paused)


class ResumeBody(BaseModel):
    capsules: list[Annotated[str, Field(max_length=64)]] = Field(max_length=1000)


class ResumeOut(BaseModel):
    resumed: list[str]
    #: {capsule id: why not} (not on this host, not paused, or the resume failed).
    not_resumed: dict[str, str]


@router.post("/v1/hosts/{host_id}/resume", response_model=ResumeOut)
async def resume(host_id: str, body: ResumeBody, caller: UserCaller, capsules: Capsules) -> ResumeOut:
    """Resume the given paused capsules of the host (those a drain paused, say), whatever their team."""
    host = await managed_host(capsules.session, caller, host_id)
    report = await maintenance.resume(capsules, caller, host, body.capsules)
    return ResumeOut(resumed=report.resumed, not_resumed=report.not_resumed)
