"""The exchange adapters `binance` and `coinbase`: their pure mappings (exact values, bad
input dropped with a reason, never an exception), their config sections, and a real feed built
from the config, reading a fake upstream (`tests/upstreams.py`) over real sockets, as a `/ws`
subscriber sees it: ticks, pongs, disconnects and reconnects, silence, planned reconnects, bad
messages and an upstream that refuses connections."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from feed import config
from feed.config import ConfigError
from feed.server import NODE, create_app
from feed.sources import binance, coinbase
from feed.sources.exchange import ExchangeSource
from feed.sources.mapping import Mapped, Signal, iso_to_ns, size
from feed.ticks import QUOTE, TRADE
from tests.conftest import recv, recv_until, subscribe
from tests.test_cli import start_serve
from tests.upstreams import BinanceUpstream, CoinbaseUpstream

FAST = {"reconnect_min": 0.05, "reconnect_max": 0.2}
"""Backoff for tests: the first retry within 50 ms, none later than 200 ms."""
T0 = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z, in ms


# -- the pure mappings ------------------------------------------------------------------------


def test_binance_trade_and_book_ticker_are_mapped_exactly() -> None:
    event = {
        "e": "trade",
        "E": T0 + 2,
        "s": "BTCUSDT",
        "t": 12345,
        "p": "64000.10",
        "q": "0.00123",
        "T": T0,
        "m": True,
        "M": True,
    }
    mapped = binance.map_message({"stream": "btcusdt@trade", "data": event}, 1, 10**8)
    ((kind, symbol, ts, price, size_, *_, tick_id),) = mapped.ticks
    assert (kind, symbol, ts, price, size_, tick_id) == (
        TRADE,
        "BTCUSDT",
        T0 * 1_000_000,
        64000.1,
        123_000,
        12345,
    )
    assert mapped.drops == () and mapped.signal is None
    book = {
        "u": 400900217,
        "s": "BNBUSDT",
        "b": "25.35190000",
        "B": "31.21000000",
        "a": "25.36520000",
        "A": "40.66000000",
    }
    now = 1_764_300_000_123_456_789
    (tick,) = binance.map_message({"stream": "bnbusdt@bookTicker", "data": book}, now, 10**8).ticks
    assert tick.kind == QUOTE and tick.ts == now and tick.id == 400900217
    assert (tick.bid, tick.ask, tick.bid_size, tick.ask_size) == (
        25.3519,
        25.3652,
        3_121_000_000,
        4_066_000_000,
    )


@pytest.mark.parametrize(
    "message",
    [
        {"e": "serverShutdown", "E": T0},
        {"event": {"e": "serverShutdown", "E": T0}},
        {"stream": "btcusdt@trade", "data": {"e": "serverShutdown", "E": T0}},
    ],
)
def test_binance_server_shutdown_in_each_form_asks_for_a_reconnect(message: Any) -> None:
    assert binance.map_message(message, 1, 10**8).signal is Signal.SHUTDOWN


def _trade_event(**changes: Any) -> dict[str, Any]:
    event = {"e": "trade", "E": T0, "s": "BTCUSDT", "t": 1, "p": "1.5", "q": "2", "T": T0}
    return {"stream": "btcusdt@trade", "data": {**event, **changes}}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_trade_event(p="NaN"), "BTCUSDT: trade dropped: p must be a decimal number, got 'NaN'"),
        (_trade_event(p="-1"), "p must be a finite number > 0, got '-1'"),
        (_trade_event(p="0.0"), "p must be a finite number > 0"),
        (_trade_event(p="1e999"), "p must be a finite number > 0, got '1e999'"),
        (_trade_event(p=True), "p must be a decimal number, got True"),
        (_trade_event(q="0"), "q must be >= 1e-08, got '0'"),
        (_trade_event(q="0.000000001"), "q rounds to 0 at size_scale 100000000"),
        (_trade_event(q="1e30"), "q is too large at size_scale 100000000"),
        (_trade_event(T=None), "T must be an integer from 1 to"),
        (_trade_event(t="7"), "t must be an integer from 0 to"),
        (_trade_event(s="ETHUSDT"), "ETHUSDT: symbol 'ETHUSDT' on stream 'btcusdt@trade'"),
        (_trade_event(e="aggTrade"), "BTCUSDT: event 'aggTrade'"),
        (
            {
                "stream": "btcusdt@bookTicker",
                "data": {"u": 1, "s": "BTCUSDT", "b": "2", "B": "1", "a": "1", "A": "1"},
            },
            "BTCUSDT: bookTicker dropped: crossed quote: bid 2 > ask 1",
        ),
    ],
)
def test_binance_bad_ticks_are_dropped_with_a_reason(message: Any, reason: str) -> None:
    mapped = binance.map_message(message, 1, 10**8)
    assert mapped.ticks == () and len(mapped.drops) == 1
    assert reason in mapped.drops[0]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{nope", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (
            '{"stream": "btcusdt@trade"}',
            "a stream event needs 'stream' (a string) and 'data' (an object)",
        ),
        ('{"stream": "btcusdt@kline_1m", "data": {}}', "unknown stream 'btcusdt@kline_1m'"),
        ('{"hello": 1}', "neither a stream event nor a known message"),
    ],
)
def test_binance_unreadable_messages_are_unparseable(data: str, reason: str) -> None:
    assert binance.parse(data, 1, 10**8).unparseable == reason


def test_binance_answers_and_errors_are_recognised() -> None:
    assert binance.parse('{"result": null, "id": 1}', 1, 1).signal is Signal.IGNORED
    error = binance.parse('{"code": 2, "msg": "Invalid request"}', 1, 1)
    assert (error.signal, error.detail) == (Signal.ERROR, "code 2: 'Invalid request'")


def _ticker(**changes: Any) -> dict[str, Any]:
    message = {
        "type": "ticker",
        "sequence": 37475248783,
        "product_id": "ETH-USD",
        "price": "1285.22",
        "open_24h": "1310.79",
        "volume_24h": "245532.79",
        "best_bid": "1285.04",
        "best_bid_size": "0.46688654",
        "best_ask": "1285.27",
        "best_ask_size": "1.56637040",
        "side": "buy",
        "time": "2022-10-19T23:28:22.061769Z",
        "trade_id": 370843401,
        "last_size": "11.4396987",
    }
    return {**message, **changes}


def test_coinbase_ticker_is_one_trade_then_one_quote() -> None:
    ts = 1_666_222_102_061_769_000
    mapped = coinbase.map_message(_ticker(), 10**8)
    trade, quote = mapped.ticks
    assert mapped.drops == ()
    assert (trade.kind, trade.symbol, trade.ts, trade.price, trade.size, trade.id) == (
        TRADE,
        "ETH-USD",
        ts,
        1285.22,
        1_143_969_870,
        370843401,
    )
    assert (quote.kind, quote.ts, quote.bid, quote.ask, quote.bid_size, quote.ask_size) == (
        QUOTE,
        ts,
        1285.04,
        1285.27,
        46_688_654,
        156_637_040,
    )
    assert quote.id == 37475248783


def test_coinbase_half_of_a_ticker_can_fail_alone() -> None:
    only_quote = coinbase.map_message(_ticker(last_size="-3"), 10**8)
    assert [tick.kind for tick in only_quote.ticks] == [QUOTE]
    assert only_quote.drops == (
        "ETH-USD: ticker trade dropped: last_size must be >= 1e-08, got '-3'",
    )
    only_trade = coinbase.map_message(_ticker(best_bid="1300"), 10**8)
    assert [tick.kind for tick in only_trade.ticks] == [TRADE]
    assert "crossed quote: bid 1300 > ask 1285.27" in only_trade.drops[0]
    neither = coinbase.map_message(_ticker(time="yesterday"), 10**8)
    assert neither.ticks == () and len(neither.drops) == 2


def test_coinbase_control_messages() -> None:
    assert coinbase.parse('{"type":"heartbeat","product_id":"BTC-USD"}', 1).signal is Signal.ALIVE
    ack = coinbase.parse(
        '{"type":"subscriptions","channels":[{"name":"ticker","product_ids":["BTC-USD"]}]}', 1
    )
    assert (ack.signal, ack.detail) == (Signal.SUBSCRIBED, "'ticker': BTC-USD")
    error = coinbase.parse(
        '{"type":"error","message":"Failed to subscribe","reason":"X-Y is not a valid product"}',
        1,
    )
    assert error.detail == "'Failed to subscribe': 'X-Y is not a valid product'"
    assert coinbase.parse('{"type":"status"}', 1).signal is Signal.IGNORED
    assert coinbase.parse('{"price": 1}', 1).unparseable == "a message needs a 'type' string"


def test_sizes_are_scaled_exactly_without_floats() -> None:
    assert size("0.1", "q", 10**8, 1) == 10_000_000
    assert size("92233720368.54775807", "q", 10**8, 1) == 2**63 - 1  # the largest that fits
    with pytest.raises(ValueError, match="too large"):
        size("92233720368.54775808", "q", 10**8, 1)
    assert size("0.000000015", "q", 10**8, 1) == 2  # half to even
    assert size("0.000000025", "q", 10**8, 1) == 2
    assert size("1.5", "q", 1, 1) == 2
    assert size(3, "q", 10, 1) == 30 and size(0.25, "q", 100, 1) == 25


def test_iso_times_are_exact_to_the_nanosecond() -> None:
    assert iso_to_ns("1970-01-01T00:00:00.000000001Z", "time") == 1
    assert iso_to_ns("2022-10-19T23:28:22.061769Z", "time") == 1_666_222_102_061_769_000
    assert iso_to_ns("2022-10-19T23:28:22+00:00", "time") == 1_666_222_102_000_000_000
    for bad in ("2022-13-01T00:00:00Z", "2022-10-19 23:28:22Z", "2300-01-01T00:00:00Z", 5):
        with pytest.raises(ValueError):
            iso_to_ns(bad, "time")


# -- the mappings never raise (hypothesis) ----------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,4})?", fullmatch=True)
    | st.sampled_from(["NaN", "Infinity", "1e999", "0", "2022-10-19T23:28:22.061769Z"])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with up to two values replaced by anything and up to two keys removed."""
    keys = st.sampled_from(sorted(base))
    return st.builds(
        lambda changes, removed: {k: v for k, v in (base | changes).items() if k not in removed},
        st.dictionaries(keys, _scalars, max_size=2),
        st.sets(keys, max_size=2),
    )


