"""A sandbox's console read as log entries (agent/_logs.py): envd's stamped lines, the kernel's boot
offsets, the rest at the time before them; bounded to the newest bytes."""

from __future__ import annotations

from pathlib import Path

from wrenn.agent._logs import console_entries

CONSOLE = (
    "[    0.000000] Linux version 6.1.0\n"
    "\x1b[0mwrenn-init: starting envd\r\n"
    "[    1.500000] random: crng init done\n"
    "2026-12-05T09:12:31.123Z INFO  wrenn.envd.process process started pid=5 cmd=ls\n"
    "2026-12-05T09:12:32.000Z WARNING wrenn.envd slow\n"
    "a line of a program\n"
)
STARTED = 1_796_461_900.0  # 2026-12-05T09:11:40Z


def test_entries_carry_their_times_levels_and_sources(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text(CONSOLE)
    entries = console_entries(console, STARTED, restored=False)
    assert [(e.source, e.level, e.message) for e in entries] == [
        ("kernel", "info", "Linux version 6.1.0"),
        ("console", "info", "wrenn-init: starting envd"),
        ("kernel", "info", "random: crng init done"),
        ("envd", "info", "wrenn.envd.process process started pid=5 cmd=ls"),
        ("envd", "warn", "wrenn.envd slow"),
        ("console", "info", "a line of a program"),
    ]
    times = [e.timestamp for e in entries]
    assert times[:3] == [STARTED, STARTED, STARTED + 1.5]
    assert times[3:] == [1_796_461_951.123, 1_796_461_952.0, 1_796_461_952.0]
    restored = console_entries(console, STARTED, restored=True)  # a snapshot's kernel booted long before
    assert restored[2].timestamp == STARTED


def test_only_the_newest_bytes_are_read_and_no_console_is_no_entries(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("".join(f"line {i}\n" for i in range(1000)))
    entries = console_entries(console, STARTED, restored=False, max_bytes=100)
    assert entries[-1].message == "line 999" and len(entries) < 20
    assert all(e.message.startswith("line ") for e in entries)  # the cut first line is dropped
    assert console_entries(tmp_path / "none.log", STARTED, restored=False) == []
