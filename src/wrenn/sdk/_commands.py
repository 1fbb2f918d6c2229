"""`capsule.commands`: run shell commands, stream their output, list and kill processes."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterator
from typing import Literal, overload
from urllib.parse import quote

import httpx

from . import _api
from ._models import CommandHandle, CommandResult, ProcessInfo, StreamEvent, parse_stream_event
from ._transport import AsyncChannel, SyncChannel, aopen_channel, open_channel, run_async, run_sync

__all__ = ["AsyncCommands", "Commands"]


def _stream_path(capsule_id: str, pid: int | str | None) -> str:
    if pid is None:
        return _api.capsule_path(capsule_id, "/exec/stream")
    return _api.capsule_path(capsule_id, f"/processes/{quote(str(pid), safe='')}/stream")


def _events(channel: SyncChannel) -> Iterator[StreamEvent]:
    while (raw := channel.recv()) is not None:
        event = parse_stream_event(raw)
        yield event
        if _api.is_final_stream_event(event.type):
            return


async def _aevents(channel: AsyncChannel) -> AsyncIterator[StreamEvent]:
    while (raw := await channel.recv()) is not None:
        event = parse_stream_event(raw)
        yield event
        if _api.is_final_stream_event(event.type):
            return


class Commands:
    """Commands inside a capsule (`capsule.commands`)."""

    def __init__(self, capsule_id: str, http: httpx.Client) -> None:
        self._capsule_id = capsule_id
        self._http = http

    @overload
    def run(
        self,
        cmd: str,
        *,
        background: Literal[False] = False,
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str,
        *,
        background: Literal[True],
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandHandle: ...

    @overload
    def run(
        self,
        cmd: str,
        *,
        background: bool,
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle: ...

    def run(
        self,
        cmd: str,
        *,
        background: bool = False,
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle:
        """Run `cmd` with `/bin/sh -c`.

        In the foreground (default), wait for it and return its `CommandResult`; the command is
        killed after `timeout` seconds (None: the server's default, 30 s) and the HTTP request allows
        10 s more. A non-zero exit code is not an exception. With `background=True`, start it and
        return a `CommandHandle` at once (`timeout` does not apply); `tag` names it for
        `connect`/`kill`.
        """
        if background:
            return run_sync(
                self._http, _api.start_command(self._capsule_id, cmd, envs=envs, cwd=cwd, tag=tag)
            )
        return run_sync(
            self._http, _api.run_command(self._capsule_id, cmd, timeout=timeout, envs=envs, cwd=cwd)
        )

    def stream(self, cmd: str, args: builtins.list[str] | None = None) -> Iterator[StreamEvent]:
        """Run a command over the `exec/stream` WebSocket and yield its events as they happen:
        `StreamStartEvent(pid)`, `StreamStdoutEvent`/`StreamStderrEvent(data)`, then
        `StreamExitEvent(exit_code)` or `StreamErrorEvent(data)`. Without `args`, `cmd` is a shell
        command line (`/bin/sh -c cmd`); with them, `cmd` is the program. No timeout. Breaking out
        of the loop closes the socket, which stops the command."""
        with open_channel(self._http, _stream_path(self._capsule_id, None)) as channel:
            channel.send(_api.stream_start_message(cmd, args))
            yield from _events(channel)

    def connect(self, pid: int | str) -> Iterator[StreamEvent]:
        """Attach to a background process (by PID or tag) and yield its output events until it exits."""
        with open_channel(self._http, _stream_path(self._capsule_id, pid)) as channel:
            yield from _events(channel)

    def list(self) -> builtins.list[ProcessInfo]:
        """The processes the capsule's agent tracks (background commands and PTYs)."""
        return run_sync(self._http, _api.list_processes(self._capsule_id))

    def kill(self, pid: int | str, signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL") -> None:
        """Signal a process (by PID or tag); `WrennNotFoundError` if there is none."""
        run_sync(self._http, _api.kill_process(self._capsule_id, pid, signal))


class AsyncCommands:
    """`Commands` for `AsyncCapsule`: the same methods, awaited; `stream`/`connect` are async
    iterators (stop early with `contextlib.aclosing(...)` so the socket closes in your task)."""

    def __init__(self, capsule_id: str, http: httpx.AsyncClient) -> None:
        self._capsule_id = capsule_id
        self._http = http

    @overload
    async def run(
        self,
        cmd: str,
        *,
        background: Literal[False] = False,
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        *,
        background: Literal[True],
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandHandle: ...

    @overload
    async def run(
        self,
        cmd: str,
        *,
        background: bool,
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle: ...

    async def run(
        self,
        cmd: str,
        *,
        background: bool = False,
        timeout: int | None = 30,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        tag: str | None = None,
    ) -> CommandResult | CommandHandle:
        """See `Commands.run`."""
        if background:
            return await run_async(
                self._http, _api.start_command(self._capsule_id, cmd, envs=envs, cwd=cwd, tag=tag)
            )
        return await run_async(
            self._http, _api.run_command(self._capsule_id, cmd, timeout=timeout, envs=envs, cwd=cwd)
        )

    async def stream(self, cmd: str, args: builtins.list[str] | None = None) -> AsyncIterator[StreamEvent]:
        """See `Commands.stream`."""
        async with aopen_channel(self._http, _stream_path(self._capsule_id, None)) as channel:
            await channel.send(_api.stream_start_message(cmd, args))
            async for event in _aevents(channel):
                yield event

    async def connect(self, pid: int | str) -> AsyncIterator[StreamEvent]:
        """See `Commands.connect`."""
        async with aopen_channel(self._http, _stream_path(self._capsule_id, pid)) as channel:
            async for event in _aevents(channel):
                yield event

    async def list(self) -> builtins.list[ProcessInfo]:
        """See `Commands.list`."""
        return await run_async(self._http, _api.list_processes(self._capsule_id))

    async def kill(self, pid: int | str, signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL") -> None:
        """See `Commands.kill`."""
        await run_async(self._http, _api.kill_process(self._capsule_id, pid, signal))
