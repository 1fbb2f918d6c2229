"""`capsule.files`: read, write, list, create, remove and watch files inside a capsule."""

from __future__ import annotations

import builtins
import contextlib
import queue
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from types import TracebackType

import httpx

from . import _api
from ._models import FileEntry, FilesystemEvent
from ._transport import (
    AsyncChannel,
    SyncChannel,
    aopen_channel,
    open_channel,
    run_async,
    run_sync,
    stream_body_async,
    stream_body_sync,
)

__all__ = ["AsyncFiles", "AsyncWatchHandle", "Files", "WatchHandle"]


def _as_bytes(chunk: bytes | bytearray | memoryview | str) -> bytes:
    return chunk.encode() if isinstance(chunk, str) else bytes(chunk)


class WatchHandle:
    """A live watch of a directory (`files.watch`): iterate it for `FilesystemEvent`s; `close()` (or
    leave its `with` block) to stop. Iteration ends when the server closes the watch; an error the
    server reports is raised as a `WrennError`."""

    def __init__(
        self, stack: contextlib.ExitStack, channel: SyncChannel, pending: FilesystemEvent | None
    ) -> None:
        self._stack = stack
        self._channel = channel
        self._pending = pending
        self._closed = False

    def __iter__(self) -> Iterator[FilesystemEvent]:
        return self

    def __next__(self) -> FilesystemEvent:
        if self._pending is not None:
            first, self._pending = self._pending, None
            return first
        while not self._closed:
            raw = self._channel.recv()
            if raw is None:
                break
            try:
                event = _api.watch_message(raw)
            except Exception:
                self.close()
                raise
            if event is not None:
                return event
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWatchHandle:
    """`WatchHandle` for `AsyncFiles.watch`: `async for` it, `await close()` (or `async with`).
    Close it in the task that opened it."""

    def __init__(
        self, stack: contextlib.AsyncExitStack, channel: AsyncChannel, pending: FilesystemEvent | None
    ) -> None:
        self._stack = stack
        self._channel = channel
        self._pending = pending
        self._closed = False

    def __aiter__(self) -> AsyncIterator[FilesystemEvent]:
        return self

    async def __anext__(self) -> FilesystemEvent:
        if self._pending is not None:
            first, self._pending = self._pending, None
            return first
        while not self._closed:
            raw = await self._channel.recv()
            if raw is None:
                break
            try:
                event = _api.watch_message(raw)
            except Exception:
                await self.close()
                raise
            if event is not None:
                return event
        await self.close()
        raise StopAsyncIteration

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stack.aclose()

    async def __aenter__(self) -> AsyncWatchHandle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Files:
    """The filesystem of a capsule (`capsule.files`). Paths are absolute, or relative to the
    sandbox user's home directory."""

    def __init__(self, capsule_id: str, http: httpx.Client) -> None:
        self._capsule_id = capsule_id
        self._http = http

    def read(self, path: str) -> str:
        """A file's content as text (UTF-8, undecodable bytes replaced)."""
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def read_bytes(self, path: str) -> bytes:
        """A file's content; `WrennNotFoundError` if it does not exist."""
        return run_sync(self._http, _api.read_file(self._capsule_id, path))

    def write(self, path: str, data: str | bytes) -> None:
        """Write a file (str is UTF-8 encoded), creating its parent directories. Up to 100 MB; use
        `upload_stream` beyond."""
        run_sync(self._http, _api.write_file(self._capsule_id, path, data))

    def list(self, path: str, depth: int = 1) -> builtins.list[FileEntry]:
        """The entries of a directory, `depth` levels down (1: its children)."""
        return run_sync(self._http, _api.list_dir(self._capsule_id, path, depth))

    def exists(self, path: str) -> bool:
        """Whether `path` exists (found by listing its parent directory)."""
        return run_sync(self._http, _api.exists_op(self._capsule_id, path))

    def make_dir(self, path: str) -> FileEntry:
        """Create a directory and its parents; an existing directory is returned as is."""
        return run_sync(self._http, _api.make_dir_op(self._capsule_id, path))

    def remove(self, path: str) -> None:
        """Remove a file or a directory tree; `WrennNotFoundError` if it does not exist."""
        run_sync(self._http, _api.remove_path(self._capsule_id, path))

    def upload_stream(self, path: str, stream: Iterable[bytes]) -> None:
        """Write a file from an iterable of chunks without holding it in memory (no size limit)."""
        frame = _api.MultipartUpload(path)

        def body() -> Iterator[bytes]:
            yield frame.head
            for chunk in stream:
                yield _as_bytes(chunk)
            yield frame.tail

        run_sync(self._http, _api.stream_write(self._capsule_id, frame, body()))

    def download_stream(self, path: str) -> Iterator[bytes]:
        """A file's content as chunks, as the server sends them."""
        yield from stream_body_sync(self._http, _api.stream_read(self._capsule_id, path))

    def watch(self, path: str, recursive: bool = False) -> WatchHandle:
        """Watch a directory for changes. Returns once the watch is in place, so changes made after
        the call are seen::

            with capsule.files.watch("/work", recursive=True) as events:
                capsule.files.write("/work/a.txt", "hi")
                for event in events:  # FilesystemEvent(name="a.txt", type="create"), then "write"
                    ...
        """
        stack = contextlib.ExitStack()
        try:
            channel = stack.enter_context(
                open_channel(self._http, _api.watch_path(self._capsule_id, path, recursive))
            )
            pending = _first_watch_message(channel.recv(_api.WATCH_START_TIMEOUT))
        except queue.Empty:
            stack.close()
            raise TimeoutError(f"files.watch({path!r}): the server did not start the watch") from None
        except BaseException:
            stack.close()
            raise
        return WatchHandle(stack, channel, pending)


