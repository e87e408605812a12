"""The sweeper: heartbeats for idle connections, slow consumers closed, stalled sockets retried.

Apart from the fan-out: it runs on its own timer, in slices with the event loop in between, and
touches a connection only through its writer and the hub's `close`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from feed import protocol
from feed.hub import Hub
from feed.protocol import CloseCode
from feed.writer import State

SWEEP_BUDGET = 0.0003
"""Seconds of sweeping (heartbeats, mostly) per turn of the event loop."""
STALLED_RETRY = 0.005
"""Seconds between retries of connections whose sockets were full, when no tick comes first."""


class Sweeper:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._clock = hub._clock
        self.period = min(
            0.5, hub.websocket.heartbeat_interval / 4, hub.limits.slow_consumer_timeout / 4
        )

    def sweep(self, ids: Sequence[int], start: int = 0, budget: float = math.inf) -> int:
        """Heartbeats for idle connections from `ids[start]` on; close those stalled past the
        timeout. Stops once `budget` seconds are spent; returns where to go on from.

        `ids` name connections (the keys of `hub.connections`) rather than hold them: a sweep
        spans turns of the loop, and a list of writers would keep every connection that closed
        meanwhile alive until the sweep ended, then free them all at once (after a storm's
        drop, 10,000 connections' objects in one turn: a 100 ms stall)."""
        hub = self.hub
        connections = hub.connections
        now = self._clock()
        deadline = now + budget
        timeout = hub.limits.slow_consumer_timeout
        idle = hub.websocket.heartbeat_interval
        index = start
        while index < len(ids):
            writer = connections.get(ids[index])
            index += 1
            if writer is None or writer.state is not State.OPEN:
                continue
            stalled_for = writer.check_stall(now)
            if stalled_for > timeout:
                hub.counters["closed_slow"] += 1
                hub.close(
                    writer,
                    CloseCode.SLOW_CONSUMER,
                    f"slow consumer: socket full for {stalled_for:.1f} s",
                )
            elif not stalled_for and now - writer.last_write >= idle:
                writer.send(protocol.heartbeat(time.time_ns()), now)
            if self._clock() >= deadline:
                break
        return index

    async def run(self) -> None:
        """Runs until cancelled: retries stalled sockets often, sweeps every connection less."""
        hub = self.hub
        next_sweep = self._clock() + self.period
        while True:
            await asyncio.sleep(STALLED_RETRY if hub.stalled else self.period)
            hub.retry_stalled()
            if self._clock() >= next_sweep:
                # In slices of at most SWEEP_BUDGET, with the event loop in between: sweeping
                # 10,000 connections (and heartbeating the idle ones) at once would hold up
                # every update for milliseconds.
                ids = list(hub.connections)
                start = 0
                while start < len(ids):
                    start = self.sweep(ids, start, SWEEP_BUDGET)
                    await asyncio.sleep(0)
                next_sweep = self._clock() + self.period
