"""What a foreground exec holds of its command's output: a bounded share.

A foreground exec (`Exec`) returns the command's output in one response, so the agent holds it until the
command ends. Each stream keeps at most `limit` bytes, and all foreground execs together at most a shared
`budget`; anything beyond is read (so the command is never blocked on a full pipe) and dropped, and the
response says so (`stdout_truncated`, `stderr_truncated`). The command runs on to its own end or its
timeout: truncating its output does not kill it. A caller that wants everything streams it (`ExecStream`).
"""

from __future__ import annotations


class OutputBudget:
    """Bytes all foreground execs may hold at once."""

    def __init__(self, total: int) -> None:
        self.free = total

    def take(self, wanted: int) -> int:
        granted = max(0, min(wanted, self.free))
        self.free -= granted
        return granted

    def give(self, amount: int) -> None:
        self.free += amount


class CappedOutput:
    """One stream of one exec: the first bytes, up to `limit` and what the budget grants."""

    def __init__(self, limit: int, budget: OutputBudget) -> None:
        self.data = bytearray()
        self.truncated = False
        self._limit = limit
        self._budget = budget

    def add(self, chunk: bytes) -> None:
        room = min(len(chunk), self._limit - len(self.data))
        granted = self._budget.take(room) if room > 0 else 0
        self.data += chunk[:granted]
        self.truncated = self.truncated or granted < len(chunk)

    def release(self) -> bytes:
        """The bytes kept, given back to the budget."""
        self._budget.give(len(self.data))
        data, self.data = bytes(self.data), bytearray()
        return data
