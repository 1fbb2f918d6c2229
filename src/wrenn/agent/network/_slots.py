"""Slot numbers 1..N; the lowest free one is handed out first, so addresses stay small and predictable."""

from __future__ import annotations

import heapq

from ._addresses import NetworkExhausted


class SlotAllocator:
    """Not thread-safe; the agent uses it from its event loop only."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("need at least one slot")
        self.slots = slots
        self._used: set[int] = set()
        # Min-heap of candidates; may hold slots taken by `claim` (skipped lazily in `acquire`).
        self._free: list[int] = list(range(1, slots + 1))

    def __len__(self) -> int:
        return len(self._used)

    def __contains__(self, slot: object) -> bool:
        return slot in self._used

    def acquire(self) -> int:
        """The lowest free slot, now taken. Raises `NetworkExhausted` when all are."""
        while self._free:
            slot = heapq.heappop(self._free)
            if slot not in self._used:
                self._used.add(slot)
                return slot
        raise NetworkExhausted(f"all {self.slots} network slots are in use")

    def release(self, slot: int) -> None:
        """Give `slot` back. Releasing a slot that is not held does nothing."""
        self._check(slot)
        if slot in self._used:
            self._used.remove(slot)
            heapq.heappush(self._free, slot)

    def claim(self, slot: int) -> None:
        """Take a specific slot (adopting a sandbox that survived an agent restart)."""
        self._check(slot)
        if slot in self._used:
            raise ValueError(f"slot {slot} is already in use")
        self._used.add(slot)

    def _check(self, slot: int) -> None:
        if not 1 <= slot <= self.slots:
            raise ValueError(f"slot {slot} outside 1..{self.slots}")
