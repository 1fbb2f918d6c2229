"""Templates built from steps (docs/templates.md): one pipeline behind three front doors (E2B's template
API, the seed's recipe builds, the CLI's Dockerfiles).

A built template is a `templates` row of type `build`, team-owned like every template; each build of it is
a `template_builds` row. A build is created `waiting`, queued once its spec is given (`queued_at`), claimed
by one control plane's `BuildWorker` (`building`), run on a host agent (`BuildTemplate`, whose log lines
land in `template_build_logs` as they come), and ends `ready` (the template's current build and its
`default` tag now name it), `error` (with the failed step and its last lines) or `cancelled`.

A build's files (the archives its COPY steps unpack) are uploaded by the client beforehand, per team, and
handed to the agent before the build. Its result names blobs in the template store, which every host
reaches: capsules of the template start on any host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._agents import AgentPool, agent_error
from .._ids import new_id
from .._principal import Principal, audit_fields
from .._scheduler import pick_host
from .._settings import Settings
from .._ssrf import AddressGuard, agent_addresses
from ..db import (
    Capsule,
    Host,
    HostStatus,
    Template,
    TemplateBuild,
    TemplateBuildLog,
    TemplateFile,
    TemplateTag,
    states,
    utcnow,
)
from . import events
from .capsules import CapsuleService, base_images

log = logging.getLogger("wrenn.controlplane.builds")

NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
TAG = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
HASH = re.compile(r"^[0-9a-f]{64}$")
STEP_TYPES = ("RUN", "COPY", "ENV", "WORKDIR", "USER")
#: E2B's base image names that are Wrenn's base images.
OCI_REFERENCE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:/@+-]{0,254}$")
KNOWN_IMAGES = {"e2bdev/base": "minimal", "base": "minimal", "e2bdev/code-interpreter": "code-interpreter"}
DEFAULT_TAG = "default"
#: Statuses of a build that has not ended.
LIVE = ("waiting", "building")
LEASE_S = 60.0


def split_name(name: str) -> tuple[str, str]:
    """E2B's `name`, `name:tag` or `namespace/name:tag` as (name, tag)."""
    base, _, tag = name.rsplit("/", 1)[-1].partition(":")
    return base, tag or DEFAULT_TAG


def registry_of(reference: str) -> str:
    """The registry an image reference names (Docker's rule: a first part with a dot, a colon or
    `localhost`); docker.io otherwise."""
    first, _, rest = reference.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "docker.io"


def image_name(reference: str) -> str | None:
    """The base image an E2B image reference means, if it is one of ours (`e2bdev/base`, `minimal`)."""
    bare = reference.split("@", 1)[0]
    if ":" in bare.rsplit("/", 1)[-1]:
        bare = bare.rsplit(":", 1)[0]
    bare = bare.removeprefix("docker.io/").removeprefix("library/")
    return KNOWN_IMAGES.get(bare, bare if NAME.match(bare) and "/" not in bare else None)


