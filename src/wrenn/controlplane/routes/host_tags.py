"""A host's tags and what deleting it would affect, for the host's managers: a platform admin, or the owner
of a BYOC host's team (`service.hosts`). Others see 404 (a host they cannot see) or 403."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from .. import _audit
from .._deps import Db, UserCaller, audit_fields
from ..service import hosts

router = APIRouter(tags=["hosts"])


class TagBody(BaseModel):
    tag: str = Field(min_length=1, max_length=64)


class DeletePreview(BaseModel):
    host: str
    #: The capsules a deletion would stop (a plain delete refuses while there are any).
    sandbox_ids: list[str]


@router.get("/v1/hosts/{host_id}/tags", response_model=list[str])
async def list_tags(host_id: str, caller: UserCaller, session: Db) -> Any:
    host = await hosts.managed_host(session, caller, host_id)
    return await hosts.tags(session, host.id)


@router.post("/v1/hosts/{host_id}/tags", status_code=201, response_model=list[str])
async def add_tag(host_id: str, body: TagBody, caller: UserCaller, session: Db) -> Any:
    """Tag the host (adding a tag it has changes nothing); 400 for a bad tag or over 32."""
    host = await hosts.managed_host(session, caller, host_id)
    if await hosts.add_tag(session, host.id, body.tag):
        _audit.record(session, **(audit_fields(caller) | {"team_id": host.team_id}), resource_type="host",
                      resource_id=host.id, action="tag", tag=body.tag)  # fmt: skip
        await session.commit()
    return await hosts.tags(session, host.id)


@router.delete("/v1/hosts/{host_id}/tags/{tag}", status_code=204)
async def remove_tag(host_id: str, tag: str, caller: UserCaller, session: Db) -> Response:
    host = await hosts.managed_host(session, caller, host_id)
    await hosts.remove_tag(session, host.id, tag)
    _audit.record(session, **(audit_fields(caller) | {"team_id": host.team_id}), resource_type="host",
                  resource_id=host.id, action="untag", tag=tag)  # fmt: skip
    await session.commit()
    return Response(status_code=204)


@router.get("/v1/hosts/{host_id}/delete-preview", response_model=DeletePreview)
async def delete_preview(host_id: str, caller: UserCaller, session: Db) -> DeletePreview:
    """What `DELETE /v1/hosts/{id}` would affect: the capsules it would stop (with `force`)."""
    host = await hosts.managed_host(session, caller, host_id)
    return DeletePreview(
        host=host.id, sandbox_ids=[c.id for c in await hosts.active_capsules(session, host.id)]
    )