_good_trade = _trade_event()
_good_book = {"u": 5, "s": "BTCUSDT", "b": "1.5", "B": "2", "a": "1.6", "A": "0"}
_binance_messages = (
    st.builds(
        lambda stream, data: {"stream": stream, "data": data},
        st.sampled_from(["btcusdt@trade", "btcusdt@bookTicker", "ethusdt@trade", "x@y", "@", ""]),
        _mutations(_good_trade["data"]) | _mutations(_good_book) | _json,
    )
    | _mutations(_good_trade)
    | _mutations(_good_book)
    | _json
)
_coinbase_messages = _mutations(_ticker()) | _mutations({"type": "error", "message": "m"}) | _json


def _check(mapped: Mapped) -> None:
    assert mapped.ticks or mapped.drops or mapped.unparseable or mapped.signal
    for tick in mapped.ticks:
        assert 1 <= tick.ts < 2**63
        if tick.kind == TRADE:
            assert 0 < tick.price < float("inf") and 1 <= tick.size < 2**63
        else:
            assert 0 < tick.bid <= tick.ask < float("inf")
            assert 0 <= tick.bid_size < 2**63 and 0 <= tick.ask_size < 2**63


@settings(max_examples=400)
@given(_binance_messages, st.sampled_from([1, 10**8, 10**18]))
def test_binance_mapping_never_raises(message: Any, scale: int) -> None:
    _check(binance.map_message(message, 1, scale))


