"""Templates from capsules' snapshots (`/v1/snapshots`): create, list (with the platform's base images),
delete. A template is made from a paused capsule (a running one is paused first and left paused, as in
the seed SDK); its files stay on the capsule's host, so its capsules are placed there. The logic is the
template service's."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from .._deps import Caller, Templates
from .._time import Timestamp
from ..db import Template
from ..service import TEMPLATE_NAME

router = APIRouter(tags=["snapshots"])


class SnapshotCreate(BaseModel):
    sandbox_id: str = Field(min_length=1, max_length=40)
    #: Default: `template-` and 8 hex digits.
    name: str | None = Field(default=None, pattern=TEMPLATE_NAME)
    #: Who commands run as in the template's capsules (a user of the image, e.g. `root`, the seed's
    #: default); default: as in the capsule it is made from.
    default_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")


class TemplateOut(BaseModel):
    name: str
    type: Literal["base", "snapshot"]
    vcpus: int
    memory_mb: int
    size_bytes: int
    created_at: Timestamp | None
    platform: bool
    metadata: dict[str, Any]


def _out(t: Template) -> TemplateOut:
    return TemplateOut(
        name=t.name,
        type="snapshot",
        vcpus=t.vcpus,
        memory_mb=t.memory_mb,
        size_bytes=t.size_bytes,
        created_at=t.created_at,
        platform=False,
        metadata={
            "source_capsule_id": t.source_capsule_id,
            "disk_size_mb": str(t.disk_size_mb),  # the seed's metadata values are strings
            "default_user": t.default_user,  # "": the platform's default user
        },
    )


@router.post("/v1/snapshots", status_code=201, response_model=TemplateOut)
async def create_snapshot(
    body: SnapshotCreate,
    caller: Caller,
    templates: Templates,
    overwrite: bool = Query(default=False, description="replace the team's template of that name"),
) -> TemplateOut:
    """A template from a running or paused capsule: its memory (running processes included) and disk.
    The capsule is left paused. Capsules created with the template's name start in that state."""
    name = body.name or f"template-{secrets.token_hex(4)}"
    await templates.check_name(name)  # before the capsule lookup: a reserved name is refused outright
    capsule = await templates.capsules.get(caller.team_id, body.sandbox_id)
    await templates.claim_name(caller.team_id, name, overwrite)
    return _out(await templates.make(caller, capsule, name, body.default_user))


@router.get("/v1/snapshots", response_model=list[TemplateOut], response_model_exclude_none=True)
async def list_snapshots(
    caller: Caller, templates: Templates, type: Literal["base", "snapshot"] | None = None
) -> list[TemplateOut]:
    """The base images the platform's hosts have built, and the team's templates."""
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
                metadata={
                    "description": image.get("description", ""),
                    "version": image.get("version", ""),
                    # a string: the seed's SDK reads metadata as {str: str}
                    "aliases": ",".join(image.get("aliases", [])),
                },
            )
            for name, image in sorted((await templates.base_images()).items())
            if name == image.get("name")  # once, by its own name
        ]
    if type in (None, "snapshot"):
        found += [_out(t) for t in await templates.of_team(caller.team_id)]
    return found


@router.delete("/v1/snapshots/{name}", status_code=204)
async def delete_snapshot(name: str, caller: Caller, templates: Templates) -> Response:
    """Delete a template; 409 `template_in_use` while capsules started from it exist."""
    await templates.delete(caller, name)
    return Response(status_code=204)