class BuildService:
    def __init__(self, capsules: CapsuleService) -> None:
        self.capsules = capsules
        self.session: AsyncSession = capsules.session
        self.agents = capsules.agents
        self.settings: Settings = capsules.settings

    # --- finding -------------------------------------------------------------------------------------

    async def template(self, team_id: str, ref: str) -> Template:
        """The team's built template by id or name; 404 otherwise (another team's is not found either)."""
        name, _ = split_name(ref)
        found = await self.session.execute(
            select(Template).where(
                Template.team_id == team_id,
                Template.type == "build",
                (Template.id == ref) | (Template.name == name),
            )
        )
        template = found.scalars().first()
        if template is None:
            raise _errors.ApiError(404, "template_not_found", f"template {ref[:80]!r} not found")
        return template

    async def build(
        self, team_id: str | None, build_id: str, template_id: str | None = None
    ) -> TemplateBuild:
        """A build of the team's (any team's for `team_id` None: an admin); 404 otherwise."""
        build = await self.session.get(TemplateBuild, build_id)
        if (
            build is None
            or (team_id is not None and build.team_id != team_id)
            or (template_id is not None and template_id not in (build.template_id, ""))
        ):
            raise _errors.ApiError(404, "build_not_found", f"build {build_id[:80]!r} not found")
        return build

    async def builds(self, team_id: str | None, limit: int = 100) -> list[TemplateBuild]:
        query = select(TemplateBuild).order_by(TemplateBuild.created_at.desc()).limit(limit)
        if team_id is not None:
            query = query.where(TemplateBuild.team_id == team_id)
        return list((await self.session.execute(query)).scalars())

    # --- requesting a build ----------------------------------------------------------------------------

    async def request(
        self,
        caller: Principal,
        name: str,
        *,
        tags: list[str] | None = None,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        disk_size_mb: int | None = None,
        kind: str = "e2b",
    ) -> tuple[Template, TemplateBuild]:
        """A new build of the team's template `name` (made now when it has none): `waiting` until started."""
        base, tag = split_name(name)
        wanted = sorted({tag, *(tags or [])})
        if not NAME.match(base) or not all(TAG.match(t) for t in wanted):
            raise _errors.bad_request("a template name is 1-64 of [a-zA-Z0-9._-], a tag 1-128 of them")
        limits = self.settings
        vcpus, memory_mb = vcpus or 1, memory_mb or 512
        disk_size_mb = disk_size_mb or 5120
        if not (1 <= vcpus <= limits.max_vcpus and 256 <= memory_mb <= limits.max_memory_mb):
            raise _errors.bad_request(f"cpuCount 1-{limits.max_vcpus}, memoryMB 256-{limits.max_memory_mb}")
        if not 1024 <= disk_size_mb <= limits.max_disk_mb:
            raise _errors.bad_request(f"the disk is 1024-{limits.max_disk_mb} MiB")
        if base in await base_images(self.session):
            raise _errors.conflict(f"{base!r} is the name of a base image", "name_reserved")
        template = await self.capsules.template(caller.team_id, base)
        if template is not None and template.type != "build":
            raise _errors.conflict(f"the team has a snapshot template named {base!r}", "template_name_taken")
        if template is None:
            template = Template(
                id=new_id("tpl"),
                team_id=caller.team_id,
                name=base,
                type="build",
                host_id=None,
                vcpus=vcpus,
                memory_mb=memory_mb,
                disk_size_mb=disk_size_mb,
            )
            self.session.add(template)
            await self.session.flush()
        live = await self.session.scalar(
            select(func.count())
            .select_from(TemplateBuild)
            .where(TemplateBuild.team_id == caller.team_id, TemplateBuild.status.in_(LIVE))
        )
        if (live or 0) >= self.settings.max_team_builds:
            raise _errors.ApiError(429, "too_many_builds", f"the team has {live} builds waiting or running")
        build = TemplateBuild(
            id=str(uuid.uuid4()),
            template_id=template.id,
            team_id=caller.team_id,
            kind=kind,
            vcpus=vcpus,
            memory_mb=memory_mb,
            disk_size_mb=disk_size_mb,
            spec={"tags": wanted},
            created_by=caller.actor_id,
        )
        self.session.add(build)
        _audit.record(
            self.session, **audit_fields(caller), resource_type="template", resource_id=base, action="build"
        )
        await self.session.commit()
        return template, build

    # --- files -----------------------------------------------------------------------------------------

    async def has_file(self, team_id: str, files_hash: str) -> bool:
        if not HASH.match(files_hash):
            raise _errors.bad_request("the files hash is 64 lowercase hex digits")
        found = await self.session.scalar(
            select(func.count())
            .select_from(TemplateFile)
            .where(TemplateFile.team_id == team_id, TemplateFile.files_hash == files_hash)
        )
        return bool(found)

    async def put_file(self, team_id: str, files_hash: str, body: AsyncIterator[bytes]) -> int:
        """Keep an uploaded archive (a tar, maybe gzipped) for the team's COPY steps; its size."""
        data = bytearray()
        async for chunk in body:
            data.extend(chunk)
            if len(data) > self.settings.max_upload_bytes:
                raise _errors.ApiError(413, "too_large", f"at most {self.settings.max_upload_bytes} bytes")
        if not data.startswith(b"\x1f\x8b") and data[257:262] != b"ustar":
            raise _errors.bad_request("the upload is not a tar archive (plain or gzipped)")
        await self.session.execute(
            delete(TemplateFile).where(TemplateFile.team_id == team_id, TemplateFile.files_hash == files_hash)
        )
        self.session.add(
            TemplateFile(
                team_id=team_id,
                files_hash=files_hash,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                data=bytes(data),
            )
        )
        await self.session.commit()
        return len(data)

    # --- starting ---------------------------------------------------------------------------------------

    async def start(
        self, caller: Principal, template: Template, build: TemplateBuild, body: dict[str, Any]
    ) -> None:
        """Give a waiting build its spec and queue it. `body` is E2B's `TemplateBuildStartV2`."""
        if build.status != "waiting" or build.queued_at is not None:
            raise _errors.conflict(f"build {build.id} was already started", "build_started")
        steps = body.get("steps") or []
        if not isinstance(steps, list) or len(steps) > 500:
            raise _errors.bad_request("steps: a list of at most 500")
        checked = []
        for index, raw in enumerate(steps, 1):
            if not isinstance(raw, dict) or raw.get("type") not in STEP_TYPES:
                raise _errors.bad_request(f"step {index}: type is one of {', '.join(STEP_TYPES)}")
            args = raw.get("args") or []
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise _errors.bad_request(f"step {index}: args is a list of strings")
            step = {"type": raw["type"], "args": args, "force": bool(raw.get("force"))}
            if isinstance(raw.get("timeoutSec"), int) and 0 < raw["timeoutSec"] <= 86400:
                step["timeoutSec"] = raw["timeoutSec"]
            if raw["type"] == "COPY":
                files_hash = str(raw.get("filesHash") or "")
                if not await self.has_file(caller.team_id, files_hash):
                    raise _errors.bad_request(
                        f"step {index}: the files of this COPY ({files_hash[:12]}) were not uploaded"
                    )
                step["filesHash"] = files_hash
            checked.append(step)
        base = await self._base(caller.team_id, body)
        build.registry_auth = self._registry_auth(body.get("fromImageRegistry"))
        for key in ("startCmd", "readyCmd"):
            if body.get(key) is not None and not isinstance(body.get(key), str):
                raise _errors.bad_request(f"{key} is a string")
        build.spec = {
            **build.spec,
            "base": base,
            "steps": checked,
            "startCmd": body.get("startCmd") or "",
            "readyCmd": body.get("readyCmd") or "",
            "force": bool(body.get("force")),
            "readyTimeoutSec": int(body.get("readyTimeoutSec") or 0),
        }
        build.queued_at = utcnow()
        await self.session.commit()

    async def _base(self, team_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """What a build starts from: a base image, the team's built template (its build now), or an image
        of an OCI registry (not built yet)."""
        images = await base_images(self.session)
        if body.get("fromTemplate"):
            ref = str(body["fromTemplate"])
            name = image_name(ref)
            if name in images:
                return {"image": images[name].get("name", name)}
            parent = await self.template(team_id, ref)
            _, tag = split_name(ref)
            build_id = await self._tagged(parent, tag)
            return {"template": build_id}
        reference = str(body.get("fromImage") or "e2bdev/base")
        name = image_name(reference)
        if name in images and not body.get("fromImageRegistry"):
            return {"image": images[name].get("name", name)}
        if not OCI_REFERENCE.match(reference) or ".." in reference:
            raise _errors.bad_request(f"fromImage: {reference[:120]!r} is not an image reference")
        registry = registry_of(reference)
        insecure = registry in self.settings.registry_insecure
        if not insecure:
            await self._check_registry(registry)
        return {"oci": {"reference": reference, "insecure": insecure}}

    async def _check_registry(self, registry: str) -> None:
        """A registry a user names must be a public address (not the platform's network, not a host agent):
        the same guard as every URL the platform fetches for a user (`_ssrf`)."""
        host = registry.rsplit(":", 1)[0].strip("[]") if registry.count(":") <= 1 else registry.strip("[]")
        guard = AddressGuard(blocked=await agent_addresses(self.session))
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, 443)
        except OSError:
            raise _errors.bad_request(f"the registry {registry!r} does not resolve") from None
        problems = [p for p in (guard.problem(str(info[4][0])) for info in found) if p]
        if problems or not found:
            reason = problems[0] if problems else "no address"
            raise _errors.ApiError(400, "registry_refused", f"the registry {registry!r} is refused: {reason}")

    @staticmethod
    def _registry_auth(registry: object) -> str | None:
        """E2B's `fromImageRegistry`: a generic registry's user and password (AWS and GCP: not yet)."""
        if not registry:
            return None
        if not isinstance(registry, dict) or registry.get("type") != "registry":
            raise _errors.ApiError(400, "registry_not_supported", "fromImageRegistry: only type `registry`")
        user, password = registry.get("username"), registry.get("password")
        if (
            not isinstance(user, str)
            or not isinstance(password, str)
            or ":" in user
            or len(user + password) > 1000
        ):
            raise _errors.bad_request("fromImageRegistry: username (no colon) and password")
        return f"{user}:{password}"

    async def _tagged(self, template: Template, tag: str) -> str:
        row = await self.session.get(TemplateTag, (template.id, tag))
        if row is None:
            raise _errors.ApiError(
                404, "template_not_found", f"template {template.name}:{tag} has no ready build"
            )
        return row.build_id

    # --- status and logs ---------------------------------------------------------------------------------

    async def log_entries(
        self, build: TemplateBuild, offset: int, limit: int, level: str | None = None, forward: bool = True
    ) -> list[TemplateBuildLog]:
        query = select(TemplateBuildLog).where(TemplateBuildLog.build_id == build.id)
        if level:
            order = ["debug", "info", "warn", "error"]
            query = query.where(
                TemplateBuildLog.level.in_(order[order.index(level) :] if level in order else [])
            )
        if forward:
            query = query.where(TemplateBuildLog.seq >= offset).order_by(TemplateBuildLog.seq)
        else:
            query = query.where(TemplateBuildLog.seq <= offset).order_by(TemplateBuildLog.seq.desc())
        return list((await self.session.execute(query.limit(limit))).scalars())

    async def cancel(self, caller: Principal, build: TemplateBuild) -> None:
        """A waiting build ends now; a running one is cancelled by the control plane running it."""
        if build.status not in LIVE:
            raise _errors.invalid_state(f"build {build.id} is {build.status}")
        if build.status == "waiting":
            build.status, build.finished_at, build.reason = "cancelled", utcnow(), "cancelled"
            events.build_finished(self.session, build)
        else:
            build.cancel_requested = True
        _audit.record(
            self.session, **audit_fields(caller), resource_type="build", resource_id=build.id, action="cancel"
        )
        await self.session.commit()

    # --- tags ------------------------------------------------------------------------------------------

    async def tags(self, template: Template) -> list[TemplateTag]:
        rows = await self.session.execute(
            select(TemplateTag).where(TemplateTag.template_id == template.id).order_by(TemplateTag.tag)
        )
        return list(rows.scalars())

    async def assign(self, team_id: str, target: str, tags: list[str]) -> tuple[str, list[str]]:
        """Tag the build that `target` (`name:tag`) names with `tags` too."""
        if not tags or not all(TAG.match(t) for t in tags):
            raise _errors.bad_request("tags: 1-128 characters of [a-zA-Z0-9._-] each")
        template = await self.template(team_id, target)
        build_id = await self._tagged(template, split_name(target)[1])
        for tag in tags:
            await self.session.merge(TemplateTag(template_id=template.id, tag=tag, build_id=build_id))
        await self.session.commit()
        return build_id, tags

    async def untag(self, team_id: str, name: str, tags: list[str]) -> None:
        template = await self.template(team_id, name)
        if DEFAULT_TAG in tags:
            raise _errors.bad_request("the default tag names the latest build: it cannot be removed")
        await self.session.execute(
            delete(TemplateTag).where(TemplateTag.template_id == template.id, TemplateTag.tag.in_(tags))
        )
        await self.session.commit()

    # --- deleting --------------------------------------------------------------------------------------

    async def delete(self, caller: Principal, template: Template) -> None:
        """Delete a built template, its builds, tags and (on every host and in the store) its files; 409
        while capsules started from it exist."""
        standing = await self.session.scalar(
            select(func.count())
            .select_from(Capsule)
            .where(
                Capsule.team_id == template.team_id,
                Capsule.template == template.name,
                Capsule.status.not_in(states.ENDED),
            )
        )
        if standing:
            raise _errors.conflict(
                f"{standing} capsules stand on template {template.name!r}", "template_in_use"
            )
        running = await self.session.scalar(
            select(func.count())
            .select_from(TemplateBuild)
            .where(TemplateBuild.template_id == template.id, TemplateBuild.status == "building")
        )
        if running:
            raise _errors.conflict(f"template {template.name!r} is being built", "template_building")
        build_ids = list(
            (
                await self.session.execute(
                    select(TemplateBuild.id).where(TemplateBuild.template_id == template.id)
                )
            ).scalars()
        )
        await self.session.delete(template)
        _audit.record(
            self.session,
            **audit_fields(caller),
            resource_type="template",
            resource_id=template.name,
            action="delete",
        )
        await self.session.commit()
        await collect(self.session, self.agents, build_ids, self.settings.template_gc_grace_s)


