"""E2B's template API, so that the unmodified `e2b` SDK's `Template` builder and `Template.build` work
(docs/templates.md, docs/e2b.md): request a build, upload COPY files through a signed URL, start it, follow
its status and logs, tags, aliases. Errors are E2B's `{"code", "message"}` (these paths are E2B's)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import _errors
from .._deps import Builds, Caller, Db
from .._time import rfc3339
from ..db import Template, TemplateBuild, TemplateBuildLog
from ..service.builds import check_upload, split_name, upload_signature

router = APIRouter(tags=["e2b templates"])

#: How long a signed upload URL is good for.
UPLOAD_TTL_S = 3600
_STATUS = {
    "waiting": "waiting",
    "building": "building",
    "ready": "ready",
    "error": "error",
    "cancelled": "error",
}


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(default=None, max_length=200)
    alias: str | None = Field(default=None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=20)
    cpuCount: int | None = None
    memoryMB: int | None = None


class TagsBody(BaseModel):
    target: str = Field(max_length=200)
    tags: list[str] = Field(max_length=20)


class UntagBody(BaseModel):
    name: str = Field(max_length=200)
    tags: list[str] = Field(max_length=20)


def _entry(row: TemplateBuildLog) -> dict[str, Any]:
    return {
        "timestamp": rfc3339(row.at),
        "message": row.message,
        "level": row.level or "info",
        "step": row.step,
    }


@router.post("/v3/templates", status_code=202)
@router.post("/v2/templates", status_code=202)
async def request_build(body: BuildRequest, caller: Caller, builds: Builds) -> dict[str, Any]:
    """`Template.build` first asks for a build: the template (made on first use) and a build id."""
    name = body.name or body.alias
    if not name:
        raise _errors.bad_request("name is required")
    template, build = await builds.request(
        caller, name, tags=body.tags, vcpus=body.cpuCount, memory_mb=body.memoryMB
    )
    return {
        "templateID": template.id,
        "buildID": build.id,
        "names": [template.name],
        "tags": build.spec.get("tags", []),
        "aliases": [template.name],
        "public": False,
    }


@router.get("/templates/{template_id}/files/{files_hash}", status_code=201)
async def file_upload_link(
    template_id: str, files_hash: str, request: Request, caller: Caller, builds: Builds
) -> dict[str, Any]:
    """Whether the team has these files already; if not, a URL to PUT them to, its grant in itself."""
    template = await builds.template(caller.team_id, template_id)
    if await builds.has_file(caller.team_id, files_hash):
        return {"present": True}
    expires = int(time.time()) + UPLOAD_TTL_S
    signature = upload_signature(request.app.state.upload_key, template.id, files_hash, expires)
    base = str(request.base_url).rstrip("/")
    query = urlencode({"expires": expires, "signature": signature})
    return {"present": False, "url": f"{base}/templates/{template.id}/files/{files_hash}/upload?{query}"}


@router.put("/templates/{template_id}/files/{files_hash}/upload", status_code=201)
async def upload_files(
    template_id: str,
    files_hash: str,
    request: Request,
    session: Db,
    builds: Builds,
    expires: int = Query(),
    signature: str = Query(max_length=100),
) -> Response:
    """The upload URL: its signature is the grant (the SDK sends no API key with it)."""
    if not check_upload(request.app.state.upload_key, template_id, files_hash, expires, signature):
        raise _errors.ApiError(403, "forbidden", "the upload URL is invalid or expired")
    template = await session.get(Template, template_id)
    if template is None:
        raise _errors.ApiError(404, "template_not_found", "the template is gone")
    await builds.has_file(template.team_id, files_hash)  # checks the hash's shape
    await builds.put_file(template.team_id, files_hash, request.stream())
    return Response(status_code=201)


@router.post("/v2/templates/{template_id}/builds/{build_id}", status_code=202)
async def start_build(
    template_id: str, build_id: str, body: dict[str, Any], caller: Caller, builds: Builds
) -> Response:
    template = await builds.template(caller.team_id, template_id)
    build = await builds.build(caller.team_id, build_id, template.id)
    await builds.start(caller, template, build, body)
    return Response(status_code=202)


def _info(build: TemplateBuild, entries: list[TemplateBuildLog]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "templateID": build.template_id,
        "buildID": build.id,
        "status": _STATUS.get(build.status, "error"),
        "logs": [],
        "logEntries": [_entry(e) for e in entries],
    }
    if build.status in ("error", "cancelled"):
        out["reason"] = {"message": build.reason or build.status, "step": build.reason_step or "finalize"}
    return out


@router.get("/templates/{template_id}/builds/{build_id}/status")
async def build_status(
    template_id: str,
    build_id: str,
    caller: Caller,
    builds: Builds,
    logsOffset: int = Query(default=0, ge=0),
    limit: int = Query(default=100, ge=1, le=100),
    level: str | None = Query(default=None, pattern="^(debug|info|warn|error)$"),
) -> dict[str, Any]:
    template = await builds.template(caller.team_id, template_id)
    build = await builds.build(caller.team_id, build_id, template.id)
    entries = await builds.log_entries(build, logsOffset, limit, level)
    info = _info(build, entries)
    if "reason" in info:
        tail = await builds.log_entries(build, max(build.log_count - 20, 0), 20)
        info["reason"]["logEntries"] = [_entry(e) for e in tail]
    return info


@router.get("/templates/{template_id}/builds/{build_id}/logs")
async def build_logs(
    template_id: str,
    build_id: str,
    caller: Caller,
    builds: Builds,
    cursor: int | None = Query(default=None, ge=0),
    limit: int = Query(default=100, ge=1, le=1000),
    direction: str = Query(default="forward", pattern="^(forward|backward)$"),
    level: str | None = Query(default=None, pattern="^(debug|info|warn|error)$"),
) -> dict[str, Any]:
    """The build's log from `cursor` (a line number; Wrenn's cursor), `forward` or `backward`."""
    template = await builds.template(caller.team_id, template_id)
    build = await builds.build(caller.team_id, build_id, template.id)
    forward = direction == "forward"
    start = cursor if cursor is not None else (0 if forward else max(build.log_count - 1, 0))
    entries = await builds.log_entries(build, start, limit, level, forward=forward)
    return {"logs": [_entry(e) for e in entries]}


@router.get("/templates/aliases/{alias}")
async def alias(alias: str, caller: Caller, builds: Builds) -> dict[str, Any]:
    """The team's template of that name (names are the team's own: another team's is not found)."""
    template = await builds.template(caller.team_id, alias)
    return {"templateID": template.id, "public": False}