def _first_watch_message(raw: dict[str, object] | None) -> FilesystemEvent | None:
    """The server's first message: `start` (or an event, if it skipped it); raises on `error` or a
    closed socket."""
    if raw is None:
        raise ConnectionError("files.watch: the server closed the connection before the watch started")
    return _api.watch_message(dict(raw))


class AsyncFiles:
    """`Files` for `AsyncCapsule`: the same methods, awaited."""

    def __init__(self, capsule_id: str, http: httpx.AsyncClient) -> None:
        self._capsule_id = capsule_id
        self._http = http

    async def read(self, path: str) -> str:
        """See `Files.read`."""
        return (await self.read_bytes(path)).decode("utf-8", errors="replace")

    async def read_bytes(self, path: str) -> bytes:
        """See `Files.read_bytes`."""
        return await run_async(self._http, _api.read_file(self._capsule_id, path))

    async def write(self, path: str, data: str | bytes) -> None:
        """See `Files.write`."""
        await run_async(self._http, _api.write_file(self._capsule_id, path, data))

    async def list(self, path: str, depth: int = 1) -> builtins.list[FileEntry]:
        """See `Files.list`."""
        return await run_async(self._http, _api.list_dir(self._capsule_id, path, depth))

    async def exists(self, path: str) -> bool:
        """See `Files.exists`."""
        return await run_async(self._http, _api.exists_op(self._capsule_id, path))

    async def make_dir(self, path: str) -> FileEntry:
        """See `Files.make_dir`."""
        return await run_async(self._http, _api.make_dir_op(self._capsule_id, path))

    async def remove(self, path: str) -> None:
        """See `Files.remove`."""
        await run_async(self._http, _api.remove_path(self._capsule_id, path))

    async def upload_stream(self, path: str, stream: AsyncIterable[bytes] | Iterable[bytes]) -> None:
        """See `Files.upload_stream`; `stream` may be a sync or an async iterable."""
        frame = _api.MultipartUpload(path)

        async def body() -> AsyncIterator[bytes]:
            yield frame.head
            if isinstance(stream, AsyncIterable):
                async for chunk in stream:
                    yield _as_bytes(chunk)
            else:
                for chunk in stream:
                    yield _as_bytes(chunk)
            yield frame.tail

        await run_async(self._http, _api.stream_write(self._capsule_id, frame, body()))

    async def download_stream(self, path: str) -> AsyncIterator[bytes]:
        """See `Files.download_stream`."""
        async for chunk in stream_body_async(self._http, _api.stream_read(self._capsule_id, path)):
            yield chunk

    async def watch(self, path: str, recursive: bool = False) -> AsyncWatchHandle:
        """See `Files.watch`::

        async with await capsule.files.watch("/work") as events:
            async for event in events: ...
        """
        stack = contextlib.AsyncExitStack()
        try:
            channel = await stack.enter_async_context(
                aopen_channel(self._http, _api.watch_path(self._capsule_id, path, recursive))
            )
            pending = _first_watch_message(await channel.recv(_api.WATCH_START_TIMEOUT))
        except TimeoutError:
            await stack.aclose()
            raise TimeoutError(f"files.watch({path!r}): the server did not start the watch") from None
        except BaseException:
            await stack.aclose()
            raise
        return AsyncWatchHandle(stack, channel, pending)
