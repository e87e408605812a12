"""The cyclic collector as `/stats` shows it, and freezing once connections settle."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from feed import config
from tests.conftest import Feed, StartFeed, serve_as_feed, subscribe
from tests.wsclient import Closed, RawClient


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
    assert after["freezing"] is False and after["freezes"] == 0  # start_feed turns it off


def test_freezing_is_on_by_default() -> None:
    assert config.build({}).gc.freeze is True


async def test_freezes_what_survives_its_second_collection(start_feed: StartFeed) -> None:
    """So that no collection walks more than what came since the last generation-1 one: in a
    storm of 10,000 reconnections a collection of everything would hold the loop for over a
    second."""
    feed = await start_feed(gc={"freeze": True})
    first = await wait_for(feed, lambda s: s["freezes"] >= 1)  # at start-up
    assert first["freezing"] is True
    clients = [await feed.ws() for _ in range(5)]
    for ws in clients:
        await subscribe(ws, ["AAPL"])
    gc.collect()  # as the collector's own thresholds would, sooner or later
    after = await gc_stats(feed)
    assert after["freezes"] > first["freezes"]  # and after each generation-1 one meanwhile
    assert after["collections"][2] > first["collections"][2]


async def test_churn_compacts_so_what_was_frozen_can_be_collected(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed(gc={"freeze": True, "settle": 0.2})
    await wait_for(feed, lambda s: s["freezes"] >= 1)
    for _ in range(120):  # 100 closes or more, then quiet with few connections open
        ws = await feed.ws()
        await ws.close()
    stats = await wait_for(feed, lambda s: s["compactions"] >= 1)
    assert stats["freezes"] >= 2  # frozen again after it


SERVER_SIDE = {"WebSocketResponse", "RequestHandler", "Request", "WebSocketWriter", "Paced"}
"""aiohttp's objects of one server-side connection."""


async def close_code(client: RawClient) -> int | None:
    """Read on until the server's close frame: its code."""
    while True:
        try:
            await client.recv()
        except Closed as closed:
            return closed.code


async def end(client: RawClient, how: str) -> None:
    if how == "close frame":
        await client.send_close()
        assert await close_code(client) == 1000
    elif how == "too big":
        await client.send("x" * 5000)  # over limits.max_message_size: the server closes, 1009
        assert await close_code(client) == 1009
    if how == "reset":
        client.reset()
    else:
        client.close()
        await client.writer.wait_closed()


@pytest.mark.parametrize("how", ["close frame", "fin", "reset", "too big"])
async def test_a_finished_connection_leaves_nothing_to_the_cyclic_collector(how: str) -> None:
    """However a connection ends, reference counting frees it when its handler returns: with
    thousands of connections, a full collection of the cycles they left is what stalls the
    server (benchmarks/storm.py), and a frozen one (gc.freeze) would never be freed at all.
    The app runs as `feed serve` runs it (aiohttp's test server would cancel the handler of a
    connection that is lost, a path production never takes)."""
    async with serve_as_feed() as served:  # gc.freeze off: gc.get_objects() skips frozen ones
        clients = [await served.raw() for _ in range(10)]
        for client in clients:
            await client.send({"op": "subscribe", "symbols": ["AAPL"], "id": 1})
            assert (await client.recv())["type"] == "subscribed"
        assert len(alive("WebSocketResponse")) == 10
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage, to look at
        try:
            for client in clients:
                await end(client, how)
            deadline = time.monotonic() + 10
            while alive("WebSocketResponse"):  # until every handler returned, freed or not
                assert time.monotonic() < deadline, "the server's connections did not end"
                await asyncio.sleep(0.05)
            left = [o for o in gc.garbage if type(o).__name__ in SERVER_SIDE]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert left == [], f"{len(left)} objects of closed connections were cyclic garbage"


def alive(name: str) -> list[object]:
    """The objects of type `name` still alive after a collection (gc.garbage, with
    DEBUG_SAVEALL, keeps what the collection found: those are not counted)."""
    gc.collect()
    found = {id(o) for o in gc.garbage}
    return [o for o in gc.get_objects() if type(o).__name__ == name and id(o) not in found]
