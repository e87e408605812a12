"""The cyclic garbage collector, watched: how often it ran and how long it held the event loop.

Every collection stops the whole process, fan-out included, for as long as it traverses the
objects of its generations; with thousands of connections a full collection traverses all of
theirs. `GcWatch` times each collection (through `gc.callbacks`, a few hundred nanoseconds a
collection) so that `/stats` shows what the collector costs in steady state, and `freeze()`
moves every object alive now into the permanent generation, which collections skip: what a
server holds for good after start-up, or after a burst of connections has settled.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any


class GcWatch:
    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.frozen = 0
        """Times `freeze()` ran."""
        self.unfrozen = 0
        self._started = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 2)
        spent = time.perf_counter() - self._started
        self.collections[generation] += 1
        self.seconds[generation] += spent
        if spent > self.longest[generation]:
            self.longest[generation] = spent

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def freeze(self) -> None:
        """Collect the young generations (cheap: a full collection with thousands of
        connections would stall the fan-out for tens of milliseconds), then exempt everything
        alive from future collections."""
        gc.collect(1)
        gc.freeze()
        self.frozen += 1

    def stats(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "seconds": [round(s, 6) for s in self.seconds],
            "longest_ms": [round(s * 1000, 3) for s in self.longest],
            "frozen_objects": gc.get_freeze_count(),
            "freezes": self.frozen,
            "unfreezes": self.unfrozen,
        }

    async def tend(
        self,
        connections: Callable[[], tuple[int, int]],
        settle: float = 2.0,
        period: float = 0.5,
    ) -> None:
        """Freeze once connections have settled: after start-up, and again each time some
        connected and then none did for `settle` seconds. `connections()` gives the counts of
        connections accepted and closed so far. Frozen objects are not collected even when they
        become cyclic garbage, so once more connections closed since the last freeze than were
        open at it, everything is unfrozen (the next full collection then reclaims what they
        left) and frozen again when settled: memory stays bounded under churn."""
        self.freeze()
        accepted, closed = connections()
        frozen_open = accepted - closed
        frozen_closed = closed
        last_change, last_accepted = time.monotonic(), accepted
        while True:
            await asyncio.sleep(period)
            accepted, closed = connections()
            now = time.monotonic()
            if accepted != last_accepted:
                last_accepted, last_change = accepted, now
                continue
            if closed - frozen_closed > max(frozen_open, 100):
                gc.unfreeze()
                self.unfrozen += 1
                frozen_open, frozen_closed = 0, closed
                last_change = now
                continue
            if now - last_change >= settle and accepted - closed != frozen_open:
                self.freeze()
                frozen_open, frozen_closed = accepted - closed, closed
