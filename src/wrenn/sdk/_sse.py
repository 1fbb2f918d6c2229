"""Server-sent events as the event stream sends them: `id:`, `event:` and `data:` lines, a blank line
ending each; `:` lines are keepalives. Each event is its `data` JSON, with the frame's `id` added as `id`
(what `Last-Event-ID` takes)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


class SSEParser:
    def __init__(self) -> None:
        self._data: list[str] = []
        self._id = ""

    def feed(self, line: str) -> dict[str, Any] | None:
        """Take one line; the event it completes, if it does."""
        if line == "":
            if not self._data:
                return None
            event: dict[str, Any] = json.loads("\n".join(self._data))
            if self._id:
                event.setdefault("id", self._id)
            self._data, self._id = [], ""
            return event
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "id":
            self._id = value
        return None


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    parser = SSEParser()
    for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event