@settings(max_examples=400)
@given(_coinbase_messages, st.sampled_from([1, 10**8, 10**18]))
def test_coinbase_mapping_never_raises(message: Any, scale: int) -> None:
    _check(coinbase.map_message(message, scale))


@given(st.text(max_size=60) | st.binary(max_size=60))
def test_any_text_is_mapped_or_unparseable(data: str | bytes) -> None:
    _check(binance.parse(data, 1, 10**8))
    _check(coinbase.parse(data, 10**8))


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"source": {"kinds": ["binance"]}}, "'binance.symbols' must list at least one symbol"),
        ({"source": {"kinds": ["coinbase"]}}, "'coinbase.symbols' must list at least one"),
        (
            {
                "source": {"kinds": ["binance"]},
                "binance": {"symbols": ["A1"], "reconnect_min": 5, "reconnect_max": 1},
            },
            "'binance.reconnect_max' must be >= binance.reconnect_min",
        ),
    ],
)
def test_a_listed_kind_needs_its_symbols(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(config.build(values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"binance": {"symbols": [f"S{i}" for i in range(513)]}}, "'binance.symbols' lists 513"),
        ({"binance": {"symbols": ["btc-usdt"]}}, "'binance.symbols' must list exchange symbols"),
        ({"binance": {"symbols": ["BTCUSDT", "btcusdt"]}}, "lists BTCUSDT twice"),
        ({"coinbase": {"symbols": ["BTCUSD"]}}, "'coinbase.symbols' must list exchange symbols"),
        ({"binance": {"size_scale": 1000001}}, "'binance.size_scale' must be a power of ten"),
        ({"coinbase": {"url": "https://x"}}, "'coinbase.url' must be a ws:// or wss:// URL"),
        ({"binance": {"max_connection_age": 0}}, "'binance.max_connection_age' must be > 0"),
    ],
)
def test_bad_values_name_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.build(values)