@router.post("/templates/tags", status_code=201)
async def assign_tags(body: TagsBody, caller: Caller, builds: Builds) -> dict[str, Any]:
    build_id, tags = await builds.assign(caller.team_id, body.target, body.tags)
    return {"tags": tags, "buildID": build_id}


@router.delete("/templates/tags", status_code=204)
async def remove_tags(body: UntagBody, caller: Caller, builds: Builds) -> Response:
    await builds.untag(caller.team_id, body.name, body.tags)
    return Response(status_code=204)


@router.get("/templates/{template_id}/tags")
async def list_tags(template_id: str, caller: Caller, builds: Builds) -> list[dict[str, Any]]:
    template = await builds.template(caller.team_id, template_id)
    return [
        {"tag": t.tag, "buildID": t.build_id, "createdAt": rfc3339(t.created_at)}
        for t in await builds.tags(template)
    ]


@router.get("/templates")
async def list_templates(caller: Caller, builds: Builds) -> JSONResponse:
    """The team's built templates, E2B's `Template` shape."""
    out = []
    for build in await builds.builds(caller.team_id, 1000):
        if build.status != "ready":
            continue
        template = await builds.session.get(Template, build.template_id)
        if template is None or template.build_id != build.id:
            continue
        out.append(
            {
                "templateID": template.id,
                "buildID": build.id,
                "cpuCount": build.vcpus,
                "memoryMB": build.memory_mb,
                "diskSizeMB": build.disk_size_mb,
                "public": False,
                "aliases": [template.name],
                "names": [template.name],
                "createdAt": rfc3339(template.created_at),
                "updatedAt": rfc3339(build.finished_at or build.created_at),
                "createdBy": None,
                "lastSpawnedAt": None,
                "spawnCount": 0,
                "buildCount": 1,
                "envdVersion": str(build.result.get("envdVersion", "")),
                "buildStatus": "ready",
            }
        )
    return JSONResponse(out)


__all__ = ["router", "split_name"]
