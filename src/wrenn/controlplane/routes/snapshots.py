"""Templates from capsules' snapshots (`/v1/snapshots`), and forks: many capsules from one live capsule.

A template is made from a paused capsule (a running one is paused first and left paused, as in the seed
SDK); its files stay on the capsule's host, so its capsules are placed there."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.images import ALIASES, TEMPLATES
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._agents import AgentPool
from .._deps import Caller, Db, Principal, audit_fields
from .._ids import new_id
from ..db import Capsule, Host, Template
from . import capsules as _capsules

router = APIRouter(tags=["snapshots"])
NAME = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"


class SnapshotCreate(BaseModel):
    sandbox_id: str = Field(min_length=1, max_length=40)
    #: Default: `template-` and 8 hex digits.
    name: str | None = Field(default=None, pattern=NAME)


class TemplateOut(BaseModel):
    name: str
    type: Literal["base", "snapshot"]
    vcpus: int
    memory_mb: int
    size_bytes: int
    created_at: datetime | None
    platform: bool
    metadata: dict[str, Any]


class ForkBody(BaseModel):
    count: int = Field(default=1, ge=1, le=20)


def _out(t: Template) -> TemplateOut:
    return TemplateOut(
        name=t.name,
        type="snapshot",
        vcpus=t.vcpus,
        memory_mb=t.memory_mb,
        size_bytes=t.size_bytes,
        created_at=t.created_at,
        platform=False,
        metadata={"source_capsule_id": t.source_capsule_id, "disk_size_mb": t.disk_size_mb},
    )


async def _drop_on_host(agents: AgentPool, session: AsyncSession, template: Template) -> None:
    """Delete a template's files on its host (already gone counts as deleted)."""
    host = await session.get(Host, template.host_id) if template.host_id else None
    if host is None:
        return
    try:
        await agents.call(
            host.id, agents.client(host.address).delete_template(pb.DeleteTemplateRequest(name=template.id))
        )
    except _errors.ApiError as exc:
        if exc.code == "invalid_state":  # capsules stand on its disk
            raise _errors.conflict(exc.message, "template_in_use") from None
        if exc.code != "not_found":
            raise


async def make_template(
    session: AsyncSession, agents: AgentPool, caller: Principal, capsule: Capsule, name: str
) -> Template:
    """Pause `capsule` if it runs, and make template `name` of its snapshot on its host (committed)."""
    if capsule.status == "running":
        await _capsules.pause(session, agents, caller, capsule)
    elif capsule.status != "paused":
        raise _errors.invalid_state(f"capsule {capsule.id} is {capsule.status}: it must run or be paused")
    host = await session.get(Host, capsule.host_id) if capsule.host_id else None
    if host is None or host.status != "online":
        raise _errors.ApiError(503, "host_unavailable", f"the host of capsule {capsule.id} is unavailable")
    template_id = new_id("tpl")
    made = await agents.call(
        host.id,
        agents.client(host.address).create_template(
            pb.CreateTemplateRequest(sandbox_id=capsule.id, name=template_id), timeout_ms=300_000
        ),
    )
    info = made.template or pb.TemplateInfo()
    template = Template(
        id=template_id,
        team_id=caller.team_id,
        name=name,
        host_id=host.id,
        vcpus=info.vcpus or capsule.vcpus,
        memory_mb=info.memory_mb or capsule.memory_mb,
        disk_size_mb=info.disk_size_mb or capsule.disk_size_mb,
        size_bytes=info.size_bytes,
        source_capsule_id=capsule.id,
    )
    session.add(template)
    _audit.record(
        session, **audit_fields(caller), resource_type="snapshot", resource_id=name, action="create"
    )
    await session.commit()
    return template


async def claim_name(
    session: AsyncSession, agents: AgentPool, team_id: str, name: str, overwrite: bool = False
) -> None:
    """Make `name` free for a new template of the team: a base image's name is refused; the team's
    template of that name is replaced with `overwrite`, else refused."""
    if name in TEMPLATES or name in ALIASES:
        raise _errors.conflict(f"{name!r} is the name of a base image", "name_reserved")
    existing = await _capsules._template(session, team_id, name)
    if existing is None:
        return
    if not overwrite:
        raise _errors.conflict(f"the team has a template named {name!r}", "template_name_taken")
    await _drop_on_host(agents, session, existing)
    await session.delete(existing)
    await session.commit()


