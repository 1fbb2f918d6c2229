"""Per-sandbox metrics: the VMM's CPU and memory and the disk's allocated bytes, sampled into rings.

Three rings per sandbox, each a different resolution: every sample for 10 minutes, one point per 30 s for
2 hours, one per 5 minutes for 24 hours. A coarser ring takes the newest sample of its interval.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass

import psutil

#: (resolution in seconds, how many points): every sample for 10 minutes at the default interval (1 s),
#: then 2 hours at 30 s and 24 hours at 5 minutes.
TIERS = ((0.0, 600), (30.0, 240), (300.0, 288))


@dataclass(frozen=True, slots=True)
class Point:
    timestamp: float
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int


class _Series:
    def __init__(self) -> None:
        self.rings = [collections.deque[Point](maxlen=size) for _, size in TIERS]

    def add(self, point: Point) -> None:
        for (resolution, _), ring in zip(TIERS, self.rings, strict=True):
            if not ring or point.timestamp - ring[-1].timestamp >= resolution:
                ring.append(point)

    def since(self, start: float) -> list[Point]:
        """Points from `start` on, from the finest ring that reaches back that far. When none does
        (the sandbox is younger than the range), the finest ring holds all there is."""
        ring = next((r for r in self.rings if r and r[0].timestamp <= start), self.rings[0])
        return [p for p in ring if p.timestamp >= start]


class MetricsStore:
    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self._procs: dict[str, psutil.Process] = {}

    def sample(self, sandbox_id: str, pid: int, vcpus: int, disk_bytes: int) -> Point | None:
        proc = self._procs.get(sandbox_id)
        if proc is None or proc.pid != pid:
            try:
                proc = psutil.Process(pid)
                proc.cpu_percent(None)  # primes the counter
            except psutil.Error:
                return None
            self._procs[sandbox_id] = proc
        try:
            with proc.oneshot():
                cpu = proc.cpu_percent(None) / max(vcpus, 1)
                mem = proc.memory_info().rss
        except psutil.Error:
            return None
        point = Point(time.time(), round(min(cpu, 100.0), 2), mem, disk_bytes)
        self._series.setdefault(sandbox_id, _Series()).add(point)
        return point

    def points(self, sandbox_id: str, range_s: float) -> list[Point]:
        series = self._series.get(sandbox_id)
        return series.since(time.time() - range_s) if series else []

    def drop(self, sandbox_id: str) -> None:
        self._series.pop(sandbox_id, None)
        with contextlib.suppress(KeyError):
            del self._procs[sandbox_id]
