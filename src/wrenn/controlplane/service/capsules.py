"""The capsule lifecycle, in one place: create (and fork's many), destroy, pause, resume, thaw, and what
an operation on a running capsule needs first. Every route dialect (`/v1`, E2B's API, the traffic proxy,
the WebSockets) and the host monitor call down into this; none of them changes a capsule's status
itself.

A `CapsuleService` is cheap: one per request (or per monitor round), over that request's session. Each
method that changes a row commits it, and records what it did in the audit log and as an event (in the
same transaction); given the app's `Metrics`, it counts and times each operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._agents import AgentPool
from .._ids import new_id
from .._metrics import Metrics
from .._principal import Principal, audit_fields
from .._scheduler import pick_host
from .._settings import Settings
from ..db import Capsule, Host, HostStatus, Template, TemplateBuild, states, utcnow
from ..db import CapsuleStatus as S
from . import events, guest, quotas, usage
from .network import NetworkSpec, apply, policy_of

log = logging.getLogger("wrenn.controlplane.capsules")

#: The name of the platform's default image.
DEFAULT_TEMPLATE = "minimal"


@dataclass(frozen=True, slots=True)
class CreateSpec:
    """Everything a create may ask for, with the one set of defaults every dialect uses. A template of
    the team brings its own shape (vcpus, memory, disk), which replaces these."""

    template: str = DEFAULT_TEMPLATE
    vcpus: int = 1
    #: MiB; 0: the base image's own (its template's: 512 but for code-interpreter's 1024).
    memory_mb: int = 0
    disk_size_mb: int = 5120
    #: Idle seconds before the host pauses it (0: never).
    timeout_sec: int = 0
    #: False: the traffic proxy requires the capsule's traffic token on every request.
    allow_public_traffic: bool = True
    #: The guest's default environment.
    envs: dict[str, str] = field(default_factory=dict)
    #: The caller's labels (E2B's metadata).
    labels: dict[str, str] = field(default_factory=dict)
    #: A lifetime deadline (E2B's timeout) and what happens at it: "kill" or "pause".
    end_at: datetime | None = None
    on_timeout: str = "kill"
    #: Traffic to it while paused resumes it (E2B's `autoResume`).
    auto_resume: bool = True
    #: Who commands run as ("": the template's, else the platform's default user).
    default_user: str = ""
    idempotency_key: str | None = None
    request_hash: str = ""
    #: The egress policy; None: the template's, else open (service/network.py).
    network: NetworkSpec | None = None


DEFAULTS = CreateSpec()
#: The memory (MiB) of a capsule of a base image whose create asks for none, when its hosts do not say.
BASE_MEMORY_MB = 512


def booted(capsule: Capsule, sandbox: pb.SandboxInfo) -> None:
    """Mark a capsule `running` as its host booted it (by its create, or adopted by the host monitor)."""
    capsule.status, capsule.started_at, capsule.last_active_at = S.RUNNING, utcnow(), utcnow()
    capsule.host_ip = sandbox.host_ip
    capsule.metadata_ = {
        "kernel_version": sandbox.kernel_version,
        "envd_version": sandbox.envd_version,
        "from_snapshot": "true" if sandbox.from_snapshot else "false",
    }


def _audit_capsule(
    session: AsyncSession, capsule: Capsule, action: str, actor: Principal | None, **detail: Any
) -> None:
    """An audit entry for `capsule` in its team's log; no actor: the platform itself did it."""
    if actor is not None:
        fields = audit_fields(actor)
    else:
        fields = {"actor_type": "system", "actor_id": "control-plane", "actor_name": "control plane"}
    fields["team_id"] = capsule.team_id
    _audit.record(session, **fields, resource_type="capsule", resource_id=capsule.id, action=action, **detail)


async def base_images(session: AsyncSession) -> dict[str, dict[str, Any]]:
    """The platform's base images by name and by alias, as its hosts report them (the first host's facts
    win, the platform's own hosts before any team's: a team's BYOC host must not decide, say, the memory
    every other team's capsules of an image get): `{name, version, envd_version, kernel_version,
    description, aliases, memory_mb}`."""
    found: dict[str, dict[str, Any]] = {}
    query = select(Host.images).order_by(Host.team_id.is_not(None), Host.id)
    for images in (await session.execute(query)).scalars():
        for image in images or []:
            for name in (image.get("name", ""), *image.get("aliases", ())):
                found.setdefault(str(name), image)
    found.pop("", None)
    return found


