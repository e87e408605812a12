"""The cyclic collector as `/stats` shows it, and freezing once connections settle."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from tests.conftest import Feed, StartFeed, subscribe


async def gc_stats(feed: Feed) -> dict[str, Any]:
    async with feed.client.get("/stats") as response:
        body: dict[str, Any] = await response.json()
    return body["gc"]


async def wait_for(feed: Feed, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = await gc_stats(feed)
        if check(stats):
            return stats
        assert time.monotonic() < deadline, f"not reached in time: {stats}"
        await asyncio.sleep(0.05)


async def test_stats_time_every_collection(start_feed: StartFeed) -> None:
    feed = await start_feed()
    before = await gc_stats(feed)
    gc.collect()
    after = await gc_stats(feed)
    assert after["collections"][2] == before["collections"][2] + 1
    assert after["seconds"][2] > before["seconds"][2]
    assert after["longest_ms"][2] > 0
    assert after["freezes"] == 0 and after["frozen_objects"] == 0  # off by default


async def test_freezes_at_start_and_again_once_connections_settle(start_feed: StartFeed) -> None:
    feed = await start_feed(gc={"freeze": True, "settle": 0.2})
    first = await wait_for(feed, lambda s: s["freezes"] >= 1)
    assert first["frozen_objects"] > 0
    clients = [await feed.ws() for _ in range(5)]
    for ws in clients:
        await subscribe(ws, ["AAPL"])
    settled = await wait_for(feed, lambda s: s["freezes"] > first["freezes"])
    assert settled["frozen_objects"] > first["frozen_objects"]


async def test_churn_unfreezes_so_closed_connections_can_be_collected(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed(gc={"freeze": True, "settle": 0.2})
    await wait_for(feed, lambda s: s["freezes"] >= 1)
    for _ in range(120):  # more closes since the freeze than were open at it (and than 100)
        ws = await feed.ws()
        await ws.close()
    stats = await wait_for(feed, lambda s: s["unfreezes"] >= 1)
    assert stats["unfreezes"] >= 1
