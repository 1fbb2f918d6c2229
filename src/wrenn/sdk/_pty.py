"""Interactive terminals over the `pty` WebSocket (`capsule.pty()`, `capsule.pty_connect(tag)`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from . import _api
from ._models import PtyEvent, PtyEventType
from ._transport import AsyncChannel, SyncChannel

__all__ = ["AsyncPtySession", "PtyEvent", "PtyEventType", "PtySession"]


class _PtyState:
    """What a session learns from the server's messages; shared by the sync and async sessions."""

    def __init__(self, capsule_id: str) -> None:
        self.capsule_id = capsule_id
        self._tag: str | None = None
        self._pid: int | None = None
        self._done = False

    @property
    def tag(self) -> str | None:
        """The session's tag (`pty-…`), known once the `started` event has arrived; pass it to
        `capsule.pty_connect` to reattach after a disconnect."""
        return self._tag

    @property
    def pid(self) -> int | None:
        """The PID of the terminal's process, known once the `started` event has arrived."""
        return self._pid

    def _absorb(self, raw: dict[str, Any] | None) -> PtyEvent | None:
        """The event of a server message (None: the socket closed); `exit` and fatal errors end the
        session."""
        if raw is None:
            self._done = True
            return None
        event = PtyEvent.from_json(raw)
        if event.type == PtyEventType.started:
            self._tag = event.tag or self._tag
            self._pid = event.pid if event.pid is not None else self._pid
        elif event.type == PtyEventType.exit or (event.type == PtyEventType.error and event.fatal):
            self._done = True
        return event


class PtySession(_PtyState):
    """A terminal in a capsule. Iterate it for `PtyEvent`s (`started`, `output` with bytes, `exit`,
    `error`, `ping`); iteration ends after `exit`, a fatal error, or when the server closes. The
    terminal outlives the connection: leaving `capsule.pty()` only disconnects; `kill()` ends it."""

    def __init__(self, channel: SyncChannel, capsule_id: str) -> None:
        super().__init__(capsule_id)
        self._channel = channel

    def write(self, data: bytes | str) -> None:
        """Send input (keystrokes) to the terminal."""
        self._channel.send(_api.pty_input_message(data))

    def resize(self, cols: int, rows: int) -> None:
        """Resize the terminal; both must be greater than 0."""
        self._channel.send(_api.pty_resize_message(cols, rows))

    def kill(self) -> None:
        """Kill the terminal's process (an `exit` event follows)."""
        self._channel.send({"type": "kill"})

    def __iter__(self) -> Iterator[PtyEvent]:
        return self

    def __next__(self) -> PtyEvent:
        if self._done:
            raise StopIteration
        event = self._absorb(self._channel.recv())
        if event is None:
            raise StopIteration
        return event

    def __enter__(self) -> PtySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()


class AsyncPtySession(_PtyState):
    """`PtySession` for `AsyncCapsule`: `await write/resize/kill`, `async for` the events."""

    def __init__(self, channel: AsyncChannel, capsule_id: str) -> None:
        super().__init__(capsule_id)
        self._channel = channel

    async def write(self, data: bytes | str) -> None:
        await self._channel.send(_api.pty_input_message(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._channel.send(_api.pty_resize_message(cols, rows))

    async def kill(self) -> None:
        await self._channel.send({"type": "kill"})

    def __aiter__(self) -> AsyncIterator[PtyEvent]:
        return self

    async def __anext__(self) -> PtyEvent:
        if self._done:
            raise StopAsyncIteration
        event = self._absorb(await self._channel.recv())
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> AsyncPtySession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._channel.close()
