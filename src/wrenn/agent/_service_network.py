"""The network-policy RPCs of `AgentService`: replace a sandbox's egress policy, read it back with what
its egress proxy lately refused."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._errors import SandboxError
from ._manager import SandboxManager
from ._netpolicy import from_proto, to_proto
from ._rpc import call, connect_error, ts


class NetworkRPCs:
    m: SandboxManager

    async def update_network_policy(
        self, request: pb.UpdateNetworkPolicyRequest, ctx: RequestContext[Any, Any]
    ) -> pb.UpdateNetworkPolicyResponse:
        try:
            policy = from_proto(request.network)
        except SandboxError as exc:
            raise connect_error(exc) from None
        await call(self.m.set_policy(request.sandbox_id, policy))
        return pb.UpdateNetworkPolicyResponse()

    async def get_sandbox_network(
        self, request: pb.GetSandboxNetworkRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetSandboxNetworkResponse:
        try:
            sandbox = self.m.get(request.sandbox_id)
        except SandboxError as exc:
            raise connect_error(exc) from None
        return pb.GetSandboxNetworkResponse(
            network=to_proto(sandbox.policy),
            events=[
                pb.NetworkEvent(
                    at=ts(e.at),
                    action=e.action,
                    destination=e.destination,
                    port=e.port,
                    name=e.name,
                    reason=e.reason,
                )
                for e in self.m.table.network.events(sandbox.id)
            ],
            secrets_loaded=sandbox.secrets_loaded,
        )
