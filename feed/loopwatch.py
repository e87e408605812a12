"""The event loop, watched: how late it runs a timer, which is how long it was held.

Every turn of the loop runs what is ready back to back, and a cyclic collection stops it
outright; a timer due every `period` then fires late by as long as the loop was held. That
lateness is the stall a client feels (the fan-out waits on it as much as a ping does), measured
from inside, as Node's `monitorEventLoopDelay` does: the longest, a histogram (`/metrics`) and
the `keep` longest with when they ended (time.monotonic, the machine's clock: a benchmark in
another process lines them up with its phases). One timer every 20 ms: some 0.05% of a core.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
LOG_LAG = 0.1
"""A stall this long (seconds) is logged."""

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the lag histogram; one more bucket holds the rest."""


class LoopWatch:
    def __init__(self, period: float = 0.02, keep: int = 20) -> None:
        self.period = period
        self.keep = keep
        self.samples = 0
        self.total = 0.0
        self.longest = 0.0
        self.counts = [0] * (len(BUCKETS) + 1)
        self.worst: list[tuple[float, float]] = []
        """The `keep` longest lags as (seconds, when it ended), a min-heap."""
        self.context: Callable[[], dict[str, int]] | None = None
        """Counters to log beside a stall, as changes since the timer before it (the hub's:
        connections accepted and closed, requests...): what the loop was busy with."""
        self._before: dict[str, int] = {}

    def observe(self, lag: float, at: float) -> None:
        self.samples += 1
        self.total += lag
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        if lag > self.longest:
            self.longest = lag
        if self.context is None:
            if lag >= LOG_LAG:
                log.warning("event loop: held for %.0f ms", lag * 1000)
            return
        now = self.context()
        if lag >= LOG_LAG:
            changes = ", ".join(
                f"{key} {value - self._before.get(key, 0):+d}" for key, value in now.items()
            )
            log.warning("event loop: held for %.0f ms (meanwhile: %s)", lag * 1000, changes)
        self._before = now
        if len(self.worst) < self.keep:
            heapq.heappush(self.worst, (lag, at))
        elif lag > self.worst[0][0]:
            heapq.heapreplace(self.worst, (lag, at))

    async def run(self) -> None:
        period = self.period
        clock = time.monotonic
        while True:
            due = clock() + period
            await asyncio.sleep(period)
            now = clock()
            self.observe(max(0.0, now - due), now)

    def over(self, seconds: float) -> int:
        """Lags longer than `seconds` (one of BUCKETS) so far."""
        return sum(self.counts[bisect.bisect_left(BUCKETS, seconds) + 1 :])

    def stats(self) -> dict[str, Any]:
        return {
            "period_ms": self.period * 1000,
            "samples": self.samples,
            "longest_ms": round(self.longest * 1000, 3),
            "over_100ms": self.over(0.1),
            "worst": [
                {"ms": round(lag * 1000, 3), "at": at}
                for lag, at in sorted(self.worst, reverse=True)
            ],
        }