async def collect(session: AsyncSession, agents: AgentPool, dropped: list[str], grace_s: float) -> None:
    """After builds were deleted: every online host drops their materialised templates and the blobs no
    remaining build references (one of them also from the shared store). Best effort: a host that misses
    it collects at the next deletion."""
    keep: set[str] = set()
    for result in (
        await session.execute(select(TemplateBuild.result).where(TemplateBuild.status == "ready"))
    ).scalars():
        keep.update(blob_digests(result or {}))
    hosts = list((await session.execute(select(Host).where(Host.status == HostStatus.ONLINE))).scalars())
    for index, host in enumerate(hosts):
        client = agents.client(host.address, host_id=host.id)
        try:
            for build_id in dropped:
                with contextlib.suppress(_errors.ApiError):
                    await agents.call(
                        host.id, client.delete_template(pb.DeleteTemplateRequest(name=build_id))
                    )
            await agents.call(
                host.id,
                client.collect_template_store(
                    pb.CollectTemplateStoreRequest(
                        keep=sorted(keep), store=index == 0, grace_sec=int(grace_s)
                    )
                ),
            )
        except _errors.ApiError as exc:
            log.warning(
                "template store collection failed on a host", extra={"host": host.id, "error": exc.message}
            )


def blob_digests(result: dict[str, Any]) -> set[str]:
    found = set()
    for key in ("kernel", "initrd", "vmstate", "memory"):
        if isinstance(result.get(key), dict) and result[key].get("sha256"):
            found.add(str(result[key]["sha256"]))
    for layer in result.get("disk") or []:
        if isinstance(layer, dict) and layer.get("sha256"):
            found.add(str(layer["sha256"]))
    return found


