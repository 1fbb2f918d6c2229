"""Template builds in Wrenn's own API (docs/templates.md): the seed's recipe builds for admins
(`/v1/admin/builds`, every team's builds) and team-scoped builds for everyone (`/v1/templates/builds`), the
CLI's front door. A build is JSON, or multipart with a `config` field (that JSON) and an optional
`archive` (a tar, maybe gzipped: the files COPY steps take)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from .. import _errors
from .._deps import AdminCaller, Builds, Caller, Principal
from .._time import rfc3339
from ..db import Template, TemplateBuild
from ..service.recipes import RecipeError, parse

router = APIRouter(tags=["builds"])


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    #: The base: a base image, a team template (`name[:tag]`) or, with a `/`, an image of an OCI registry
    #: (`docker.io/library/python:3.11`); default `minimal`.
    base_template: str = Field(default="minimal", max_length=200)
    #: The seed's recipe: lines of RUN, START, ENV, WORKDIR, USER, COPY.
    recipe: list[str] | str | None = None
    healthcheck: str = Field(default="", max_length=4000)
    #: Or E2B's steps (`{type, args}`) with a start and a ready command.
    steps: list[dict[str, Any]] | None = None
    start_cmd: str = Field(default="", max_length=65536)
    ready_cmd: str = Field(default="", max_length=65536)
    ready_timeout_sec: int = Field(default=0, ge=0, le=3600)
    vcpus: int | None = None
    memory_mb: int | None = None
    disk_size_mb: int | None = None
    tags: list[str] = Field(default_factory=list, max_length=20)
    force: bool = False
    #: Accepted for the seed's clients: Wrenn adds no pre- or post-build steps.
    skip_pre_post: bool = True


#: The body as the OpenAPI document shows it (the route reads JSON or multipart itself): typed clients
#: (the dashboard's) are checked against it.
_DOCUMENTED = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": BuildConfig.model_json_schema()}},
    }
}


async def _body(request: Request) -> tuple[BuildConfig, bytes | None]:
    kind = request.headers.get("content-type", "")
    archive: bytes | None = None
    try:
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            raw = form.get("config")
            if not isinstance(raw, str):
                raise _errors.bad_request("a multipart build has a `config` field (JSON)")
            upload = form.get("archive")
            if upload is not None and not isinstance(upload, str):
                archive = await upload.read()
            config = BuildConfig.model_validate_json(raw)
        else:
            config = BuildConfig.model_validate(await request.json())
    except (ValidationError, ValueError) as exc:
        raise _errors.bad_request(f"invalid build: {exc}") from None
    return config, archive


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def create(
    caller: Principal, builds: Builds, config: BuildConfig, archive: bytes | None, kind: str
) -> TemplateBuild:
    archive_hash = hashlib.sha256(archive).hexdigest() if archive else ""
    try:
        if config.recipe is not None:
            spec = parse(config.recipe, config.healthcheck, archive_hash)
        else:
            spec = {"steps": [dict(s) for s in config.steps or []], "startCmd": config.start_cmd}
            for step in spec["steps"]:
                if step.get("type") == "COPY" and not step.get("filesHash"):
                    if not archive_hash:
                        raise RecipeError("a COPY step needs the build's archive")
                    step["filesHash"] = archive_hash
            if config.ready_cmd:
                spec["readyCmd"] = config.ready_cmd
    except RecipeError as exc:
        raise _errors.bad_request(str(exc)) from None
    if config.ready_timeout_sec:
        spec["readyTimeoutSec"] = config.ready_timeout_sec
    template, build = await builds.request(
        caller,
        config.name,
        tags=config.tags,
        vcpus=config.vcpus,
        memory_mb=config.memory_mb,
        disk_size_mb=config.disk_size_mb,
        kind="recipe" if config.recipe is not None else kind,
    )
    if archive:
        await builds.put_file(caller.team_id, archive_hash, _chunks(archive))
    # A template's name has no `/`: a base that has one is an image of an OCI registry.
    origin = "fromImage" if "/" in config.base_template else "fromTemplate"
    await builds.start(caller, template, build, {**spec, origin: config.base_template, "force": config.force})
    return build


def view(
    build: TemplateBuild, template: Template | None, logs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": build.id,
        "template_id": build.template_id,
        "name": template.name if template else "",
        "team_id": build.team_id,
        "kind": build.kind,
        "status": build.status,
        "steps": len(build.spec.get("steps", [])),
        "vcpus": build.vcpus,
        "memory_mb": build.memory_mb,
        "disk_size_mb": build.disk_size_mb,
        "size_bytes": build.size_bytes,
        "error": build.reason if build.status in ("error", "cancelled") else "",
        "failed_step": build.reason_step if build.status == "error" else "",
        "log_count": build.log_count,
        "created_at": rfc3339(build.created_at),
        "started_at": rfc3339(build.started_at) if build.started_at else None,
        "finished_at": rfc3339(build.finished_at) if build.finished_at else None,
    }
    if logs is not None:
        out["logs"] = logs
    return out


async def _logs(builds: Builds, build: TemplateBuild, offset: int, limit: int) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "time": rfc3339(e.at),
            "level": e.level,
            "step": e.step,
            "message": e.message,
        }
        for e in await builds.log_entries(build, offset, limit)
    ]


async def _views(builds: Builds, team_id: str | None) -> list[dict[str, Any]]:
    out = []
    for build in await builds.builds(team_id, 200):
        out.append(view(build, await builds.session.get(Template, build.template_id)))
    return out


async def _submit(request: Request, caller: Principal, builds: Builds, kind: str) -> dict[str, Any]:
    config, archive = await _body(request)
    build = await create(caller, builds, config, archive, kind)
    return view(build, await builds.session.get(Template, build.template_id))


async def _one(builds: Builds, team_id: str | None, build_id: str, offset: int, limit: int) -> dict[str, Any]:
    build = await builds.build(team_id, build_id)
    return view(
        build,
        await builds.session.get(Template, build.template_id),
        await _logs(builds, build, offset, limit),
    )


async def _cancel(builds: Builds, caller: Principal, team_id: str | None, build_id: str) -> dict[str, Any]:
    build = await builds.build(team_id, build_id)
    await builds.cancel(caller, build)
    return view(build, await builds.session.get(Template, build.template_id))


# --- the team's builds and built templates ----------------------------------------------------------------


@router.post("/v1/templates/builds", status_code=201, openapi_extra=_DOCUMENTED)
async def team_build(request: Request, caller: Caller, builds: Builds) -> dict[str, Any]:
    return await _submit(request, caller, builds, "dockerfile")


@router.get("/v1/templates/builds")
async def team_builds(caller: Caller, builds: Builds) -> list[dict[str, Any]]:
    return await _views(builds, caller.team_id)


@router.get("/v1/templates/builds/{build_id}")
async def team_build_get(
    build_id: str,
    caller: Caller,
    builds: Builds,
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=1000, ge=1, le=10000),
) -> dict[str, Any]:
    return await _one(builds, caller.team_id, build_id, offset, limit)


@router.post("/v1/templates/builds/{build_id}/cancel")
async def team_build_cancel(build_id: str, caller: Caller, builds: Builds) -> dict[str, Any]:
    return await _cancel(builds, caller, caller.team_id, build_id)


@router.get("/v1/templates")
async def team_templates(caller: Caller, builds: Builds) -> list[dict[str, Any]]:
    """The team's built templates, each with its current build and tags."""
    rows = await builds.session.execute(
        select(Template)
        .where(Template.team_id == caller.team_id, Template.type == "build")
        .order_by(Template.name)
    )
    out = []
    for template in rows.scalars():
        out.append(
            {
                "id": template.id,
                "name": template.name,
                "build_id": template.build_id,
                "vcpus": template.vcpus,
                "memory_mb": template.memory_mb,
                "disk_size_mb": template.disk_size_mb,
                "size_bytes": template.size_bytes,
                "tags": {t.tag: t.build_id for t in await builds.tags(template)},
                "created_at": rfc3339(template.created_at),
            }
        )
    return out


@router.delete("/v1/templates/{name}", status_code=204)
async def team_template_delete(name: str, caller: Caller, builds: Builds) -> Response:
    await builds.delete(caller, await builds.template(caller.team_id, name))
    return Response(status_code=204)


# --- admins: every team's builds --------------------------------------------------------------------------


@router.post("/v1/admin/builds", status_code=201, openapi_extra=_DOCUMENTED)
async def admin_build(request: Request, caller: AdminCaller, builds: Builds) -> dict[str, Any]:
    return await _submit(request, caller, builds, "recipe")


@router.get("/v1/admin/builds")
async def admin_builds(caller: AdminCaller, builds: Builds) -> list[dict[str, Any]]:
    return await _views(builds, None)


@router.get("/v1/admin/builds/{build_id}")
async def admin_build_get(
    build_id: str,
    caller: AdminCaller,
    builds: Builds,
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=1000, ge=1, le=10000),
) -> dict[str, Any]:
    return await _one(builds, None, build_id, offset, limit)


@router.post("/v1/admin/builds/{build_id}/cancel")
async def admin_build_cancel(build_id: str, caller: AdminCaller, builds: Builds) -> dict[str, Any]:
    return await _cancel(builds, caller, None, build_id)


__all__ = ["router"]
