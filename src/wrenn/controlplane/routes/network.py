"""Egress policies of capsules: `/v1/capsules/{id}/network` (read it, with what the egress proxy lately
refused; change it) and E2B's `PUT /sandboxes/{id}/network` (replace it). A running capsule's policy
changes at once, without a restart; a paused or hibernated one's when it wakes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from .._deps import Caller, Capsules
from ..service import E2BNetworkUpdate, NetworkBody, NetworkService, NetworkSpec
from ..service.network import from_e2b, from_v1

router = APIRouter(tags=["network"])


@router.get("/v1/capsules/{capsule_id}/network")
async def get_network(capsule_id: str, caller: Caller, capsules: Capsules) -> dict[str, Any]:
    """The capsule's egress policy (header values never shown) and its egress proxy's recent refusals."""
    return await NetworkService(capsules).view(await capsules.get(caller.team_id, capsule_id))


@router.patch("/v1/capsules/{capsule_id}/network")
async def patch_network(
    capsule_id: str, body: NetworkBody, caller: Caller, capsules: Capsules
) -> dict[str, Any]:
    """Change the fields given (the others keep their value); `rules` given replaces all rules."""
    capsule = await capsules.get(caller.team_id, capsule_id)
    service = NetworkService(capsules)
    await service.replace(capsule, from_v1(body, NetworkSpec.of_capsule(capsule)), caller)
    return await service.view(capsule)


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def put_network(
    sandbox_id: str, body: E2BNetworkUpdate, caller: Caller, capsules: Capsules
) -> Response:
    """E2B's `update_network`: the body replaces the whole policy (fields left out are cleared)."""
    capsule = await capsules.get(caller.team_id, sandbox_id)
    spec = from_e2b(
        body.allowOut, body.denyOut, body.dnsServers, body.rules, body.allow_internet_access, body.egressProxy
    )
    await NetworkService(capsules).replace(capsule, spec, caller)
    return Response(status_code=204)