# -- a feed reading a fake upstream -----------------------------------------------------------


@dataclass
class Running:
    client: TestClient[web.Request, web.Application]
    source: ExchangeSource

    async def ws(self, symbols: list[str]) -> aiohttp.ClientWebSocketResponse:
        ws = await self.client.ws_connect("/ws")
        await subscribe(ws, symbols)
        return ws

    async def stats(self) -> dict[str, Any]:
        async with self.client.get("/stats") as response:
            body: dict[str, Any] = await response.json()
        assert len(body["sources"]) == 1
        source: dict[str, Any] = body["sources"][0]
        return source

    async def symbols(self) -> list[str]:
        async with self.client.get("/symbols") as response:
            names: list[str] = await response.json()
        return names


StartAdapter = Callable[..., Awaitable[Running]]


@pytest.fixture
def start_adapter(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> StartAdapter:
    async def start(kind: str, **settings: Any) -> Running:
        """A feed built from the config, `source.kinds = [kind]`, `[kind]` = settings."""
        app = create_app(config.build({"source": {"kinds": [kind]}, kind: settings}))
        client = await aiohttp_client(await aiohttp_server(app))
        (source,) = app[NODE].pipeline.sources
        assert isinstance(source, ExchangeSource)
        return Running(client, source)

    return start


@pytest.fixture
async def bn(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> BinanceUpstream:
    upstream = BinanceUpstream()
    server = await aiohttp_server(upstream.app)
    assert server.port is not None
    upstream.serving(server.port)
    return upstream


@pytest.fixture
async def cb(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> CoinbaseUpstream:
    upstream = CoinbaseUpstream(["BTC-USD", "ETH-USD"])
    server = await aiohttp_server(upstream.app)
    assert server.port is not None
    upstream.serving(server.port)
    return upstream


def _snapshot_of(symbol: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "update" and any(s["symbol"] == symbol for s in f["data"])


async def _update(ws: aiohttp.ClientWebSocketResponse, symbol: str) -> dict[str, Any]:
    """The newest snapshot of `symbol` in the next update frame that has one."""
    frame = await recv_until(ws, _snapshot_of(symbol))
    snapshot: dict[str, Any] = [s for s in frame["data"] if s["symbol"] == symbol][-1]
    return snapshot


async def _frames_until_update(
    ws: aiohttp.ClientWebSocketResponse, symbol: str, last: float
) -> list[dict[str, Any]]:
    """Every frame up to the update that shows `symbol` traded at `last`."""
    frames = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if frame["type"] == "update" and any(
            s["symbol"] == symbol and s["last"] == last for s in frame["data"]
        ):
            return frames


async def test_binance_ticks_reach_a_subscriber_mapped(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["btcusdt", "ETHUSDT"], **FAST)
    assert await feed.symbols() == ["BTCUSDT", "ETHUSDT"]  # claimed before the first tick
    await bn.until(lambda: bool(bn.open))
    assert bn.conns[0].streams == [
        "btcusdt@trade",
        "btcusdt@bookTicker",
        "ethusdt@trade",
        "ethusdt@bookTicker",
    ]
    ws = await feed.ws(["BTCUSDT", "ETHUSDT"])

    await bn.trade("BTCUSDT", "64000.10", "0.00123", T0, trade_id=1)
    snapshot = await _update(ws, "BTCUSDT")
    assert (snapshot["last"], snapshot["last_size"], snapshot["ts"]) == (
        64000.1,
        123_000,
        T0 * 1_000_000,
    )
    assert (snapshot["volume"], snapshot["trades"]) == (123_000, 1)

    before = time.time_ns()
    await bn.book("ETHUSDT", 7, bid="3000.01", bid_qty="1.5", ask="3000.02", ask_qty="0.25")
    snapshot = await _update(ws, "ETHUSDT")
    assert (snapshot["bid"], snapshot["ask"]) == (3000.01, 3000.02)
    assert (snapshot["bid_size"], snapshot["ask_size"]) == (150_000_000, 25_000_000)
    assert before <= snapshot["ts"] <= time.time_ns()  # stamped on receipt
    stats = await feed.stats()
    assert (stats["state"], stats["ticks_in"], stats["connects"]) == ("live", 2, 1)


async def test_binance_ping_is_answered_with_its_payload(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], **FAST)
    await bn.until(lambda: bool(bn.open))
    await bn.ping(b"ping-1764300000")
    await bn.until(lambda: b"ping-1764300000" in bn.latest.pongs)
    assert bn.latest.texts == []  # nothing else sent: the stream names are in the URL


async def test_binance_disconnect_goes_stale_then_reconnects_and_resubscribes(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT", "ETHUSDT"], **FAST)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=1)
    await _update(ws, "BTCUSDT")

    await bn.drop()
    status = await recv_until(ws, lambda f: f["type"] == "status")
    assert status == {
        "type": "status",
        "state": "stale",
        "symbols": ["BTCUSDT"],
        "reason": "binance: disconnected (connection lost); reconnecting",
    }
    await bn.until(lambda: len(bn.conns) == 2 and bool(bn.open))
    assert bn.conns[1].streams == bn.conns[0].streams  # subscribed again, to the same

    # trade id 1 again: ids seen before a loss are forgotten (a fresh connection overlaps none)
    await bn.trade("BTCUSDT", "64001", "2", T0 + 5, trade_id=1)
    assert await recv(ws) == {"type": "status", "state": "live", "symbols": ["BTCUSDT"]}
    snapshot = await _update(ws, "BTCUSDT")
    assert (snapshot["last"], snapshot["trades"], snapshot["volume"]) == (64001, 2, 3 * 10**8)
    stats = await feed.stats()
    assert {k: stats[k] for k in ("disconnects", "reconnects", "planned_reconnects")} == {
        "disconnects": 1,
        "reconnects": 1,
        "planned_reconnects": 0,
    }


async def test_binance_silence_goes_stale_and_the_next_tick_is_live(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], stale_after=0.3)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=1)
    await _update(ws, "BTCUSDT")

    status = await recv_until(ws, lambda f: f["type"] == "status", timeout=3)
    assert status["state"] == "stale"
    assert status["reason"] == "no data from binance for 0.3 s"
    assert len(bn.open) == 1  # the connection stays: silence is not a disconnect

    await bn.book("BTCUSDT", 9, bid="63999", bid_qty="1", ask="64001", ask_qty="1")
    assert await recv(ws) == {"type": "status", "state": "live", "symbols": ["BTCUSDT"]}
    assert (await _update(ws, "BTCUSDT"))["bid"] == 63999


async def test_binance_server_shutdown_reconnects_before_the_old_connection_ends(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], **FAST)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=1)
    await _update(ws, "BTCUSDT")

    await bn.server_shutdown()
    await bn.until(lambda: len(bn.conns) == 2 and bn.conns[0].closed)
    assert bn.conns[0].closed_by_client and not bn.conns[1].closed
    assert bn.conns[1].streams == bn.conns[0].streams
    await bn.trade("BTCUSDT", "64002", "1", T0 + 1, trade_id=2)
    frames = await _frames_until_update(ws, "BTCUSDT", 64002)
    assert [f for f in frames if f["type"] == "status"] == []  # never stale
    stats = await feed.stats()
    assert (stats["planned_reconnects"], stats["disconnects"], stats["state"]) == (1, 0, "live")


