"""`hostagent.v1.HostAgentService`: the control plane's API to this host, over the sandbox manager and
each sandbox's envd.

One Connect service is one object, so its 33 RPCs are one class, `AgentService`. It is assembled from
mixins by group (composition would mean a forwarding method per RPC): the sandbox, template, metrics and
host RPCs are here; processes and terminals in `_service_process`, files in `_service_files`; what they
share (errors, timestamps, reaching a sandbox's envd) in `_rpc`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
from collections.abc import Callable
from typing import Any

import psutil
from connectrpc.request import RequestContext
from prometheus_client import CollectorRegistry

from wrenn import __version__, images
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentService

from ._errors import SandboxError
from ._logs import console_entries
from ._manager import SandboxManager
from ._netpolicy import from_proto
from ._output import OutputBudget
from ._prometheus import Operations
from ._registration import host_images
from ._rpc import call, connect_error, ts
from ._sandbox import Sandbox, SandboxParams, Status
from ._service_build import BuildRPCs
from ._service_files import FileRPCs
from ._service_network import NetworkRPCs
from ._service_process import ProcessRPCs
from .vmm import Accelerator

_STATUS = {
    Status.PENDING: pb.SandboxStatus.PENDING,
    Status.RUNNING: pb.SandboxStatus.RUNNING,
    Status.PAUSED: pb.SandboxStatus.PAUSED,
    Status.STOPPED: pb.SandboxStatus.STOPPED,
    Status.ERROR: pb.SandboxStatus.ERROR,
}
_RANGES = {
    pb.MetricsRange.LAST_5M: 300,
    pb.MetricsRange.LAST_10M: 600,
    pb.MetricsRange.LAST_1H: 3600,
    pb.MetricsRange.LAST_2H: 7200,
    pb.MetricsRange.LAST_6H: 21600,
    pb.MetricsRange.LAST_12H: 43200,
    pb.MetricsRange.LAST_24H: 86400,
}


class AgentService(ProcessRPCs, FileRPCs, NetworkRPCs, BuildRPCs, HostAgentService):
    def __init__(
        self,
        manager: SandboxManager,
        on_terminate: Callable[[], None] | None = None,
        proxy_port: int = 0,
        operations: Operations | None = None,
    ) -> None:
        self.m = manager
        self._ops = operations or Operations(CollectorRegistry())
        self.exec_budget = OutputBudget(manager.config.exec_output_budget)
        self._on_terminate = on_terminate
        self._proxy_port = proxy_port
        #: The driver as the API names it (VMM_UNSPECIFIED until hostagent.proto has a value for it).
        self._vmm = pb.Vmm.__members__.get(manager.driver.name.upper().replace("-", "_"), pb.Vmm.UNSPECIFIED)

    def _info(self, s: Sandbox) -> pb.SandboxInfo:
        return pb.SandboxInfo(
            sandbox_id=s.id,
            status=_STATUS[s.status],
            template=s.params.template,
            vcpus=s.params.vcpus,
            memory_mb=s.params.memory_mb,
            disk_size_mb=s.params.disk_size_mb,
            timeout_sec=s.params.timeout_sec,
            host_ip=s.host_ip,
            created_at=ts(s.created_at),
            last_active_at=ts(s.last_active_at),
            envd_version=s.envd_version,
            kernel_version=s.kernel_version,
            vmm=self._vmm,
            accelerator=pb.Accelerator.KVM
            if self.m.accelerator.accelerator is Accelerator.KVM
            else pb.Accelerator.TCG,
            error=s.error,
            team_id=s.params.team_id,
            metadata=dict(s.params.metadata),
            paused_at=ts(s.paused_at) if s.paused_at is not None else None,
            from_snapshot=s.from_snapshot,
            network_secrets_missing=not s.secrets_loaded,
        )

    # --- sandboxes -----------------------------------------------------------------------------------

    async def create_sandbox(
        self, request: pb.CreateSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CreateSandboxResponse:
        config = self.m.config
        built = request.built_template if request.built_template and request.built_template.build_id else None
        if built is not None:
            request.snapshot_template = await self.prepare_built(built)
        params = SandboxParams(
            sandbox_id=request.sandbox_id,
            template=self._template_of(request),
            vcpus=request.vcpus or 1,
            memory_mb=request.memory_mb or 512,
            disk_size_mb=request.disk_size_mb or 5120,
            timeout_sec=request.timeout_sec,
            team_id=request.team_id,
            default_user=request.default_user or (built.default_user if built else "") or config.default_user,
            default_env={**(dict(built.env) if built else {}), **dict(request.default_env)},
            default_workdir=built.workdir if built else "",
            allow_internet=request.allow_internet,
            envd_access_token=request.envd_access_token,
            metadata=dict(request.metadata),
            auto_pause=not request.discard_on_timeout,
            cold_boot=request.cold_boot,
        )
        try:
            policy = from_proto(request.network, request.allow_internet)
        except SandboxError as exc:
            raise connect_error(exc) from None
        sandbox = await call(self._ops.timed("create", self.m.create(params, policy)))
        return pb.CreateSandboxResponse(sandbox=self._info(sandbox))

    def _template_of(self, request: pb.CreateSandboxRequest) -> str:
        """What a create starts from: the snapshot template it names by id, or a base image. A base image's
        name never reaches a snapshot template (those are the control plane's to resolve, per team)."""
        if request.snapshot_template:
            if self.m.templates.get(request.snapshot_template) is None:
                raise connect_error(
                    SandboxError("not_found", f"no snapshot template {request.snapshot_template[:80]!r}")
                )
            return request.snapshot_template
        name = request.template or self.m.config.default_template
        if self.m.templates.get(name) is not None:
            raise connect_error(SandboxError("not_found", f"no base image {name[:80]!r} on this host"))
        return name

    async def destroy_sandbox(
        self, request: pb.DestroySandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.DestroySandboxResponse:
        await call(self._ops.timed("destroy", self.m.destroy(request.sandbox_id)))
        return pb.DestroySandboxResponse()

    async def pause_sandbox(
        self, request: pb.PauseSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PauseSandboxResponse:
        paused = await call(self._ops.timed("pause", self.m.pause(request.sandbox_id)))
        return pb.PauseSandboxResponse(sandbox=self._info(paused))

    async def resume_sandbox(
        self, request: pb.ResumeSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ResumeSandboxResponse:
        try:
            policy = from_proto(request.network) if request.network is not None else None
        except SandboxError as exc:
            raise connect_error(exc) from None
        resumed = await call(self._ops.timed("resume", self.m.resume(request.sandbox_id, policy)))
        return pb.ResumeSandboxResponse(sandbox=self._info(resumed))

    async def hibernate_sandbox(
        self, request: pb.HibernateSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.HibernateSandboxResponse:
        size = await call(self._ops.timed("hibernate", self.m.hibernate(request.sandbox_id)))
        return pb.HibernateSandboxResponse(archive_bytes=size)

    async def thaw_sandbox(
        self, request: pb.ThawSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ThawSandboxResponse:
        try:
            policy = from_proto(request.network) if request.network is not None else None
        except SandboxError as exc:
            raise connect_error(exc) from None
        return pb.ThawSandboxResponse(sandbox=self._info(await call(self.m.thaw(request.sandbox_id, policy))))

    async def create_template(
        self, request: pb.CreateTemplateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CreateTemplateResponse:
        t = await call(self.m.create_template(request.sandbox_id, request.name))
        return pb.CreateTemplateResponse(
            template=pb.TemplateInfo(
                name=t.name,
                vcpus=t.vcpus,
                memory_mb=t.memory_mb,
                disk_size_mb=t.disk_size_mb,
                size_bytes=t.size_bytes(),
                image=t.image,
                created_at=ts(t.created_at),
            )
        )

    async def delete_template(
        self, request: pb.DeleteTemplateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.DeleteTemplateResponse:
        await call(self.m.delete_template(request.name))
        return pb.DeleteTemplateResponse()

    async def list_sandboxes(
        self, request: pb.ListSandboxesRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListSandboxesResponse:
        return pb.ListSandboxesResponse(sandboxes=[self._info(s) for s in self.m.sandboxes.values()])

    async def get_sandbox(
        self, request: pb.GetSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetSandboxResponse:
        try:
            return pb.GetSandboxResponse(sandbox=self._info(self.m.get(request.sandbox_id)))
        except SandboxError as exc:
            raise connect_error(exc) from None

    async def ping_sandbox(
        self, request: pb.PingSandboxRequest, ctx: RequestContext[Any, Any]
    ) -> pb.PingSandboxResponse:
        try:
            sandbox = self.m.running(request.sandbox_id)
        except SandboxError as exc:
            raise connect_error(exc) from None
        return pb.PingSandboxResponse(last_active_at=ts(sandbox.last_active_at))

    # --- metrics, host -------------------------------------------------------------------------------

    async def get_sandbox_metrics(
        self, request: pb.GetSandboxMetricsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetSandboxMetricsResponse:
        try:
            self.m.get(request.sandbox_id)
        except SandboxError as exc:
            raise connect_error(exc) from None
        range_s = _RANGES.get(request.range, 600)
        return pb.GetSandboxMetricsResponse(
            points=[
                pb.MetricsPoint(
                    timestamp=ts(p.timestamp),
                    cpu_pct=p.cpu_pct,
                    mem_bytes=p.mem_bytes,
                    disk_bytes=p.disk_bytes,
                )
                for p in self.m.metrics.points(request.sandbox_id, range_s)
            ]
        )

    async def get_sandbox_logs(
        self, request: pb.GetSandboxLogsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetSandboxLogsResponse:
        try:
            sandbox = self.m.get(request.sandbox_id)
        except SandboxError as exc:
            raise connect_error(exc) from None
        found = await asyncio.to_thread(
            console_entries, sandbox.workdir / "console.log", sandbox.created_at, sandbox.from_snapshot
        )
        return pb.GetSandboxLogsResponse(
            entries=[
                pb.LogEntry(timestamp=ts(e.timestamp), level=e.level, message=e.message, source=e.source)
                for e in found
            ]
        )

    async def get_host_info(
        self, request: pb.GetHostInfoRequest, ctx: RequestContext[Any, Any]
    ) -> pb.GetHostInfoResponse:
        mem = psutil.virtual_memory()
        disk = shutil.disk_usage(self.m.config.data_dir)
        choice = self.m.accelerator
        image = images.find(self.m.config.default_template, self.m.config.data_dir)
        return pb.GetHostInfoResponse(
            hostname=platform.node(),
            arch=platform.machine(),
            cpu_count=os.cpu_count() or 1,
            memory_total_mb=mem.total >> 20,
            memory_available_mb=mem.available >> 20,
            disk_total_mb=disk.total >> 20,
            disk_available_mb=disk.free >> 20,
            accelerator=pb.Accelerator.KVM if choice.accelerator is Accelerator.KVM else pb.Accelerator.TCG,
            accelerator_reason=choice.reason,
            vmm=self._vmm,
            vmm_version=self.m.table.machine.vmm_version,
            agent_version=__version__,
            kernel_version=image.kernel_version if image else "",
            slot_capacity=self.m.config.slots,
            slots_used=self.m.slots_used(),
            proxy_port=self._proxy_port,
            images=[pb.ImageInfo(**i) for i in host_images(self.m.config.data_dir)],
            load_1m=os.getloadavg()[0],
        )

    async def terminate(
        self, request: pb.TerminateRequest, ctx: RequestContext[Any, Any]
    ) -> pb.TerminateResponse:
        await self.m.terminate()
        if self._on_terminate is not None:
            asyncio.get_running_loop().call_later(0.2, self._on_terminate)
        else:
            asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
        return pb.TerminateResponse()