async def checkpoint(
    session: AsyncSession, agents: AgentPool, caller: Principal, capsule: Capsule, name: str
) -> Template:
    """A template of the capsule as it is now, which it then goes on from: a running one is paused for
    the copy and resumed (E2B's snapshots and forks; `/v1/snapshots` leaves it paused, as the seed)."""
    was_running = capsule.status == "running"
    template = await make_template(session, agents, caller, capsule, name)
    if was_running:
        await _capsules.resume(session, agents, capsule)
    return template


async def fork(
    session: AsyncSession, agents: AgentPool, caller: Principal, capsule: Capsule, count: int
) -> list[Capsule]:
    """`count` new capsules in the capsule's state now; they stand on a template `fork-<id>-<hex>`."""
    template = await checkpoint(session, agents, caller, capsule, f"fork-{capsule.id}-{secrets.token_hex(3)}")
    spec = _capsules.CapsuleCreate(template=template.name, timeout_sec=capsule.timeout_sec)
    return await _capsules.launch(session, agents, caller, spec, count=count)


@router.post("/v1/snapshots", status_code=201, response_model=TemplateOut)
async def create_snapshot(
    body: SnapshotCreate,
    request: Request,
    caller: Caller,
    session: Db,
    overwrite: bool = Query(default=False, description="replace the team's template of that name"),
) -> TemplateOut:
    """A template from a running or paused capsule: its memory (running processes included) and disk.
    The capsule is left paused. Capsules created with the template's name start in that state."""
    name = body.name or f"template-{secrets.token_hex(4)}"
    agents: AgentPool = request.app.state.agents
    if name in TEMPLATES or name in ALIASES:  # before the capsule lookup: a reserved name is refused outright
        raise _errors.conflict(f"{name!r} is the name of a base image", "name_reserved")
    capsule = await _capsules._capsule(session, caller, body.sandbox_id)
    await claim_name(session, agents, caller.team_id, name, overwrite)
    return _out(await make_template(session, agents, caller, capsule, name))


@router.get("/v1/snapshots", response_model=list[TemplateOut])
async def list_snapshots(
    caller: Caller, session: Db, type: Literal["base", "snapshot"] | None = None
) -> list[TemplateOut]:
    """The base images every host builds, and the team's templates."""
    found: list[TemplateOut] = []
    if type in (None, "base"):
        found += [
            TemplateOut(
                name=name,
                type="base",
                vcpus=0,
                memory_mb=0,
                size_bytes=0,
                created_at=None,
                platform=True,
                metadata={"description": recipe.description},
            )
            for name, recipe in sorted(TEMPLATES.items())
        ]
    if type in (None, "snapshot"):
        rows = await session.execute(
            select(Template).where(Template.team_id == caller.team_id).order_by(Template.created_at)
        )
        found += [_out(t) for t in rows.scalars()]
    return found


@router.delete("/v1/snapshots/{name}", status_code=204)
async def delete_snapshot(name: str, request: Request, caller: Caller, session: Db) -> Response:
    """Delete a template; 409 `template_in_use` while capsules started from it exist."""
    template = await _capsules._template(session, caller.team_id, name)
    if template is None:
        raise _errors.not_found(f"template {name}")
    await _drop_on_host(request.app.state.agents, session, template)
    await session.delete(template)
    _audit.record(
        session, **audit_fields(caller), resource_type="snapshot", resource_id=name, action="delete"
    )
    await session.commit()
    return Response(status_code=204)


@router.post(
    "/v1/capsules/{capsule_id}/fork",
    status_code=201,
    response_model=list[_capsules.CapsuleOut],
    tags=["capsules"],
)
async def fork_capsule(
    capsule_id: str, body: ForkBody, request: Request, caller: Caller, session: Db
) -> list[_capsules.CapsuleOut]:
    """`count` new capsules in the state of this one: its memory, processes and files at this moment.
    The capsule is paused for the copy and then runs on (a paused one stays paused). The forks stand
    on a template named `fork-<capsule id>-<hex>`, deletable once they are gone."""
    capsule = await _capsules._capsule(session, caller, capsule_id)
    forks = await fork(session, request.app.state.agents, caller, capsule, body.count)
    return [_capsules._out(c) for c in forks]