async def test_a_failed_planned_reconnect_keeps_the_old_connection_serving(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], **FAST)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    bn.unavailable = True
    await bn.server_shutdown()
    await bn.until(lambda: bn.refused >= 2)  # the replacement is tried again, with backoff
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=1)  # the old connection still serves
    assert (await _update(ws, "BTCUSDT"))["last"] == 64000
    bn.unavailable = False
    await bn.until(lambda: len(bn.conns) == 2 and bn.conns[0].closed)
    await bn.trade("BTCUSDT", "64001", "1", T0, trade_id=2)
    frames = await _frames_until_update(ws, "BTCUSDT", 64001)
    assert [f for f in frames if f["type"] == "status"] == []
    stats = await feed.stats()
    assert stats["connect_failures"] >= 2 and stats["planned_reconnects"] == 1
    assert stats["disconnects"] == 0


async def test_binance_connection_is_replaced_at_max_connection_age(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter(
        "binance", url=bn.url, symbols=["BTCUSDT"], max_connection_age=0.2, **FAST
    )
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=1)
    await _update(ws, "BTCUSDT")
    await bn.until(lambda: len(bn.conns) >= 3 and bn.conns[1].closed)
    assert all(conn.closed_by_client for conn in bn.conns[:2])
    await bn.trade("BTCUSDT", "64003", "1", T0 + 1, trade_id=2)
    frames = await _frames_until_update(ws, "BTCUSDT", 64003)
    assert [f for f in frames if f["type"] == "status"] == []
    stats = await feed.stats()
    assert stats["planned_reconnects"] >= 2 and stats["disconnects"] == 0


