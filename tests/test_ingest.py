"""The producer endpoint `/ingest`, as producers and subscribers see it over real sockets.

Each test runs a real feed (aiohttp on a free port) with the ingest source and, for symbols
another source owns, a PushSource; producers and subscribers are real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed import config, ticks
from feed.config import ConfigError
from feed.server import NODE
from feed.source import PushSource
from feed.sources import ingest as ingest_kind
from feed.sources import registry
from feed.sources.ingest import IngestSource
from feed.tickparse import encode_binary
from tests.conftest import SYMBOLS, Feed, StartFeed, recv, recv_until, subscribe

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token"
TS = 1_764_300_000_000_000_000


@dataclasses.dataclass
class Ingested:
    feed: Feed
    source: IngestSource

    async def producer(
        self, token: str | None = TOKEN, **kwargs: Any
    ) -> aiohttp.ClientWebSocketResponse:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        ws: aiohttp.ClientWebSocketResponse = await self.feed.client.ws_connect(
            "/ingest", headers=headers, **kwargs
        )
        return ws

    async def stats(self) -> dict[str, Any]:
        response = await self.feed.client.get("/stats")
        body: dict[str, Any] = await response.json()
        return next(s for s in body["sources"] if s["kind"] == "ingest")

    async def health(self) -> dict[str, Any]:
        response = await self.feed.client.get("/healthz")
        body: dict[str, Any] = await response.json()
        return next(s for s in body["sources"] if s["kind"] == "ingest")

    async def snapshot(self, *names: str) -> dict[str, dict[str, Any]]:
        response = await self.feed.client.get("/snapshot", params={"symbols": ",".join(names)})
        assert response.status == 200, await response.text()
        return {s["symbol"]: s for s in await response.json()}

    async def symbols(self) -> list[str]:
        response = await self.feed.client.get("/symbols")
        names: list[str] = await response.json()
        return names


async def start(
    start_feed: StartFeed, ingest: dict[str, Any] | None = None, **sections: dict[str, Any]
) -> Ingested:
    """A feed with the ingest source (token TOKEN) and a PushSource owning SYMBOLS."""
    sections = {"ingest": {"tokens": [TOKEN], **(ingest or {})}, **sections}
    built = config.build(sections)
    source = ingest_kind.create(built.section("ingest"), built)
    push = PushSource(SYMBOLS)
    feed = await start_feed(source=[push, source], **sections)
    return Ingested(dataclasses.replace(feed, source=push), source)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until `check()` holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def answer(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    frame: dict[str, Any] = orjson.loads(message.data)
    return frame


async def send(ws: aiohttp.ClientWebSocketResponse, message: Any) -> dict[str, Any]:
    await ws.send_str(orjson.dumps(message).decode())
    return await answer(ws)


def trade(symbol: str, price: Any = 10.0, size: Any = 100, **extra: Any) -> dict[str, Any]:
    return {"type": "trade", "symbol": symbol, "ts": TS, "price": price, "size": size, **extra}


def quote(symbol: str, bid: Any = 9.0, ask: Any = 9.5, **extra: Any) -> dict[str, Any]:
    return {
        "type": "quote",
        "symbol": symbol,
        "ts": TS,
        "bid": bid,
        "ask": ask,
        "bid_size": 300,
        "ask_size": 200,
        **extra,
    }


# -- the three forms --------------------------------------------------------------------------


async def test_each_form_is_applied_and_answered_as_documented(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    subscriber = await ingested.feed.ws()
    producer = await ingested.producer()

    # A tick object: no id, nothing wrong, so no answer; the next answer is the envelope's.
    await producer.send_str(orjson.dumps(trade("XA", 10.0, 5)).decode())
    assert await send(
        producer, {"type": "ticks", "id": 7, "ticks": [quote("XA"), trade("XB")]}
    ) == {
        "type": "accepted",
        "id": 7,
        "accepted": 2,
        "rejected": [],
        "rejected_count": 0,
    }
    # A bare array (no id, clean): no answer either; then a columnar batch with a string id.
    await producer.send_str(orjson.dumps([trade("XB", 11.0, 1)]).decode())
    batch = {
        "type": "batch",
        "id": "b-1",
        "symbols": ["XA", "XC"],
        "sym": [0, 1, 1],
        "kind": [0, 1, 0],
        "price": [12.0, 0, 30.5],
        "size": [7, 0, 2],
        "bid": [0, 29.0, 0],
        "ask": [0, 29.5, 0],
        "bid_size": [0, 10, 0],
        "ask_size": [0, 20, 0],
    }
    assert await send(producer, batch) == {
        "type": "accepted",
        "id": "b-1",
        "accepted": 3,
        "rejected": [],
        "rejected_count": 0,
    }
    await subscribe(subscriber, ["XA", "XB", "XC"])
    snaps = await ingested.snapshot("XA", "XB", "XC")
    assert snaps["XA"]["seq"] == 3 and snaps["XA"]["last"] == 12.0 and snaps["XA"]["volume"] == 12
    assert snaps["XA"]["bid"] == 9.0
    assert snaps["XB"]["seq"] == 2 and snaps["XB"]["last"] == 11.0 and snaps["XB"]["ts"] == TS
    assert snaps["XC"]["seq"] == 2 and snaps["XC"]["last"] == 30.5 and snaps["XC"]["ask"] == 29.5
    # Columnar ticks without ts were stamped on receipt.
    assert abs(snaps["XC"]["ts"] - time.time_ns()) < 60 * 10**9
    await producer.close()


async def test_a_binary_batch_is_applied_and_its_bad_ticks_named(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    subscriber = await ingested.feed.ws()
    producer = await ingested.producer()
    batch = ticks.empty(3)
    batch["sym"] = [0, 1, 0]
    batch["kind"] = [ticks.TRADE, ticks.QUOTE, ticks.TRADE]
    batch["ts"] = TS
    batch["price"] = [12.5, np.nan, -3.0]  # the last trade's price is bad
    batch["size"] = [4, 0, 1]
    batch["bid"] = [np.nan, 29.0, np.nan]
    batch["ask"] = [np.nan, 29.5, np.nan]
    batch["bid_size"] = [0, 10, 0]
    batch["ask_size"] = [0, 20, 0]
    await producer.send_bytes(encode_binary(batch, ["BA", "BB"], 11))
    reply = await answer(producer)
    assert reply["id"] == 11 and reply["accepted"] == 2 and reply["rejected_count"] == 1
    assert reply["rejected"] == [
        {"index": 2, "field": "price", "reason": "'price' must be positive, got -3.0"}
    ]
    await subscribe(subscriber, ["BA", "BB"])
    snaps = await ingested.snapshot("BA", "BB")
    assert snaps["BA"]["seq"] == 1 and snaps["BA"]["last"] == 12.5 and snaps["BA"]["ts"] == TS
    assert snaps["BB"]["bid"] == 29.0 and snaps["BB"]["ask_size"] == 20
    await producer.close()


async def test_ticks_reach_a_subscriber_at_once(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    producer = await ingested.producer()
    assert (await send(producer, {"type": "ticks", "id": 1, "ticks": [trade("LIVE")]}))["accepted"]
    subscriber = await ingested.feed.ws()
    await subscribe(subscriber, ["LIVE"])
    for n in range(2, 5):
        await producer.send_str(orjson.dumps(trade("LIVE", 10.0 + n)).decode())
        update = await recv_until(subscriber, lambda f: f["type"] == "update")
        assert update["data"][0]["seq"] == n and update["data"][0]["last"] == 10.0 + n


# -- validation, as the producer sees it -------------------------------------------------------

BAD_TICKS: list[tuple[Any, str | None, str]] = [
    (trade("V", price=-1.0), "price", "positive"),
    (trade("V", price=0), "price", "positive"),
    (trade("V", price="10"), "price", "number"),
    (trade("V", size=0), "size", "positive"),
    (trade("V", size=1.5), "size", "integer"),
    (trade("V", size=True), "size", "integer"),
    (trade("V", ts=-5), "ts", "positive"),
    (trade("V", ts="now"), "ts", "integer"),
    (trade("", 10.0), "symbol", "empty"),
    (trade(" V"), "symbol", "whitespace"),
    (trade("V\x07"), "symbol", "control"),
    (trade("V", venue="X"), "venue", "unknown field"),
    ({"type": "trade", "symbol": "V", "size": 1}, "price", "missing"),
    ({"type": "order", "symbol": "V"}, "type", "unknown type"),
    ({"symbol": "V", "price": 1.0, "size": 1}, "type", "missing"),
    (quote("V", bid=10.0, ask=9.0), "bid", "crossed"),
    (quote("V", ask=-1.0), "ask", "positive"),
    ({**quote("V"), "bid_size": -1}, "bid_size", "negative"),
    (quote("V", id=3), "id", "unknown field"),
    (5, None, "object"),
    (trade("AAPL"), "symbol", "ticked by source"),
]


async def test_every_rule_names_the_index_and_the_field(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    producer = await ingested.producer()
    for number, (bad, field, words) in enumerate(BAD_TICKS):
        reply = await send(
            producer, {"type": "ticks", "id": number, "ticks": [trade("GOOD"), bad, trade("GOOD")]}
        )
        assert reply["id"] == number and reply["accepted"] == 2, (bad, reply)
        assert reply["rejected_count"] == 1
        [reject] = reply["rejected"]
        assert (reject["index"], reject["field"]) == (1, field), (bad, reject)
        assert words in reject["reason"], (bad, reject)
    # Rejects without an id are still reported, so a producer always learns of them.
    await producer.send_str(orjson.dumps(trade("GOOD", price=-2.0)).decode())
    reply = await answer(producer)
    assert "id" not in reply
    assert reply["accepted"] == 0 and reply["rejected"][0]["field"] == "price"
    snap = (await ingested.snapshot("GOOD"))["GOOD"]
    assert snap["seq"] == 2 * len(BAD_TICKS)
    assert snap["low"] == 10.0  # no bad price got in
    assert (await ingested.snapshot("AAPL"))["AAPL"]["seq"] == 0
    stats = await ingested.stats()
    assert stats["ticks_in"] == 2 * len(BAD_TICKS)
    assert stats["ticks_rejected"] == len(BAD_TICKS) + 1
    assert "V" not in await ingested.symbols()


async def test_rejects_listed_are_capped_but_counted(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    producer = await ingested.producer()
    ticks = [trade("CAP", price=-1.0)] * 250 + [trade("CAP")]
    reply = await send(producer, {"type": "ticks", "id": 1, "ticks": ticks})
    assert reply["accepted"] == 1 and reply["rejected_count"] == 250
    assert [r["index"] for r in reply["rejected"]] == list(range(ingest_kind.MAX_LISTED_REJECTS))


good_trades = st.builds(
    lambda price, size, ts: (
        {"type": "trade", "price": price, "size": size} | ({"ts": ts} if ts else {})
    ),
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.integers(min_value=1, max_value=10**9),
    st.one_of(st.none(), st.integers(min_value=1, max_value=2**63 - 1)),
)
good_quotes = st.builds(
    lambda bid, spread, sizes: {
        "type": "quote",
        "bid": bid,
        "ask": bid + spread,
        "bid_size": sizes[0],
        "ask_size": sizes[1],
    },
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False),
    st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
)
MUTATIONS: dict[str, list[tuple[str, Any]]] = {
    "trade": [("price", -1.5), ("price", "1"), ("price", None), ("size", 0), ("size", 2.5),
              ("size", False), ("ts", 0), ("ts", 1.5), ("symbol", ""), ("symbol", 7),
              ("venue", "x")],
    "quote": [("bid", -1.0), ("ask", "9"), ("bid_size", -3), ("ask_size", 0.5), ("ts", -1),
              ("symbol", "a\nb"), ("bid", 1e9), ("exchange", 1)],
}  # fmt: skip


@st.composite
def mixed_message(draw: st.DrawFn) -> tuple[list[Any], list[tuple[int, str]]]:
    """Ticks of symbols M0..M3, some with one broken field, and the (index, field) of each
    broken one."""
    ticks: list[Any] = []
    broken: list[tuple[int, str]] = []
    for index in range(draw(st.integers(min_value=1, max_value=30))):
        tick = dict(draw(st.one_of(good_trades, good_quotes)))
        tick["symbol"] = f"M{draw(st.integers(0, 3))}"
        if draw(st.booleans()):
            field, value = draw(st.sampled_from(MUTATIONS[tick["type"]]))
            tick[field] = value  # ("bid", 1e9): a crossed quote, rejected on field bid
            broken.append((index, field))
        ticks.append(tick)
    return ticks, broken


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=mixed_message())
async def test_a_mixed_message_applies_the_good_and_names_the_bad(
    start_feed: StartFeed, message: tuple[list[Any], list[tuple[int, str]]]
) -> None:
    ticks, broken = message
    ingested = await start(start_feed)
    producer = await ingested.producer()
    subscriber = await ingested.feed.ws()
    reply = await send(producer, {"type": "ticks", "id": 1, "ticks": ticks})
    bad = {index for index, _ in broken}
    assert reply["accepted"] == len(ticks) - len(broken)
    assert [(r["index"], r["field"]) for r in reply["rejected"]] == broken
    good = [tick for index, tick in enumerate(ticks) if index not in bad]
    sent = sorted({tick["symbol"] for tick in good})
    assert sorted(set(await ingested.symbols()) - set(SYMBOLS)) == sent
    if sent:
        _, snapshot = await subscribe(subscriber, sent)
        for snap in snapshot["data"]:
            mine = [tick for tick in good if tick["symbol"] == snap["symbol"]]
            assert snap["seq"] == len(mine)
            trades = [tick for tick in mine if tick["type"] == "trade"]
            assert snap["trades"] == len(trades)
            if trades:
                assert snap["last"] == trades[-1]["price"]
                assert snap["volume"] == sum(tick["size"] for tick in trades)
    await producer.close()
    await subscriber.close()


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": f"Basic {TOKEN}"}, {}),
        ({}, {"token": "wrong"}),
        ({}, {"token": ""}),
    ],
    ids=["none", "wrong-header", "not-bearer", "wrong-query", "empty-query"],
)
async def test_no_or_a_wrong_token_is_refused_with_401(
    start_feed: StartFeed, headers: dict[str, str], params: dict[str, str]
) -> None:
    ingested = await start(start_feed)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ingested.feed.client.ws_connect("/ingest", headers=headers, params=params)
    assert refused.value.status == 401
    response = await ingested.feed.client.get("/ingest", headers=headers, params=params)
    assert response.status == 401
    body = await response.json()
    assert body["error"] == "unauthorized" and "token" in body["message"]
    assert TOKEN not in await response.text()
    stats = await ingested.stats()
    assert stats["unauthorized"] == 2 and stats["producers"] == 0 and stats["ticks_in"] == 0
    assert stats["state"] == "connecting"


async def test_the_token_may_come_in_the_header_or_the_query(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    by_header = await ingested.producer()
    by_query = await ingested.feed.client.ws_connect("/ingest", params={"token": TOKEN})
    for number, ws in enumerate((by_header, by_query)):
        reply = await send(ws, {"type": "ticks", "id": number, "ticks": [trade("TOK")]})
        assert reply["accepted"] == 1
    assert (await ingested.stats())["producers"] == 2


async def test_a_plain_get_with_a_token_is_told_to_upgrade(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    response = await ingested.feed.client.get("/ingest", params={"token": TOKEN})
    assert response.status == 400
    assert (await response.json())["error"] == "bad_request"


# -- symbols appear while running --------------------------------------------------------------


async def test_a_new_symbol_is_listed_and_can_be_subscribed_to(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    subscriber = await ingested.feed.ws()
    await subscriber.send_json({"op": "subscribe", "symbols": ["NEWCO"], "id": 1})
    assert (await recv(subscriber))["code"] == "unknown_symbol"
    producer = await ingested.producer()
    await send(producer, {"type": "ticks", "id": 1, "ticks": [trade("NEWCO", 42.0)]})
    assert "NEWCO" in await ingested.symbols()
    _, snapshot = await subscribe(subscriber, ["NEWCO"], request_id=2)
    assert snapshot["data"][0]["seq"] == 1 and snapshot["data"][0]["last"] == 42.0
    await producer.send_str(orjson.dumps(trade("NEWCO", 43.0)).decode())
    update = await recv_until(subscriber, lambda f: f["type"] == "update")
    assert update["data"][0]["symbol"] == "NEWCO" and update["data"][0]["seq"] == 2


async def test_past_max_symbols_a_new_symbol_is_rejected_naming_the_limit(
    start_feed: StartFeed,
) -> None:
    ingested = await start(start_feed, limits={"max_symbols": len(SYMBOLS) + 2})
    producer = await ingested.producer()
    ticks = [trade("N1"), trade("N2"), trade("N3"), trade("N1")]
    reply = await send(producer, {"type": "ticks", "id": 1, "ticks": ticks})
    assert reply["accepted"] == 3
    [reject] = reply["rejected"]
    assert reject["index"] == 2 and reject["field"] == "symbol"
    assert "limits.max_symbols" in reject["reason"]
    assert "N3" not in await ingested.symbols()


# -- malformed messages and abuse -------------------------------------------------------------


async def test_malformed_messages_are_answered_and_the_connection_lives_on(
    start_feed: StartFeed,
) -> None:
    ingested = await start(start_feed)
    producer = await ingested.producer()
    for text, code, message_id in [
        ('{"type":"trade", nope', "bad_json", None),
        ("[1, 2", "bad_json", None),
        ('"hello"', "bad_request", None),
        ('{"type":"batch","id":4,"symbols":["A"],"sym":[0]}', "bad_request", 4),
        ('{"type":"ticks","id":"t5","ticks":5}', "bad_request", "t5"),
        ('{"type":"ticks","id":true,"ticks":[]}', "bad_request", None),
    ]:
        await producer.send_str(text)
        reply = await answer(producer)
        assert reply["type"] == "error" and reply["code"] == code, (text, reply)
        assert reply.get("id") == message_id, (text, reply)
        assert reply["message"]
    await producer.send_frame(b"\xff\xfe[]", aiohttp.WSMsgType.TEXT)  # text, not UTF-8
    assert (await answer(producer))["code"] == "bad_json"
    await producer.send_bytes(b"\x00\x01")  # binary, but not a binary batch
    reply = await answer(producer)
    assert reply["code"] == "bad_request" and "4-byte length" in reply["message"]
    await producer.send_bytes(b"\x02\x00\x00\x00{}")
    reply = await answer(producer)
    assert reply["code"] == "bad_request" and '"type":"batch"' in reply["message"]
    reply = await send(producer, {"type": "ticks", "id": 9, "ticks": [trade("OK")]})
    assert reply == {"type": "accepted", "id": 9, "accepted": 1, "rejected": [],
                     "rejected_count": 0}  # fmt: skip
    stats = await ingested.stats()
    assert stats["errors"] == 9 and stats["messages"] == 10


async def test_a_message_over_the_size_limit_closes_with_1009(start_feed: StartFeed) -> None:
    ingested = await start(start_feed, ingest={"max_message_size": 1000})
    producer = await ingested.producer()
    fits = '{"type":"ticks","id":1,"ticks":[]}'
    await producer.send_str(fits.ljust(1000))  # exactly the limit: accepted
    assert (await answer(producer))["type"] == "accepted"
    await producer.send_str(fits.ljust(1001))
    closed = await producer.receive(timeout=5)
    assert closed.type is aiohttp.WSMsgType.CLOSE and producer.close_code == 1009
    await until(lambda: _counter(ingested, "producers", 0))
    assert (await ingested.stats())["closed_too_big"] == 1


async def test_more_than_the_message_rate_closes_with_1008(start_feed: StartFeed) -> None:
    ingested = await start(start_feed, ingest={"message_rate": 1.0, "message_burst": 3})
    producer = await ingested.producer()
    for number in range(3):
        await producer.send_str(f'{{"type":"ticks","id":{number},"ticks":[]}}')
        assert (await answer(producer))["id"] == number
    await producer.send_str("[]")
    closed = await producer.receive(timeout=5)
    assert closed.type is aiohttp.WSMsgType.CLOSE and producer.close_code == 1008
    assert "messages per second" in str(closed.extra)
    await until(lambda: _counter(ingested, "closed_rate_limited", 1))


async def _counter(ingested: Ingested, name: str, value: int) -> bool:
    return bool((await ingested.stats())[name] == value)


# -- stale and live ---------------------------------------------------------------------------


async def test_a_producer_going_away_makes_its_symbols_stale_until_the_next_tick(
    start_feed: StartFeed,
) -> None:
    ingested = await start(start_feed)
    first = await ingested.producer()
    await send(first, {"type": "ticks", "id": 1, "ticks": [trade("S1"), trade("S2")]})
    subscriber = await ingested.feed.ws()
    await subscribe(subscriber, ["S1", "S2", "AAPL"])
    await first.close()
    status = await recv_until(subscriber, lambda f: f["type"] == "status")
    assert status == {
        "type": "status",
        "state": "stale",
        "symbols": ["S1", "S2"],
        "reason": "producer disconnected",
    }
    health = await ingested.health()
    assert health["state"] == "stale" and health["reason"] == "no producer connected"
    second = await ingested.producer()
    await second.send_str(orjson.dumps(trade("S1", 20.0)).decode())
    assert await recv(subscriber) == {"type": "status", "state": "live", "symbols": ["S1"]}
    update = await recv(subscriber)
    assert update["type"] == "update" and update["data"][0]["symbol"] == "S1"
    assert update["data"][0]["seq"] == 2
    assert (await ingested.health())["state"] == "live"


async def test_a_silent_producer_makes_its_symbols_stale_then_live_again(
    start_feed: StartFeed,
) -> None:
    ingested = await start(start_feed, ingest={"stale_after": 0.3})
    producer = await ingested.producer()
    await send(producer, {"type": "ticks", "id": 1, "ticks": [trade("Q1")]})
    subscriber = await ingested.feed.ws()
    await subscribe(subscriber, ["Q1"])
    status = await recv_until(subscriber, lambda f: f["type"] == "status", timeout=5)
    assert status["state"] == "stale" and status["symbols"] == ["Q1"]
    assert status["reason"] == "no data from its producer for 0.3 s"
    health = await ingested.health()
    assert health["state"] == "stale" and health["reason"] == "every producer is silent"
    await producer.send_str(orjson.dumps(trade("Q1", 11.0)).decode())
    assert await recv(subscriber) == {"type": "status", "state": "live", "symbols": ["Q1"]}
    assert (await recv(subscriber))["data"][0]["seq"] == 2
    assert (await ingested.health())["state"] == "live"


async def test_a_symbol_stays_live_while_another_producer_sends_it(
    start_feed: StartFeed,
) -> None:
    ingested = await start(start_feed)
    first, second = await ingested.producer(), await ingested.producer()
    await send(first, {"type": "ticks", "id": 1, "ticks": [trade("SH"), trade("ONLY1")]})
    await send(second, {"type": "ticks", "id": 1, "ticks": [trade("SH")]})
    subscriber = await ingested.feed.ws()
    await subscribe(subscriber, ["SH", "ONLY1"])
    await first.close()
    status = await recv_until(subscriber, lambda f: f["type"] == "status")
    assert status["symbols"] == ["ONLY1"]  # SH is still sent by the second producer
    await until(lambda: _counter(ingested, "producers", 1))
    await subscriber.send_json({"op": "ping", "id": 5})
    assert (await recv(subscriber))["type"] == "pong"  # and nothing about SH came first
    await second.close()
    status = await recv_until(subscriber, lambda f: f["type"] == "status")
    assert status["symbols"] == ["SH"] and status["reason"] == "producer disconnected"


async def test_healthz_shows_the_ingest_source(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    health = await ingested.health()
    assert health["name"] == "ingest" and health["state"] == "connecting"
    producer = await ingested.producer()
    await send(
        producer, {"type": "ticks", "id": 1, "ticks": [trade("H1"), trade("H1", price=-1.0)]}
    )
    health = await ingested.health()
    assert health["state"] == "live"
    assert health["ticks_in"] == 1 and health["ticks_rejected"] == 1
    assert health["last_tick_ns"] is not None
    stats = await ingested.stats()
    assert stats["producers"] == 1 and stats["messages"] == 1 and stats["symbols"] == 1
    response = await ingested.feed.client.get("/healthz")
    assert response.status == 200


async def test_close_says_goodbye_to_every_producer_with_1001(start_feed: StartFeed) -> None:
    ingested = await start(start_feed)
    producers = [await ingested.producer(), await ingested.producer()]
    await send(producers[0], {"type": "ticks", "id": 1, "ticks": [trade("BYE")]})
    closing = asyncio.create_task(ingested.source.shutdown())
    for producer in producers:
        closed = await producer.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and producer.close_code == 1001
        await producer.close()
    await asyncio.wait_for(closing, 5)
    await until(lambda: _counter(ingested, "producers", 0))


# -- configuration ----------------------------------------------------------------------------


def test_tokens_from_the_environment_enable_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ingest_kind.ENV_TOKENS, raising=False)
    built = config.build({})  # source.kinds is ["simulator"]: ingest is not listed
    assert "ingest" not in [source.kind for source in registry.create_all(built)]
    monkeypatch.setenv(ingest_kind.ENV_TOKENS, " alpha , beta,")
    [source] = [source for source in registry.create_all(built) if source.kind == "ingest"]
    assert "2 token(s)" in source.describe() and "alpha" not in source.describe()


async def test_a_token_from_the_environment_is_accepted(
    start_feed: StartFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ingest_kind.ENV_TOKENS, "env-one,env-two")
    built = config.build({})
    source = ingest_kind.create(built.section("ingest"), built)
    feed = await start_feed(source=[source])
    ingested = Ingested(feed, source)
    producer = await ingested.producer(token="env-two")
    assert (await send(producer, {"type": "ticks", "id": 1, "ticks": [trade("E")]}))["accepted"]
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await ingested.producer(token=TOKEN)


def test_listing_ingest_without_a_token_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ingest_kind.ENV_TOKENS, raising=False)
    built = config.build({"source": {"kinds": ["ingest"]}})
    with pytest.raises(ConfigError, match=r"'ingest\.tokens'"):
        registry.create_all(built)


@pytest.mark.parametrize("tokens", [[""], ["has space"], ["a,b"]])
def test_a_bad_token_names_the_key(tokens: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"'ingest\.tokens'"):
        config.build({"ingest": {"tokens": tokens}})


# -- the benchmark ----------------------------------------------------------------------------


def test_the_socket_benchmark_runs_in_a_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "ingest_socket.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest_socket", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = orjson.loads(out.read_bytes())
    assert {row["form"] for row in report["rows"]} == {"objects", "columnar", "binary"}
    for row in report["rows"]:
        assert row["ticks_per_s"] > 0 and row["server_cpu"] >= 0
    assert "ticks/s" in result.stdout


async def test_the_token_is_never_logged(
    start_feed: StartFeed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    ingested = await start(start_feed)
    good = await ingested.producer()
    await good.send_str(orjson.dumps({"type": "ticks", "id": 1, "ticks": [trade("LOGT")]}).decode())
    assert (await answer(good))["accepted"] == 1
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await ingested.producer(token="wrong-" + TOKEN)
    await good.close()
    assert caplog.records  # the feed did log: connections, states
    assert TOKEN not in caplog.text


async def test_a_producer_faster_than_the_feed_is_held_back_by_its_own_socket(
    start_feed: StartFeed,
) -> None:
    """Backpressure, not buffering: while the feed folds slowly (a tap that takes 20 ms a
    batch), a producer writing as fast as its socket allows gets only a bounded amount ahead:
    the kernel's buffers and aiohttp's frame queue, not the 64 MB it tries to send."""
    ingested = await start(start_feed)
    folded = 0

    def slow_tap(batch: np.ndarray) -> None:
        nonlocal folded
        folded += 1
        time.sleep(0.02)  # the feed folding slowly: this blocks the server's event loop

    ingested.feed.app[NODE].pipeline.taps.append(slow_tap)
    message = orjson.dumps([trade("BP", 10.0, 1)] * 2000)  # ~150 KB
    frame = _masked_frame(message)
    assert ingested.feed.server.port is not None
    sock = socket.create_connection(("127.0.0.1", ingested.feed.server.port))
    sock.sendall(
        (
            "GET /ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n"
        ).encode()
    )
    sent = 0
    stop = threading.Event()

    def flood() -> None:
        nonlocal sent
        sock.settimeout(0.5)
        while not stop.is_set() and sent < 64 * 2**20:
            try:
                sent += sock.send(frame)
            except TimeoutError:
                continue  # the feed is not reading: our socket is full
            except OSError:
                return

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    await until(lambda: asyncio.sleep(0, folded >= 20), timeout=30)
    ahead = sent - folded * len(frame)
    stop.set()
    await asyncio.to_thread(writer.join, 5)
    sock.close()
    assert sent < 64 * 2**20  # it could not send it all
    assert ahead < 24 * 2**20, f"{ahead} bytes accepted ahead of the fold"


def _masked_frame(payload: bytes) -> bytes:
    """A client's masked text frame (RFC 6455), for a producer on a bare socket."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    data = np.frombuffer(payload, dtype=np.uint8)
    key = np.resize(np.frombuffer(mask, dtype=np.uint8), n)
    return header + mask + (data ^ key).tobytes()
