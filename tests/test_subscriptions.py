"""Each subscription as the client wants it, over real sockets: `throttle_ms`, `fields` and
patterns (docs/protocol.md, subscribe)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.conftest import StartFeed, recv, recv_until


async def subscribe(ws: aiohttp.ClientWebSocketResponse, **request: object) -> list[dict[str, Any]]:
    await ws.send_json({"op": "subscribe", "id": 1, **request})
    answer = await recv(ws)
    assert answer["type"] == "subscribed", answer
    snapshot = await recv(ws)
    assert snapshot["type"] == "snapshot"
    return snapshot["data"]  # type: ignore[no-any-return]


async def test_fields_cut_every_snapshot_to_what_was_asked(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    (first,) = await subscribe(ws, symbols=["AAPL"], fields=["last", "bid"])
    assert list(first) == ["symbol", "seq", "ts", "last", "bid", "epoch"]
    other = await feed.ws()
    await subscribe(other, symbols=["AAPL"])  # full snapshots beside it
    feed.trade("AAPL", 190.5)
    update = await recv(ws)
    assert update["type"] == "update"
    (snap,) = update["data"]
    assert snap == {
        "symbol": "AAPL",
        "seq": 1,
        "ts": snap["ts"],
        "last": 190.5,
        "bid": None,
        "epoch": first["epoch"],
    }
    (full,) = (await recv(other))["data"]
    assert len(full) == 16 and full["last"] == 190.5
    # Subscribing again changes the fields, live.
    await subscribe(ws, symbols=["AAPL"], fields=["volume"])
    feed.trade("AAPL", 191.0, 50)
    (snap,) = (await recv(ws))["data"]
    assert list(snap) == ["symbol", "seq", "ts", "volume", "epoch"] and snap["volume"] == 150


async def test_a_throttle_sends_at_most_one_update_per_interval_and_never_loses_the_last(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, symbols=["AAPL", "MSFT"], throttle_ms=300)
    started = time.monotonic()
    for n in range(20):  # 20 trades in quick succession
        feed.trade("AAPL", 100.0 + n)
    first = await recv(ws)
    (snap,) = first["data"]
    assert snap["seq"] >= 1
    # The rest were held and conflated: the next update is the newest, when the interval ends.
    last = await recv_until(ws, lambda f: f["type"] == "update" and f["data"][0]["seq"] == 20)
    assert last["data"][0]["last"] == 119.0
    assert time.monotonic() - started >= 0.3 * 0.9  # not before the interval ended
    async with feed.client.get("/stats?connections=1") as response:
        (conn,) = (await response.json())["hub"]["per_connection"]
    assert conn["frames_sent"] <= 5 and conn["conflated"] >= 15
    # A symbol throttled apart is not held back by the other's interval.
    feed.trade("MSFT", 400.0)
    msft = await recv(ws)
    assert msft["data"][0]["symbol"] == "MSFT"


async def test_a_pattern_holds_matching_symbols_and_those_that_appear_later(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed(["BTC-USD", "ETH-USD", "BTC-EUR"])
    ws = await feed.ws()
    await ws.send_json({"op": "subscribe", "id": 1, "symbols": ["BTC-*"]})
    answer = await recv(ws)
    assert answer == {
        "type": "subscribed",
        "id": 1,
        "symbols": ["BTC-*"],
        "matched": ["BTC-USD", "BTC-EUR"],
    }
    snapshot = await recv(ws)
    assert [s["symbol"] for s in snapshot["data"]] == ["BTC-USD", "BTC-EUR"]
    feed.trade("ETH-USD", 3000.0)  # not matched
    feed.trade("BTC-EUR", 60000.0)
    update = await recv(ws)
    assert [s["symbol"] for s in update["data"]] == ["BTC-EUR"]
    # A symbol the market learns later is held at once if it matches.
    feed.source.add_symbol("BTC-JPY")
    feed.trade("BTC-JPY", 9_000_000.0)
    later = await recv(ws)
    assert [s["symbol"] for s in later["data"]] == ["BTC-JPY"]
    # Unsubscribing the pattern lets go of everything it held.
    await ws.send_json({"op": "unsubscribe", "id": 2, "symbols": ["BTC-*"]})
    gone = await recv(ws)
    assert gone["type"] == "unsubscribed"
    assert sorted(gone["symbols"]) == ["BTC-EUR", "BTC-JPY", "BTC-USD"]
    feed.trade("BTC-USD", 61000.0)
    ping = {"op": "ping", "id": 3}
    await ws.send_json(ping)
    assert (await recv(ws))["type"] == "pong"  # and no update before it


async def test_bad_options_are_answered_with_an_error_and_the_connection_lives_on(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await ws.send_json({"op": "subscribe", "id": 1, "symbols": ["AAPL"], "throttle_ms": -5})
    error = await recv(ws)
    assert error["code"] == "bad_request" and "throttle_ms" in error["message"]
    await ws.send_json({"op": "subscribe", "id": 2, "symbols": ["AAPL"], "fields": ["nope"]})
    error = await recv(ws)
    assert error["code"] == "bad_request" and "nope" in error["message"]
    await asyncio.wait_for(subscribe(ws, symbols=["AAPL"]), 5)