async def test_binance_bad_messages_are_counted_and_the_stream_goes_on(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], **FAST)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    await bn.send("this is not JSON")
    await bn.send([1, 2, 3])
    await bn.send({"stream": "btcusdt@kline_1m", "data": {"e": "kline"}})
    await bn.send_binary(b"\x00\x01")
    await bn.trade("BTCUSDT", "NaN", "1", T0, trade_id=1)
    await bn.trade("BTCUSDT", "-5", "1", T0, trade_id=2)
    await bn.book("BTCUSDT", 1, bid="2", bid_qty="1", ask="1", ask_qty="1")
    await bn.send(_trade_event(s="XRPUSDT") | {"stream": "xrpusdt@trade"})
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=3)
    snapshot = await _update(ws, "BTCUSDT")
    assert (snapshot["last"], snapshot["trades"]) == (64000, 1)
    stats = await feed.stats()
    assert (stats["unparseable"], stats["dropped"], stats["ticks_rejected"]) == (4, 4, 4)
    assert stats["messages"] == 9 and stats["state"] == "live"
    assert stats["last_problem"] == "symbol 'XRPUSDT' is not subscribed"


async def test_binance_a_trade_delivered_twice_is_applied_once(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], **FAST)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    for trade_id in (1, 1, 2):
        await bn.trade("BTCUSDT", f"{64000 + trade_id}", "1", T0, trade_id=trade_id)
    snapshot = await recv_until(
        ws, lambda f: f["type"] == "update" and f["data"][-1]["last"] == 64002
    )
    assert (snapshot["data"][-1]["trades"], (await feed.stats())["duplicates"]) == (2, 1)


async def test_a_half_dead_connection_is_dropped_and_replaced(
    bn: BinanceUpstream, start_adapter: StartAdapter
) -> None:
    """The upstream stops sending and answering pings: our ping after `ping_interval` of
    silence gets no pong within half of it, and the connection is replaced."""
    feed = await start_adapter("binance", url=bn.url, symbols=["BTCUSDT"], ping_interval=0.2)
    await bn.until(lambda: bool(bn.open))
    ws = await feed.ws(["BTCUSDT"])
    await bn.trade("BTCUSDT", "64000", "1", T0, trade_id=1)
    await _update(ws, "BTCUSDT")
    bn.deaf = True
    status = await recv_until(ws, lambda f: f["type"] == "status", timeout=3)
    assert status["state"] == "stale"
    assert status["reason"].startswith("binance: disconnected (no answer to our ping")
    bn.deaf = False
    await bn.until(lambda: len(bn.conns) == 2 and bn.conns[0].pings != [])


