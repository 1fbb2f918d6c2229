"""The template-build RPCs of `hostagent.v1.HostAgentService`: build a template (its log streamed), keep the
files its COPY steps need, collect the template store; and preparing a built template on this host before
a sandbox starts from it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from . import _disk
from ._blobs import BlobError, check_digest
from ._builder import BuildFailed
from ._errors import SandboxError
from ._manager import SandboxManager
from ._rpc import KEEPALIVE_S, connect_error, ts

log = logging.getLogger("wrenn.agent.build")

#: The largest file a COPY step may bring (the control plane's upload limit is the same).
MAX_FILE_BYTES = 1 << 30


class BuildRPCs:
    m: SandboxManager

    async def build_template(
        self, request: pb.BuildTemplateRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.BuildTemplateResponse]:
        queue: asyncio.Queue[pb.BuildTemplateResponse | BaseException | None] = asyncio.Queue()

        def emit(level: str, step: str, message: str) -> None:
            entry = pb.BuildLog(time=ts(time.time()), level=level, step=step, message=message)
            queue.put_nowait(pb.BuildTemplateResponse(event=Oneof("log", entry)))  # type: ignore[arg-type]

        async def run() -> None:
            try:
                built = await self.m.builder.build(request, emit)
                queue.put_nowait(pb.BuildTemplateResponse(event=Oneof("result", built)))  # type: ignore[arg-type]
            except BuildFailed as exc:
                emit("error", exc.step, exc.message)
                queue.put_nowait(ConnectError(Code.ABORTED, f"step {exc.step}: {exc.message}"))
            except (SandboxError, BlobError, _disk.DiskError, OSError) as exc:
                emit("error", "base", str(exc))
                queue.put_nowait(
                    connect_error(
                        exc if isinstance(exc, SandboxError) else SandboxError("internal", str(exc))
                    )
                )
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    log.exception("build failed", extra={"build": request.build_id})
                    queue.put_nowait(ConnectError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"))
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        log.info("build started", extra={"build": request.build_id, "steps": len(request.steps)})
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield pb.BuildTemplateResponse(event=Oneof("keepalive", pb.KeepAlive()))  # type: ignore[arg-type]
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not task.done():  # the caller went away or cancelled the build
                log.info("build cancelled", extra={"build": request.build_id})
                task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def put_build_file(
        self, request: AsyncIterator[pb.PutBuildFileRequest], ctx: RequestContext[Any, Any]
    ) -> pb.PutBuildFileResponse:
        messages = aiter(request)
        first = await anext(messages, None)
        meta = first.content.value if first is not None and first.content is not None else None
        if not isinstance(meta, pb.PutBuildFileMeta):
            raise ConnectError(Code.INVALID_ARGUMENT, "the first message must be meta {sha256, size}")
        try:
            digest = check_digest(meta.sha256)
        except BlobError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        directory = self.m.builder.files
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = directory / digest
        if final.is_file():
            async for _ in messages:
                pass
            return pb.PutBuildFileResponse(file=pb.Blob(sha256=digest, size=final.stat().st_size))
        partial = directory / f".{digest}.{id(request)}.partial"
        hasher, size = hashlib.sha256(), 0
        try:
            with partial.open("wb") as f:
                async for message in messages:
                    if message.content is None or message.content.field != "chunk":
                        raise ConnectError(Code.INVALID_ARGUMENT, "after meta, only chunks")
                    chunk = bytes(message.content.value)  # type: ignore[arg-type]
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise ConnectError(Code.RESOURCE_EXHAUSTED, "a build file is at most 1 GiB")
                    hasher.update(chunk)
                    f.write(chunk)
            if hasher.hexdigest() != digest:
                raise ConnectError(Code.INVALID_ARGUMENT, "the file's SHA-256 is not the one its meta names")
            partial.rename(final)
        finally:
            partial.unlink(missing_ok=True)
        return pb.PutBuildFileResponse(file=pb.Blob(sha256=digest, size=size))

    async def collect_template_store(
        self, request: pb.CollectTemplateStoreRequest, ctx: RequestContext[Any, Any]
    ) -> pb.CollectTemplateStoreResponse:
        try:
            keep = {check_digest(d) for d in request.keep}
        except BlobError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        keep |= self._in_use()
        removed, freed = await asyncio.to_thread(
            self.m.blobs.collect, keep, store=request.store, grace_s=float(request.grace_sec)
        )
        return pb.CollectTemplateStoreResponse(removed=removed, freed_bytes=freed)

    def _in_use(self) -> set[str]:
        """Blobs the built templates materialised here still use (their sandboxes stand on them)."""
        used: set[str] = set()
        directory = self.m.templates.directory
        for meta_file in directory.glob("*/meta.json") if directory.is_dir() else ():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                meta = json.loads(meta_file.read_text())
                used.update(str(d) for d in meta.get("blobs", []))
        return used

    async def prepare_built(self, built: pb.BuiltTemplate) -> str:
        """Make a built template ready on this host (its blobs fetched, checked and materialised as a
        template named by its build id); that name."""
        try:
            base = await self.m.builder.template_base(built)
            if built.vmstate is None or built.memory is None:
                raise SandboxError("invalid_argument", f"template {built.build_id} has no ready snapshot")
            vmstate = await self.m.blobs.ensure(check_digest(built.vmstate.sha256), built.vmstate.size)
            memory = await self.m.blobs.ensure(check_digest(built.memory.sha256), built.memory.size)
            blobs = [
                b.sha256 for b in (*built.disk, built.kernel, built.initrd, built.vmstate, built.memory) if b
            ]
            meta = {
                "vcpus": built.vcpus,
                "memory_mb": built.memory_mb,
                "disk_size_mb": built.disk_size_mb,
                "image": base.image.template,
                "image_version": base.image.version,
                "kernel": str(base.image.vmlinuz),
                "initrd": str(base.image.initrd),
                "kernel_version": built.kernel_version,
                "envd_version": built.envd_version,
                "envd_access_token": "",
                "blobs": blobs,
                # what took its snapshot (empty from older builds: restored as before)
                "vmm": built.vmm,
                "vmm_version": built.vmm_version,
                **({"machine": built.machine} if built.machine else {}),
                "created_at": time.time(),
            }
            await self.m.templates.materialize(
                built.build_id,
                disk=self.m.blobs.local_chain([(d.sha256, d.size) for d in built.disk]),
                vmstate=vmstate,
                memory=memory,
                meta=meta,
            )
        except (SandboxError, BlobError, _disk.DiskError, OSError) as exc:
            raise connect_error(
                exc if isinstance(exc, SandboxError) else SandboxError("internal", str(exc))
            ) from None
        return built.build_id
