"""Connections around a memory snapshot.

Before a snapshot (POST /snapshot/prepare) idle keep-alive connections are closed and busy ones are told
to close once their response ends, so the frozen guest holds as few half-open sockets as possible. The
host re-initialises envd after a restore (POST /init); connections that were open at prepare time
belong to a peer that may no longer exist, so they are closed then. New connections work as usual.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("wrenn.envd.quiesce")


class Quiescer:
    def __init__(self, connections: Callable[[], Iterable[Any]] | None = None) -> None:
        #: The server's live connections (uvicorn protocol objects: `.client`, `.transport`, `.shutdown()`).
        self._connections = connections or (lambda: ())
        self._before: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def prepared(self) -> bool:
        return len(self._before) > 0

    def _others(self, client: tuple[str, int] | None) -> list[Any]:
        return [
            c for c in list(self._connections()) if client is None or getattr(c, "client", None) != client
        ]

    def prepare(self, client: tuple[str, int] | None) -> int:
        """Close idle connections (all but the caller's); remember every one open now."""
        others = self._others(client)
        for conn in others:
            self._before.add(conn)
            shutdown = getattr(conn, "shutdown", None)
            if shutdown is not None:
                shutdown()
        log.info("prepared for snapshot", extra={"connections": len(others)})
        return len(others)

    def after_restore(self, client: tuple[str, int] | None) -> int:
        """Close what was open before the snapshot (but the caller's own connection)."""
        closed = 0
        for conn in list(self._before):
            if client is not None and getattr(conn, "client", None) == client:
                continue
            transport = getattr(conn, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
                closed += 1
        self._before = weakref.WeakSet()
        if closed:
            log.info("closed connections from before the snapshot", extra={"connections": closed})
        return closed