async def _frames_for(ws: aiohttp.ClientWebSocketResponse, window: float) -> list[dict[str, Any]]:
    """Every frame the client receives during the next `window` seconds (an observation
    window: the assertions are about what did not happen in it)."""
    frames = []
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            break
        frames.append(orjson.loads(message.data))
    return frames


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_upstream_that_refuses_connections_is_not_hammered(
    start_adapter: StartAdapter,
) -> None:
    url = f"ws://127.0.0.1:{_closed_port()}"
    feed = await start_adapter(
        "binance", url=url, symbols=["BTCUSDT"], reconnect_min=0.05, reconnect_max=0.4
    )
    ws = await feed.ws(["BTCUSDT"])
    status = await recv_until(ws, lambda f: f["type"] == "status")
    assert status["state"] == "stale"
    assert status["reason"].startswith("binance: cannot connect (")
    # Over a 1.5 s window, the delays (uniform in [0, 0.05 * 2**n], at most 0.4 s) allow about
    # 10 attempts; retrying at once would make thousands. The subscriber hears it once.
    frames = await _frames_for(ws, 1.5)
    assert [f for f in frames if f["type"] != "heartbeat"] == []
    stats = await feed.stats()
    assert 3 <= stats["connect_failures"] <= 25
    assert stats["state"] == "reconnecting" and stats["connects"] == 0


