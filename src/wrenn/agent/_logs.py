"""A sandbox's logs: its guest console (`console.log` in its directory, written by the VMM's serial port)
read as log entries. The console carries the kernel's lines (`[  1.234567] ...`, seconds since boot),
the guest init's, and envd's (`2026-12-05T09:12:31.123Z INFO  wrenn.envd.process process started pid=...`:
every process started and ended). Bounded: only the console's newest `MAX_BYTES` are read.

An entry's time: envd's own stamp; a kernel line's boot offset from the sandbox's start (a sandbox
restored from a snapshot kept the kernel of the boot that made it, so its kernel lines take the time of
the line before); any other line the time of the line before it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

#: The newest part of the console that is read.
MAX_BYTES = 1 << 20
_ENVD = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(.*)$"
)
_KERNEL = re.compile(r"^\[\s*(\d+\.\d+)\] ?(.*)$")
_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}
#: Terminal control sequences (colours, cursor moves) that a console line may carry.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Entry:
    timestamp: float
    level: str
    message: str
    source: str


def console_entries(path: Path, started_at: float, restored: bool, max_bytes: int = MAX_BYTES) -> list[Entry]:
    """The console at `path` as entries, oldest first; none when there is no console (yet)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            raw = f.read(max_bytes)
    except FileNotFoundError:
        return []
    lines = raw.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # cut in the middle
    entries: list[Entry] = []
    last = started_at
    for line in lines:
        text = _CONTROL.sub("", line).rstrip()
        if not text:
            continue
        if m := _ENVD.match(text):
            last = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            entries.append(Entry(last, _LEVELS[m.group(2)], m.group(3), "envd"))
        elif m := _KERNEL.match(text):
            if not restored:
                last = max(last, started_at + float(m.group(1)))
            entries.append(Entry(last, "info", m.group(2), "kernel"))
        else:
            entries.append(Entry(last, "info", text, "console"))
    return entries