def built_template(result: dict[str, Any]) -> pb.BuiltTemplate:
    """The agent's `BuiltTemplate` from a build's stored result."""
    return pb.BuiltTemplate.from_json(json.dumps(result))


# --- signed upload URLs ------------------------------------------------------------------------------------


def upload_signature(key: bytes, template_id: str, files_hash: str, expires: int) -> str:
    message = f"{template_id}:{files_hash}:{expires}".encode()
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode().rstrip("=")


def check_upload(key: bytes, template_id: str, files_hash: str, expires: int, signature: str) -> bool:
    if expires < time.time():
        return False
    expected = upload_signature(key, template_id, files_hash, expires)
    return hmac.compare_digest(expected.encode(), signature.encode())  # str: ASCII only, a query is not


# --- the worker ------------------------------------------------------------------------------------------


class BuildWorker:
    """Runs queued builds: claims one (at most `build_concurrency` at once over all control planes, best
    effort), runs it on a host, and records its log and result. Several control planes share the queue; a
    claim is a conditional update, so each build runs once. A claim held by a control plane that stopped
    expires, and its build ends `error`."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], agents: AgentPool, settings: Settings
    ) -> None:
        self.sessions = sessions
        self.agents = agents
        self.settings = settings
        self.worker_id = f"cp-{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self._expire()
                while len(self._running) < self.settings.build_concurrency:
                    build_id = await self._claim()
                    if build_id is None:
                        break
                    task = asyncio.create_task(self._run(build_id))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive one bad round
                log.exception("build worker round failed")
            await asyncio.sleep(self.settings.build_poll_s)

    async def _claim(self) -> str | None:
        async with self.sessions() as session:
            building = await session.scalar(
                select(func.count()).select_from(TemplateBuild).where(TemplateBuild.status == "building")
            )
            if (building or 0) >= self.settings.build_concurrency:
                return None
            query = (
                select(TemplateBuild.id)
                .where(TemplateBuild.status == "waiting", TemplateBuild.queued_at.is_not(None))
                .order_by(TemplateBuild.queued_at)
                .limit(1)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            build_id = await session.scalar(query)
            if build_id is None:
                return None
            claimed = await session.execute(
                update(TemplateBuild)
                .where(TemplateBuild.id == build_id, TemplateBuild.status == "waiting")
                .values(
                    status="building",
                    worker=self.worker_id,
                    started_at=utcnow(),
                    lease_until=utcnow() + timedelta(seconds=LEASE_S),
                )
            )
            await session.commit()
            return build_id if claimed.rowcount == 1 else None  # type: ignore[attr-defined]

    async def _expire(self) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(TemplateBuild)
                .where(TemplateBuild.status == "building", TemplateBuild.lease_until < utcnow())
                .values(
                    status="error",
                    reason="the control plane running this build stopped",
                    finished_at=utcnow(),
                )
            )
            await session.commit()

    async def _run(self, build_id: str) -> None:
        async with self.sessions() as session:
            run = _Run(session, self.agents, self.settings, build_id)
            try:
                await run.go()
            except asyncio.CancelledError:
                await run.end("error", "the control plane stopped while building")
                raise
            except Exception as exc:
                log.exception("build failed", extra={"build": build_id})
                message = exc.message if isinstance(exc, _errors.ApiError) else f"{type(exc).__name__}: {exc}"
                await run.end("error", message)


class _Run:
    """One build, run by this control plane."""

    def __init__(self, session: AsyncSession, agents: AgentPool, settings: Settings, build_id: str) -> None:
        self.session = session
        self.agents = agents
        self.settings = settings
        self.build_id = build_id
        self.pending: list[TemplateBuildLog] = []
        self.last_error_step = ""

    async def _build(self) -> TemplateBuild:
        build = await self.session.get(TemplateBuild, self.build_id, populate_existing=True)
        assert build is not None
        return build

    def log(self, level: str, step: str, message: str) -> None:
        self.pending.append(TemplateBuildLog(build_id=self.build_id, level=level, step=step, message=message))

    async def flush(self) -> TemplateBuild:
        build = await self._build()
        for entry in self.pending:
            entry.seq = build.log_count
            build.log_count += 1
            self.session.add(entry)
        self.pending.clear()
        build.lease_until = utcnow() + timedelta(seconds=LEASE_S)
        await self.session.commit()
        return build

    async def end(self, status: str, reason: str = "", step: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.session.rollback()
        if reason:
            self.log("error" if status == "error" else "info", step or "finalize", reason)
        build = await self.flush()
        if build.status != "building":
            return
        build.status, build.finished_at = status, utcnow()
        build.reason, build.reason_step = reason[:20000], step or self.last_error_step
        events.build_finished(self.session, build)
        await self.session.commit()

    async def go(self) -> None:
        build = await self._build()
        spec = build.spec
        host = await pick_host(self.session, build.memory_mb + 256, vcpus=build.vcpus)
        build.host_id = host.id
        await self.session.commit()
        client = self.agents.client(host.address, host_id=host.id)
        request = pb.BuildTemplateRequest(
            build_id=build.id,
            team_id=build.team_id,
            start_cmd=spec.get("startCmd", ""),
            ready_cmd=spec.get("readyCmd", ""),
            ready_timeout_sec=int(spec.get("readyTimeoutSec") or 0),
            force=bool(spec.get("force")),
            vcpus=build.vcpus,
            memory_mb=build.memory_mb,
            disk_size_mb=build.disk_size_mb,
            egress=list(self.settings.build_egress),
            step_timeout_sec=int(self.settings.build_step_timeout_s),
        )
        base = spec.get("base") or {}
        if "template" in base:
            parent = await self.session.get(TemplateBuild, base["template"])
            if parent is None or parent.status != "ready":
                raise _errors.ApiError(409, "base_gone", "the template this build starts from is gone")
            request.base = Oneof("template", built_template(parent.result))  # type: ignore[assignment]
        elif "oci" in base:
            user, _, password = (build.registry_auth or "").partition(":")
            oci = base["oci"]
            source = pb.OciSource(
                reference=oci["reference"], username=user, password=password, insecure=oci["insecure"]
            )
            request.base = Oneof("oci", source)  # type: ignore[assignment]
        else:
            request.base = Oneof("image", str(base.get("image", "minimal")))  # type: ignore[assignment]
        for step in spec.get("steps", []):
            entry = pb.BuildStep(
                type=step["type"],
                args=step["args"],
                force=bool(step.get("force")),
                timeout_sec=step.get("timeoutSec", 0),
            )
            if step["type"] == "COPY":
                entry.files_hash = step["filesHash"]
                entry.file_sha256 = await self._send_file(client, host.id, build.team_id, step["filesHash"])
            request.steps.append(entry)
        self.log("info", "base", f"building on host {host.id}")
        await self.flush()
        result = await self._stream(client, host.id, request)
        if result is None:
            return
        build = await self._build()
        build.result = json.loads(result.to_json())
        build.size_bytes = result.size_bytes
        template = await self.session.get(Template, build.template_id)
        if template is not None:
            template.build_id = build.id
            template.size_bytes = result.size_bytes
            for tag in {DEFAULT_TAG, *build.spec.get("tags", [])}:
                await self.session.merge(TemplateTag(template_id=template.id, tag=tag, build_id=build.id))
        build.status, build.finished_at = "ready", utcnow()
        events.build_finished(self.session, build)
        await self.session.commit()
        log.info("build ready", extra={"build": build.id, "bytes": result.size_bytes})

    async def _send_file(self, client: Any, host_id: str, team_id: str, files_hash: str) -> str:
        row = (
            await self.session.execute(
                select(TemplateFile).where(
                    TemplateFile.team_id == team_id, TemplateFile.files_hash == files_hash
                )
            )
        ).scalar_one_or_none()
        if row is None:
            raise _errors.ApiError(409, "files_gone", f"the files {files_hash[:12]} are gone")
        data, digest = bytes(row.data), row.sha256

        async def messages() -> AsyncIterator[pb.PutBuildFileRequest]:
            meta = pb.PutBuildFileMeta(sha256=digest, size=len(data))
            yield pb.PutBuildFileRequest(content=Oneof("meta", meta))  # type: ignore[arg-type]
            for start in range(0, len(data), 1 << 20):
                yield pb.PutBuildFileRequest(content=Oneof("chunk", data[start : start + (1 << 20)]))  # type: ignore[arg-type]

        await self.agents.call(host_id, client.put_build_file(messages(), timeout_ms=600_000))
        return digest

    async def _failed(self, exc: BaseException, host_id: str) -> None:
        """The agent's stream ended in an error: a failed step (ABORTED, "step N: why") or another."""
        if isinstance(exc, ConnectError) and exc.code is Code.ABORTED and exc.message.startswith("step "):
            step, _, message = exc.message[5:].partition(": ")
            await self.end("error", message, step)
            return
        if isinstance(exc, ConnectError):
            await self.end("error", agent_error(exc, host_id).message, self.last_error_step)
            return
        if isinstance(exc, OSError):
            await self.end("error", f"host {host_id} is unreachable", self.last_error_step)
            return
        raise exc

    async def _stream(
        self, client: Any, host_id: str, request: pb.BuildTemplateRequest
    ) -> pb.BuiltTemplate | None:
        """Follow the agent's build, logging as it goes; the result, or None when it ended otherwise."""
        result: pb.BuiltTemplate | None = None
        last_flush = time.monotonic()
        events = client.build_template(request, timeout_ms=int(self.settings.build_timeout_s * 1000))
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for response in events:
                    await queue.put(response)
                await queue.put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                await queue.put(exc)

        reader = asyncio.create_task(pump())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    item = "tick"
                if isinstance(item, BaseException):
                    await self._failed(item, host_id)
                    return None
                if item is None:
                    break
                if item != "tick":
                    event = item.event
                    if event is not None and event.field == "log":
                        entry = event.value
                        self.log(entry.level or "info", entry.step, entry.message)
                        if entry.level == "error":
                            self.last_error_step = entry.step
                    elif event is not None and event.field == "result":
                        result = event.value
                if time.monotonic() - last_flush > 0.5 or item is None:
                    build = await self.flush()
                    last_flush = time.monotonic()
                    if build.cancel_requested:
                        reader.cancel()
                        await self.end("cancelled", "cancelled")
                        return None
            await self.flush()
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if result is None:
            await self.end("error", "the build ended without a result")
        return result