async def test_coinbase_subscribes_at_once_and_maps_the_ticker(
    cb: CoinbaseUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("coinbase", url=cb.url, symbols=["BTC-USD", "eth-usd"], **FAST)
    assert await feed.symbols() == ["BTC-USD", "ETH-USD"]
    await cb.until(lambda: bool(cb.open) and cb.latest.subscription is not None)
    conn = cb.latest
    assert conn.subscription == {
        "type": "subscribe",
        "product_ids": ["BTC-USD", "ETH-USD"],
        "channels": ["ticker", "heartbeat"],
    }
    assert conn.subscribed_after is not None and conn.subscribed_after < 5
    ws = await feed.ws(["ETH-USD"])
    await cb.ticker(
        "ETH-USD",
        price="1285.22",
        last_size="11.4396987",
        best_bid="1285.04",
        best_ask="1285.27",
        best_bid_size="0.46688654",
        best_ask_size="1.5663704",
        time_text="2022-10-19T23:28:22.061769Z",
        trade_id=370843401,
    )
    snapshot = await recv_until(ws, _snapshot_of("ETH-USD"))
    (eth,) = snapshot["data"]
    assert eth == eth | {
        "last": 1285.22,
        "last_size": 1_143_969_870,
        "bid": 1285.04,
        "ask": 1285.27,
        "bid_size": 46_688_654,
        "ask_size": 156_637_040,
        "ts": 1_666_222_102_061_769_000,
        "trades": 1,
        "seq": 2,  # one trade and one quote
    }


async def _coinbase_ticker(cb: CoinbaseUpstream, product: str, price: str, trade_id: int) -> None:
    await cb.ticker(
        product,
        price=price,
        last_size="0.5",
        best_bid=price,
        best_ask=price,
        best_bid_size="1",
        best_ask_size="1",
        time_text="2024-05-01T12:00:00.000001Z",
        trade_id=trade_id,
    )


async def test_coinbase_heartbeats_keep_a_quiet_product_live(
    cb: CoinbaseUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("coinbase", url=cb.url, symbols=["BTC-USD"], stale_after=0.4)
    await cb.until(lambda: bool(cb.open) and cb.latest.subscription is not None)
    ws = await feed.ws(["BTC-USD"])
    await _coinbase_ticker(cb, "BTC-USD", "60000", 1)
    await _update(ws, "BTC-USD")
    await cb.heartbeats("BTC-USD", count=12, every=0.1)  # 1.2 s: three times stale_after
    await _coinbase_ticker(cb, "BTC-USD", "60001", 2)
    frames = await _frames_until_update(ws, "BTC-USD", 60001)
    assert [f for f in frames if f["type"] == "status"] == []
    status = await recv_until(ws, lambda f: f["type"] == "status", timeout=3)  # no heartbeat now
    assert (status["state"], status["reason"]) == ("stale", "no data from coinbase for 0.4 s")
    await cb.heartbeat("BTC-USD")
    assert await recv(ws) == {"type": "status", "state": "live", "symbols": ["BTC-USD"]}


async def test_coinbase_disconnect_reconnects_and_subscribes_again(
    cb: CoinbaseUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("coinbase", url=cb.url, symbols=["BTC-USD"], **FAST)
    await cb.until(lambda: bool(cb.open) and cb.latest.subscription is not None)
    ws = await feed.ws(["BTC-USD"])
    await _coinbase_ticker(cb, "BTC-USD", "60000", 1)
    await _update(ws, "BTC-USD")
    await cb.close(1001)
    status = await recv_until(ws, lambda f: f["type"] == "status")
    assert status["reason"] == (
        "coinbase: disconnected (closed by the upstream, code 1001); reconnecting"
    )
    await cb.until(lambda: len(cb.conns) == 2 and cb.conns[1].subscription is not None)
    assert cb.conns[1].subscription == cb.conns[0].subscription
    await _coinbase_ticker(cb, "BTC-USD", "60005", 2)
    assert await recv(ws) == {"type": "status", "state": "live", "symbols": ["BTC-USD"]}
    assert (await _update(ws, "BTC-USD"))["last"] == 60005
    assert (await feed.stats())["reconnects"] == 1


async def test_coinbase_refused_subscription_is_retried_with_backoff(
    cb: CoinbaseUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter(
        "coinbase",
        url=cb.url,
        symbols=["BTC-USD", "NOPE-USD"],
        reconnect_min=0.05,
        reconnect_max=0.4,
    )
    ws = await feed.ws(["BTC-USD"])
    status = await recv_until(ws, lambda f: f["type"] == "status")
    assert status["reason"] == (
        "coinbase: disconnected (subscription refused: 'Failed to subscribe': "
        "'NOPE-USD is not a valid product'); reconnecting"
    )
    await cb.until(lambda: len(cb.conns) >= 3)
    await _frames_for(ws, 1.0)
    stats = await feed.stats()
    assert 3 <= len(cb.conns) <= 20 and 3 <= stats["errors"] <= 20
    assert stats["state"] == "reconnecting"
    assert all(conn.subscription is None for conn in cb.conns)


async def test_coinbase_bad_messages_are_counted_and_the_stream_goes_on(
    cb: CoinbaseUpstream, start_adapter: StartAdapter
) -> None:
    feed = await start_adapter("coinbase", url=cb.url, symbols=["BTC-USD"], **FAST)
    await cb.until(lambda: bool(cb.open) and cb.latest.subscription is not None)
    ws = await feed.ws(["BTC-USD"])
    await cb.send("{")
    await cb.send({"no": "type"})
    await cb.send(orjson.loads(orjson.dumps(_ticker(product_id="BTC-USD", price="abc"))))
    await cb.send({"type": "ticker", "product_id": "BTC-USD"})
    await _coinbase_ticker(cb, "BTC-USD", "60000", 99)
    frames = await _frames_until_update(ws, "BTC-USD", 60000)
    assert frames[-1]["data"][-1]["trades"] == 1
    stats = await feed.stats()
    # the ticker with price "abc" still carried a good quote; the empty one, two bad halves
    assert (stats["unparseable"], stats["dropped"]) == (2, 3)


async def test_feed_serve_runs_an_adapter_from_the_command_line(cb: CoinbaseUpstream) -> None:
    served = await start_serve(
        "--set", "source.kinds=coinbase", "--set", f"coinbase.url={cb.url}",
        "--set", "coinbase.symbols=BTC-USD,ETH-USD",
    )  # fmt: skip
    try:
        assert "coinbase: 2 products (BTC-USD, ETH-USD)" in served.log[-1]
        await cb.until(lambda: bool(cb.open) and cb.latest.subscription is not None)
        async with aiohttp.ClientSession() as session, session.ws_connect(served.url) as ws:
            await subscribe(ws, ["BTC-USD"])
            await _coinbase_ticker(cb, "BTC-USD", "60000", 1)
            snapshot = await _update(ws, "BTC-USD")
            assert (snapshot["last"], snapshot["last_size"]) == (60000, 50_000_000)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 10) == 0
        await cb.until(lambda: not cb.open)  # it closed its upstream connection on the way out
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