class CapsuleService:
    def __init__(
        self, session: AsyncSession, agents: AgentPool, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.session = session
        self.agents = agents
        self.settings = settings
        self.metrics = metrics

    @contextlib.contextmanager
    def _measure(self, operation: str) -> Iterator[None]:
        if self.metrics is None:
            yield
            return
        with self.metrics.operation(operation):
            yield

    # --- finding ------------------------------------------------------------------------------------

    async def get(self, team_id: str, capsule_id: str) -> Capsule:
        """The team's capsule, in any status; 404 otherwise."""
        capsule = await self.session.get(Capsule, capsule_id)
        if capsule is None or capsule.team_id != team_id:
            raise _errors.not_found(f"capsule {capsule_id}")
        return capsule

    async def visible(self, team_id: str) -> list[Capsule]:
        """The team's capsules that have not ended, oldest first."""
        rows = await self.session.execute(
            select(Capsule)
            .where(Capsule.team_id == team_id, Capsule.status.in_(states.VISIBLE))
            .order_by(Capsule.created_at, Capsule.id)
        )
        return list(rows.scalars())

    async def host_of(self, capsule: Capsule) -> Host:
        """The capsule's host, online; 503 otherwise."""
        host = await self.session.get(Host, capsule.host_id) if capsule.host_id else None
        if host is None or host.status != HostStatus.ONLINE:
            message = f"the host of capsule {capsule.id} is unavailable"
            raise _errors.ApiError(503, "host_unavailable", message)
        return host

    async def running(self, team_id: str, capsule_id: str) -> tuple[Capsule, Host]:
        """The team's running capsule and its host, for an operation inside it; its activity is
        recorded (committed)."""
        capsule = await self.get(team_id, capsule_id)
        if capsule.status == S.MISSING:  # its host went silent: the VM may come back with it
            message = f"the host of capsule {capsule_id} is unreachable"
            raise _errors.ApiError(503, "host_unavailable", message)
        if capsule.status != S.RUNNING:
            raise _errors.invalid_state(f"capsule {capsule_id} is {capsule.status}")
        host = await self.host_of(capsule)
        capsule.last_active_at = utcnow()
        await self.session.commit()
        return capsule, host

    async def template(self, team_id: str, name: str) -> Template | None:
        """The team's template called `name`."""
        found = await self.session.execute(
            select(Template).where(Template.team_id == team_id, Template.name == name)
        )
        return found.scalar_one_or_none()

    # --- create -------------------------------------------------------------------------------------

    async def _resolve(self, spec: CreateSpec, team_id: str) -> tuple[Template | None, CreateSpec]:
        """What `spec.template` names for the team, and the spec as it will run: a template of the team
        (its capsules take its shape), or a base image some host reports. Nothing else: a name is never
        passed on for a host agent to interpret (another team's template ids are names there too)."""
        template = await self.template(team_id, spec.template)
        if template is not None and template.type == "build" and template.build_id is None:
            raise _errors.ApiError(
                409, "template_not_ready", f"template {spec.template!r} has no ready build yet"
            )
        if template is not None:
            spec = dataclasses.replace(
                spec, vcpus=template.vcpus, memory_mb=template.memory_mb, disk_size_mb=template.disk_size_mb
            )
        elif (image := (await base_images(self.session)).get(spec.template)) is None:
            online = await self.session.scalar(
                select(func.count()).select_from(Host).where(Host.status == HostStatus.ONLINE)
            )
            if not online:
                raise _errors.ApiError(503, "no_hosts_available", "no host is online")
            raise _errors.ApiError(404, "not_found", f"template {spec.template!r} not found")
        elif not spec.memory_mb:
            spec = dataclasses.replace(spec, memory_mb=int(image.get("memory_mb") or BASE_MEMORY_MB))
        limits = self.settings
        for name, asked, most in (
            ("vcpus", spec.vcpus, limits.max_vcpus),
            ("memory_mb", spec.memory_mb, limits.max_memory_mb),
            ("disk_size_mb", spec.disk_size_mb, limits.max_disk_mb),
        ):
            if asked > most:
                raise _errors.bad_request(f"{name}: at most {most} on this platform, not {asked}")
        return template, spec

    async def _host_for(self, template: Template | None, spec: CreateSpec, team_id: str) -> Host:
        """A snapshot template's capsules go to the host holding its files; others (a built template's
        files are in the template store, which every host reaches) to the least loaded host with room."""
        if template is None or template.type == "build":
            return await pick_host(self.session, spec.memory_mb, team_id, vcpus=spec.vcpus)
        host = await self.session.get(Host, template.host_id) if template.host_id else None
        if host is None or host.status != HostStatus.ONLINE:
            raise _errors.ApiError(
                503, "host_unavailable", f"the host holding template {template.name!r} is unavailable"
            )
        return host

    async def create(self, caller: Principal, spec: CreateSpec, count: int = 1) -> list[Capsule]:
        """Create `count` capsules of `spec` and boot them at once; each row ends `running` or `error`
        (committed), and the first failure is raised once all have ended. Shared by create and fork. The
        team's quotas admit all of them or none."""
        with self._measure("create"):
            return await self._create(caller, spec, count)

    async def _create(self, caller: Principal, spec: CreateSpec, count: int) -> list[Capsule]:
        template, spec = await self._resolve(spec, caller.team_id)
        wanted = quotas.Resources(
            count, count * spec.vcpus, count * spec.memory_mb, count * spec.disk_size_mb
        )
        await quotas.admit(self.session, self.settings, caller.team_id, wanted)
        host = await self._host_for(template, spec, caller.team_id)
        network = spec.network or (NetworkSpec.of_template(template) if template else None) or NetworkSpec()
        built = await self._built(template)
        capsules = [
            Capsule(
                id=new_id("cl"),
                team_id=caller.team_id,
                host_id=host.id,
                template=spec.template,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                timeout_sec=spec.timeout_sec,
                disk_size_mb=spec.disk_size_mb,
                envd_token=secrets.token_urlsafe(32),
                traffic_access_token=None if spec.allow_public_traffic else secrets.token_hex(32),
                status=S.PENDING,
                labels=dict(spec.labels),
                end_at=spec.end_at,
                on_timeout=spec.on_timeout,
                auto_resume=spec.auto_resume,
                idempotency_key=spec.idempotency_key,
                request_hash=spec.request_hash,
            )
            for _ in range(count)
        ]
        for capsule in capsules:
            apply(capsule, network)
            self._event(capsule, events.CAPSULE_CREATED, caller, template=spec.template)
        # In flight from before the rows exist until they have ended: the host monitor settles only the
        # rows of a control plane that died mid-way.
        async with self.agents.inflight.hold(c.id for c in capsules):
            self.session.add_all(capsules)
            await self.session.commit()
            failure = await self._boot(caller, spec, (template, built), host, network, capsules)
        if failure is not None:
            raise failure
        return capsules

    async def _boot(
        self,
        caller: Principal,
        spec: CreateSpec,
        source: tuple[Template | None, pb.BuiltTemplate | None],
        host: Host,
        network: NetworkSpec,
        capsules: list[Capsule],
    ) -> BaseException | None:
        """Boot the committed `pending` rows on `host` and commit each `running` or `error`; the first
        failure."""
        client = self.agents.client(host.address, host_id=host.id)
        template, built = source

        def boot(capsule: Capsule) -> Any:
            request = pb.CreateSandboxRequest(
                sandbox_id=capsule.id,
                template="" if template else spec.template,
                snapshot_template=(built.build_id if built else template.id) if template else "",
                built_template=built,
                vcpus=spec.vcpus,
                memory_mb=spec.memory_mb,
                disk_size_mb=spec.disk_size_mb,
                timeout_sec=spec.timeout_sec,
                team_id=caller.team_id,
                envd_access_token=capsule.envd_token,
                allow_internet=network.allow_internet_access,
                network=policy_of(capsule),
                default_env=spec.envs,
                default_user=spec.default_user or (template.default_user if template else ""),
            )
            return self.agents.call(host.id, client.create_sandbox(request, timeout_ms=600_000))

        # The boots go on even if the client goes away, so every row ends running or error.
        boots = asyncio.ensure_future(asyncio.gather(*(boot(c) for c in capsules), return_exceptions=True))
        results = await asyncio.shield(boots)
        failure: BaseException | None = None
        for capsule, created in zip(capsules, results, strict=True):
            if isinstance(created, BaseException):
                capsule.status = S.ERROR
                message = created.message if isinstance(created, _errors.ApiError) else str(created)
                capsule.error = message[:4000]
                failure = failure or created
                self._event(capsule, events.CAPSULE_ERROR, caller, error=capsule.error)
                continue
            booted(capsule, created.sandbox or pb.SandboxInfo())
            if user := spec.default_user or (template.default_user if template else ""):
                capsule.metadata_["default_user"] = user  # its templates inherit it
            _audit_capsule(self.session, capsule, "create", caller)
            self._event(capsule, events.CAPSULE_RUNNING, caller)
            made = {"capsule": capsule.id, "team": capsule.team_id, "host": capsule.host_id}
            log.info("capsule created", extra=made | {"template": capsule.template})
        await self.session.commit()
        return failure

    async def _built(self, template: Template | None) -> pb.BuiltTemplate | None:
        """A built template's files, as its current build made them (None for any other)."""
        if template is None or template.type != "build" or template.build_id is None:
            return None
        build = await self.session.get(TemplateBuild, template.build_id)
        if build is None or build.status != "ready":
            raise _errors.ApiError(
                409, "template_not_ready", f"template {template.name!r} has no ready build"
            )
        return pb.BuiltTemplate.from_json(json.dumps(build.result))

    def _event(self, capsule: Capsule, type_: str, actor: Principal | None, **data: Any) -> None:
        events.record(
            self.session, type_, team_id=capsule.team_id, resource_type="capsule", resource_id=capsule.id,
            actor=actor, **data,
        )  # fmt: skip

    # --- destroy ------------------------------------------------------------------------------------

    async def destroy(
        self, capsule: Capsule, actor: Principal | None, *, commit: bool = True, **detail: Any
    ) -> None:
        """Destroy the capsule's VM on its host and mark it `stopped`. A VM its host no longer knows
        counts as destroyed; any other agent error is raised and the row is left as it was. Without
        `commit` (a team deletion destroying many), the caller commits. `detail` goes to the audit log."""
        with self._measure("destroy"):
            await self._destroy(capsule, actor, commit=commit, **detail)

    async def _destroy(
        self, capsule: Capsule, actor: Principal | None, *, commit: bool, **detail: Any
    ) -> None:
        host = await self.session.get(Host, capsule.host_id) if capsule.host_id else None
        if capsule.status == S.HIBERNATED and (host is None or host.status != HostStatus.ONLINE):
            # its archive is in the shared cold storage: any online host can delete it
            host = (
                await self.session.execute(select(Host).where(Host.status == HostStatus.ONLINE).limit(1))
            ).scalar()
        if capsule.status == S.RUNNING and host is not None:
            await self._keep_metrics(capsule, host)
        if capsule.status != S.STOPPED and host is not None:
            try:
                await self.agents.call(
                    host.id,
                    self.agents.client(host.address, host_id=host.id).destroy_sandbox(
                        pb.DestroySandboxRequest(sandbox_id=capsule.id)
                    ),
                )
            except _errors.ApiError as exc:
                if exc.code != "not_found":  # already gone on the host: destroyed is destroyed
                    raise
        if capsule.status != S.STOPPED:
            self._event(capsule, events.CAPSULE_DESTROYED, actor, **detail)
        capsule.status = S.STOPPED
        _audit_capsule(self.session, capsule, "destroy", actor, **detail)
        if commit:
            await self.session.commit()

    # --- pause and resume ---------------------------------------------------------------------------

    async def pause(self, capsule: Capsule, actor: Principal | None) -> Host:
        """Pause a running capsule on its host and mark it `paused` (committed); its host. Pausing a
        paused capsule does nothing."""
        if capsule.status == S.PAUSED:
            return await self.host_of(capsule)
        with self._measure("pause"):
            return await self._pause(capsule, actor)

    async def _pause(self, capsule: Capsule, actor: Principal | None) -> Host:
        capsule, host = await self.running(capsule.team_id, capsule.id)
        await self._keep_metrics(capsule, host)
        await self.agents.call(
            host.id,
            self.agents.client(host.address, host_id=host.id).pause_sandbox(
                pb.PauseSandboxRequest(sandbox_id=capsule.id), timeout_ms=300_000
            ),
        )
        capsule.status, capsule.host_ip, capsule.paused_at = S.PAUSED, "", utcnow()
        _audit_capsule(self.session, capsule, "pause", actor)
        self._event(capsule, events.CAPSULE_PAUSED, actor)
        await self.session.commit()
        return host

    async def _keep_metrics(self, capsule: Capsule, host: Host) -> None:
        """Copy what the host sampled of the capsule to the database (its rings go with the VM), to serve
        while it sleeps and after it is destroyed. Best effort: a pause or destroy never fails for it."""
        try:
            live = await guest.metrics_window(guest.Guest(self.agents, capsule, host))
        except _errors.ApiError as exc:
            log.warning(
                "cannot keep a capsule's metrics", extra={"capsule": capsule.id, "error": exc.message}
            )
            return
        await usage.keep(self.session, capsule.id, live)

    async def resume(self, capsule: Capsule, actor: Principal | None) -> bool:
        """Bring a paused or hibernated capsule back and mark it `running` (committed); whether it had to.
        A snapshot its host cannot restore turns the capsule to `error`."""
        if capsule.status == S.RUNNING:
            return False
        if capsule.status not in (S.HIBERNATED, S.PAUSED):
            message = f"capsule {capsule.id} is {capsule.status}: only a paused one resumes"
            raise _errors.invalid_state(message)
        with self._measure("resume"):
            # `starting` only while in flight here: the host monitor settles it if this control plane dies.
            async with self.agents.inflight.hold([capsule.id]):
                if capsule.status == S.HIBERNATED:
                    await self._thaw(capsule)
                else:
                    host = await self.host_of(capsule)
                    if host.cordoned:
                        raise _errors.ApiError(
                            503,
                            "host_cordoned",
                            f"the host of capsule {capsule.id} is cordoned for maintenance: resume it once"
                            " the host is uncordoned",
                        )
                    await self._admit_wake(capsule)
                    capsule.status = S.STARTING  # counted against the team's quota from now on
                    await self.session.commit()
                    rpc = self.agents.client(host.address, host_id=host.id).resume_sandbox(
                        pb.ResumeSandboxRequest(sandbox_id=capsule.id, network=policy_of(capsule)),
                        timeout_ms=300_000,
                    )
                    await self._wake(capsule, host, rpc, on_failure=S.PAUSED)
                _audit_capsule(self.session, capsule, "resume", actor)
                self._event(capsule, events.CAPSULE_RESUMED, actor)
                await self.session.commit()
        return True

    async def _thaw(self, capsule: Capsule) -> None:
        """A hibernated capsule wakes on whichever host has room (hosts share the cold storage)."""
        await self._admit_wake(capsule)
        host = await pick_host(self.session, capsule.memory_mb, capsule.team_id, vcpus=capsule.vcpus)
        capsule.status, capsule.host_id = S.STARTING, host.id  # counted on that host from now on
        await self.session.commit()
        rpc = self.agents.client(host.address, host_id=host.id).thaw_sandbox(
            pb.ThawSandboxRequest(sandbox_id=capsule.id, network=policy_of(capsule)), timeout_ms=900_000
        )
        await self._wake(capsule, host, rpc, on_failure=S.HIBERNATED)

    async def _admit_wake(self, capsule: Capsule) -> None:
        """A capsule that wakes takes CPU and memory again: the team's quotas must admit it."""
        wanted = quotas.Resources(1, capsule.vcpus, capsule.memory_mb)
        await quotas.admit(self.session, self.settings, capsule.team_id, wanted)

    async def _wake(self, capsule: Capsule, host: Host, rpc: Awaitable[Any], on_failure: S) -> None:
        """Await the agent's resume or thaw and mark the capsule `running` on `host`. A snapshot the host
        cannot restore turns it to `error`; any other failure leaves it `on_failure` (committed)."""
        try:
            woken = await self.agents.call(host.id, rpc)
        except _errors.ApiError as exc:
            if exc.code == "snapshot_unusable":
                capsule.status, capsule.error = S.ERROR, exc.message[:4000]
                self._event(capsule, events.CAPSULE_ERROR, None, error=capsule.error)
            else:
                capsule.status = on_failure
            await self.session.commit()
            raise
        capsule.status, capsule.last_active_at, capsule.paused_at = S.RUNNING, utcnow(), None
        capsule.host_ip = woken.sandbox.host_ip if woken.sandbox else ""
