"""The file RPCs of `hostagent.v1.HostAgentService`, relayed to a sandbox's envd: read and write (whole or
streamed), list, make, remove, stat and watch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from wrenn.proto.envd.filesystem import filesystem_pb as fs
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._envd import EnvdClient, EnvdUnavailable, FileTransferError
from ._errors import SandboxError
from ._rpc import EnvdRPCs, call, connect_error
from ._service_process import start_request

#: The largest file ReadFile returns in one message; bigger ones need ReadFileStream.
MAX_UNARY_FILE = 64 << 20

_FILE_TYPE = {
    fs.FileType.FILE: pb.FileType.FILE,
    fs.FileType.DIRECTORY: pb.FileType.DIRECTORY,
    fs.FileType.SYMLINK: pb.FileType.SYMLINK,
}


def _entry(e: fs.EntryInfo | None) -> pb.FileEntry:
    if e is None:
        return pb.FileEntry()
    entry = pb.FileEntry(
        name=e.name,
        path=e.path,
        type=_FILE_TYPE.get(e.type, pb.FileType.UNSPECIFIED),
        size=e.size,
        mode=e.mode,
        permissions=e.permissions,
        owner=e.owner,
        group=e.group,
        modified_at=e.modified_time,
    )
    if e.has_field("symlink_target"):
        entry.symlink_target = e.symlink_target
    return entry


class FileRPCs(EnvdRPCs):
    # --- files ---------------------------------------------------------------------------------------

    async def read_file(
        self, request: pb.ReadFileRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ReadFileResponse:
        envd, _ = self._envd(request.sandbox_id)
        content = bytearray()

        async def collect() -> None:
            async for chunk in envd.download(request.path):
                content.extend(chunk)
                if len(content) > MAX_UNARY_FILE:
                    raise SandboxError(
                        "resource_exhausted",
                        f"{request.path} is larger than {MAX_UNARY_FILE >> 20} MiB: use ReadFileStream",
                    )

        await call(collect())
        return pb.ReadFileResponse(content=bytes(content))

    async def _chmod(self, envd: EnvdClient, path: str, mode: int) -> None:
        start = start_request("chmod", [f"{mode:o}", path], {}, "")
        async for _ in envd.process.start(start, headers=envd.headers("root"), timeout_ms=10_000):
            pass

    async def _stat(self, envd: EnvdClient, path: str) -> pb.FileEntry:
        stat = await call(envd.filesystem.stat(fs.StatRequest(path=path), headers=envd.headers()))
        return _entry(stat.entry)

    async def write_file(
        self, request: pb.WriteFileRequest, ctx: RequestContext[Any, Any]
    ) -> pb.WriteFileResponse:
        envd, _ = self._envd(request.sandbox_id)
        written = await call(envd.upload(request.path, bytes(request.content)))
        if request.has_field("mode"):
            await call(self._chmod(envd, written["path"], request.mode))
        return pb.WriteFileResponse(entry=await self._stat(envd, written["path"]))

    async def read_file_stream(
        self, request: pb.ReadFileStreamRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        envd, _ = self._envd(request.sandbox_id)
        try:
            async for chunk in envd.download(request.path):
                yield pb.ReadFileStreamResponse(chunk=chunk)
        except (FileTransferError, EnvdUnavailable, httpx.TransportError, OSError) as exc:
            raise connect_error(exc) from None

    async def write_file_stream(
        self, request: AsyncIterator[pb.WriteFileStreamRequest], ctx: RequestContext[Any, Any]
    ) -> pb.WriteFileStreamResponse:
        messages = aiter(request)
        first = await anext(messages, None)
        meta = (
            first.content.value
            if first is not None and first.content is not None and first.content.field == "meta"
            else None
        )
        if not isinstance(meta, pb.WriteFileMeta):
            raise ConnectError(Code.INVALID_ARGUMENT, "the first message must be meta {sandbox_id, path}")
        envd, _ = self._envd(meta.sandbox_id)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.content is not None and message.content.field == "chunk":
                    yield bytes(message.content.value)

        written = await call(envd.upload(meta.path, chunks()))
        if meta.has_field("mode"):
            await call(self._chmod(envd, written["path"], meta.mode))
        return pb.WriteFileStreamResponse(entry=await self._stat(envd, written["path"]))

    async def list_dir(self, request: pb.ListDirRequest, ctx: RequestContext[Any, Any]) -> pb.ListDirResponse:
        envd, headers = self._envd(request.sandbox_id)
        listed = await call(
            envd.filesystem.list_dir(
                fs.ListDirRequest(path=request.path, depth=request.depth or 1), headers=headers
            )
        )
        return pb.ListDirResponse(entries=[_entry(e) for e in listed.entries])

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RequestContext[Any, Any]) -> pb.MakeDirResponse:
        envd, headers = self._envd(request.sandbox_id)
        made = await call(envd.filesystem.make_dir(fs.MakeDirRequest(path=request.path), headers=headers))
        return pb.MakeDirResponse(entry=_entry(made.entry))

    async def remove_path(
        self, request: pb.RemovePathRequest, ctx: RequestContext[Any, Any]
    ) -> pb.RemovePathResponse:
        envd, headers = self._envd(request.sandbox_id)
        await call(envd.filesystem.remove(fs.RemoveRequest(path=request.path), headers=headers))
        return pb.RemovePathResponse()

    async def stat(self, request: pb.StatRequest, ctx: RequestContext[Any, Any]) -> pb.StatResponse:
        envd, _ = self._envd(request.sandbox_id)
        return pb.StatResponse(entry=await self._stat(envd, request.path))

    async def watch_dir(
        self, request: pb.WatchDirRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDirResponse]:
        envd, headers = self._envd(request.sandbox_id)
        watch = fs.WatchDirRequest(path=request.path, recursive=request.recursive)
        try:
            async for response in envd.filesystem.watch_dir(watch, headers=headers):
                which = response.event
                if which is None:
                    continue
                if which.field == "start":
                    yield pb.WatchDirResponse(event=Oneof("start", pb.WatchDirResponse.WatchStarted()))  # type: ignore[arg-type]
                elif which.field == "filesystem":
                    event = pb.FileEvent(name=which.value.name, type=pb.FileEventType(int(which.value.type)))
                    yield pb.WatchDirResponse(event=Oneof("file", event))  # type: ignore[arg-type]
                else:
                    yield pb.WatchDirResponse(event=Oneof("keepalive", pb.KeepAlive()))  # type: ignore[arg-type]
        except (ConnectError, httpx.TransportError, OSError) as exc:
            raise connect_error(exc) from None
