"""The server's own measure of how long its event loop was held, as /stats and /metrics show
it, and its log line."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from tests.conftest import Feed, StartFeed


async def loop_stats(feed: Feed) -> dict[str, Any]:
    async with feed.client.get("/stats") as response:
        body: dict[str, Any] = await response.json()
    return body["loop"]


async def test_a_held_loop_shows_in_stats_metrics_and_the_log(
    start_feed: StartFeed, caplog: pytest.LogCaptureFixture
) -> None:
    feed = await start_feed()
    before = await loop_stats(feed)
    with caplog.at_level(logging.WARNING, logger="feed.loopwatch"):
        time.sleep(0.15)  # the stimulus: this test holds the loop the server runs on
        deadline = time.monotonic() + 5
        while (after := await loop_stats(feed))["over_100ms"] == before["over_100ms"]:
            assert time.monotonic() < deadline, after
            await asyncio.sleep(0.02)
    assert after["longest_ms"] >= 100
    assert after["worst"][0]["ms"] >= 100
    assert any("event loop: held for" in r.getMessage() for r in caplog.records)
    async with feed.client.get("/metrics") as response:
        text = await response.text()
    assert 'feed_event_loop_lag_seconds_bucket{le="0.1"}' in text
    assert "feed_event_loop_lag_longest_seconds" in text
