"""`feed.client` against real feeds: the in-process server of the fixtures (fed by a PushSource
or a hand-driven source), and real `feed serve` processes for restarts and a silent server."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

from feed import client, ticks
from feed.client import ConnectionState, Snapshot, State, Status, SymbolState
from feed.sources import SourceState
from tests.conftest import SYMBOLS, StartFeed
from tests.conftest import Feed as InProcess
from tests.test_sources import Tape
from tests.test_stdin import Served, serve

SIMULATED = ("--symbols", "4", "--rate", "400")
AAPL_ONLY = ("--source", "simulator,stdin", "--symbols", "1", "--rate", "400")
"""A feed that simulates AAPL alone; other symbols join with their first tick on stdin."""


def url(feed: InProcess) -> str:
    return f"ws://{feed.server.host}:{feed.server.port}/ws"


async def next_snapshot(stream: AsyncIterator[Snapshot], timeout: float = 5.0) -> Snapshot:
    return await asyncio.wait_for(anext(stream), timeout)


async def next_status(events: AsyncIterator[client.Event], timeout: float = 5.0) -> Status:
    async with asyncio.timeout(timeout):
        while True:
            event = await anext(events)
            if isinstance(event, Status):
                return event


async def next_refused(
    events: AsyncIterator[client.Event], timeout: float = 15.0
) -> client.Refused:
    async with asyncio.timeout(timeout):
        while True:
            event = await anext(events)
            if isinstance(event, client.Refused):
                return event


def port_of(served: Served) -> str:
    return served.ws.rsplit(":", 1)[1].split("/")[0]


async def stop_and_lose(fc: client.Feed, served: Served) -> None:
    """Stop the feed `served` (SIGTERM) and wait until `fc` has lost it."""
    lost = asyncio.create_task(
        fc.wait_until(lambda: fc.state.state is State.DISCONNECTED, timeout=15)
    )
    assert await served.stop() == 0
    await lost


def received(feed: client.Feed, symbol: str) -> int:
    stats = feed.stats(symbol)
    return 0 if stats is None else stats.received


def last_of(feed: client.Feed, symbol: str) -> tuple[float | None, int | None] | None:
    snap = feed.latest(symbol)
    return None if snap is None else (snap.last, snap.last_size)


def seq(feed: client.Feed, symbol: str) -> int | None:
    snap = feed.latest(symbol)
    return None if snap is None else snap.seq


async def test_subscribe_then_typed_snapshots_and_latest(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with client.connect(url(feed)) as fc:
        assert await fc.subscribe(["AAPL", "MSFT", "AAPL"]) == ["AAPL", "MSFT"]
        assert fc.symbols == ["AAPL", "MSFT"]
        stream = aiter(fc)
        first = [await next_snapshot(stream), await next_snapshot(stream)]
        assert [(s.symbol, s.seq, s.last, s.bid, s.volume) for s in first] == [
            ("AAPL", 0, None, None, 0),
            ("MSFT", 0, None, None, 0),
        ]
        feed.trade("AAPL", 190.5, 10)
        trade = await next_snapshot(stream)
        assert (trade.symbol, trade.seq, trade.last, trade.last_size) == ("AAPL", 1, 190.5, 10)
        assert (trade.open, trade.high, trade.low, trade.vwap) == (190.5, 190.5, 190.5, 190.5)
        assert (trade.volume, trade.trades, trade.bid, trade.spread) == (10, 1, None, None)
        feed.quote("MSFT", 401.0, 401.5)
        quote = await next_snapshot(stream)
        assert (quote.symbol, quote.bid, quote.ask, quote.spread) == ("MSFT", 401.0, 401.5, 0.5)
        assert (quote.bid_size, quote.ask_size, quote.last, quote.trades) == (100, 100, None, 0)
        assert fc.latest("AAPL") == trade and fc.latest("MSFT") == quote
        assert fc.latest("NVDA") is None
        assert fc.state.state is State.CONNECTED and fc.state.connects == 1
    assert fc.state.state is State.CLOSED
    assert [s async for s in fc] == []  # iteration ends once closed


async def test_an_unknown_symbol_raises_feed_error_and_the_feed_stays_usable(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed()
    async with client.connect(url(feed)) as fc:
        with pytest.raises(client.FeedError) as refused:
            await fc.subscribe(["AAPL", "NOPE"])
        assert refused.value.code == "unknown_symbol"
        assert refused.value.message == "unknown symbol(s): NOPE"
        assert fc.symbols == []
        assert await fc.subscribe(["AAPL"]) == ["AAPL"]
        with pytest.raises(TypeError, match="not the string 'MSFT'"):
            await fc.subscribe("MSFT")


async def test_unsubscribe_stops_a_symbol(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with client.connect(url(feed)) as fc:
        await fc.subscribe(["AAPL", "MSFT"])
        feed.trade("MSFT", 400.0)
        await fc.wait_until(lambda: seq(fc, "MSFT") == 1, timeout=5)
        assert await fc.unsubscribe(["MSFT", "NVDA"]) == ["MSFT"]
        assert fc.symbols == ["AAPL"]
        feed.trade("MSFT", 401.0)
        feed.trade("AAPL", 190.0)
        stream = aiter(fc)
        while (snap := await next_snapshot(stream)).seq == 0:
            pass  # AAPL's first snapshot; MSFT's waiting ones were dropped
        assert (snap.symbol, snap.seq) == ("AAPL", 1)
        assert seq(fc, "MSFT") == 1


async def test_status_events_stale_then_live(start_feed: StartFeed) -> None:
    tape = Tape(["X", "Y"])
    feed = await start_feed(source=tape)
    async with client.connect(url(feed)) as fc:
        await fc.subscribe(["X", "Y"])
        events = fc.events()
        tape.set_state(SourceState.RECONNECTING, "upstream lost")
        assert await next_status(events) == Status(SymbolState.STALE, ("X", "Y"), "upstream lost")
        assert dict(fc.stale) == {"X": "upstream lost", "Y": "upstream lost"}
        tape.trade("X", 5.0)
        assert await next_status(events) == Status(SymbolState.LIVE, ("X", "Y"))
        snap = await asyncio.wait_for(anext(events), 5)
        assert isinstance(snap, Snapshot) and (snap.symbol, snap.last) == ("X", 5.0)
        assert dict(fc.stale) == {}


async def test_a_restarted_feed_is_reconnected_and_resubscribed() -> None:
    async with serve(*SIMULATED, stdin=subprocess.DEVNULL) as first:
        port = first.ws.rsplit(":", 1)[1].split("/")[0]
        async with client.connect(first.ws, backoff_max=0.3) as fc:
            await fc.subscribe(["AAPL", "MSFT"])
            await fc.wait_until(lambda: received(fc, "AAPL") >= 2, timeout=10)
            lost = asyncio.create_task(
                fc.wait_until(
                    lambda: (
                        fc.state.state is State.DISCONNECTED
                        and fc.state.reason == "closed by the feed: 1001 (going away)"
                    ),
                    timeout=15,
                )
            )
            assert await first.stop() == 0  # SIGTERM: the feed closes its clients with 1001
            await lost
            async with serve("--port", port, *SIMULATED, stdin=subprocess.DEVNULL) as second:
                await fc.wait_until(
                    lambda: fc.state.state is State.CONNECTED and fc.state.connects == 2,
                    timeout=15,
                )
                before = {symbol: received(fc, symbol) for symbol in ("AAPL", "MSFT")}
                await fc.wait_until(
                    lambda: all(received(fc, s) > n + 1 for s, n in before.items()), timeout=10
                )
                assert fc.symbols == ["AAPL", "MSFT"]
                assert (await second.get("/stats"))["hub"]["connections"] == 1


async def test_a_restarted_feed_without_a_symbol_serves_the_others_and_reports_it() -> None:
    async with serve(*SIMULATED, stdin=subprocess.DEVNULL) as first:
        port = port_of(first)
        async with client.connect(first.ws, backoff_max=0.3) as fc:
            await fc.subscribe(["AAPL", "MSFT"])
            await fc.wait_until(lambda: received(fc, "MSFT") >= 1, timeout=10)
            events = fc.events()
            await stop_and_lose(fc, first)
            async with serve("--port", port, *AAPL_ONLY) as second:
                refused = await next_refused(events)
                message = "unknown symbol(s): MSFT"
                assert refused == client.Refused(("MSFT",), "unknown_symbol", message)
                assert dict(fc.refused) == {"MSFT": f"unknown_symbol: {message}"}
                after = received(fc, "AAPL")
                await fc.wait_until(lambda: received(fc, "AAPL") > after + 1, timeout=10)
                # The same connection throughout: it was not dropped for the refusal.
                assert fc.state.state is State.CONNECTED and fc.state.connects == 2
                assert (await second.get("/stats"))["hub"]["connections"] == 1
                assert fc.symbols == ["AAPL", "MSFT"]  # still held: asked for at the next one
                msft = received(fc, "MSFT")
                await stop_and_lose(fc, second)
            async with serve("--port", port, *SIMULATED, stdin=subprocess.DEVNULL):
                await fc.wait_until(lambda: received(fc, "MSFT") > msft, timeout=15)
                assert dict(fc.refused) == {}
                assert fc.state.state is State.CONNECTED and fc.state.connects == 3


async def test_symbols_set_aside_are_let_go_or_subscribed_again_once_the_feed_has_them() -> None:
    async with serve(*SIMULATED, stdin=subprocess.DEVNULL) as first:
        port = port_of(first)
        async with client.connect(first.ws, backoff_max=0.3) as fc:
            await fc.subscribe(["AAPL", "MSFT", "NVDA"])
            await stop_and_lose(fc, first)
            async with serve("--port", port, *AAPL_ONLY) as second:
                await fc.wait_until(lambda: len(fc.refused) == 2, timeout=15)
                reason = "unknown_symbol: unknown symbol(s): MSFT, NVDA"
                assert dict(fc.refused) == {"MSFT": reason, "NVDA": reason}
                assert await fc.unsubscribe(["NVDA"]) == ["NVDA"]  # not asking the feed
                assert fc.symbols == ["AAPL", "MSFT"] and list(fc.refused) == ["MSFT"]
                with pytest.raises(client.FeedError) as still:
                    await fc.subscribe(["MSFT"])
                assert still.value.message == "unknown symbol(s): MSFT"
                assert fc.symbols == ["AAPL", "MSFT"] and list(fc.refused) == ["MSFT"]
                await second.write(b'{"type":"trade","symbol":"MSFT","price":2.5,"size":7}\n')
                await second.wait_log("source stdin: connecting -> live")  # MSFT has joined
                assert await fc.subscribe(["MSFT"]) == ["MSFT"]
                assert dict(fc.refused) == {}
                # The second feed's MSFT, not what the first one sent before it stopped (which
                # may have had seq 1 too, if MSFT had ticked once there).
                await fc.wait_until(lambda: last_of(fc, "MSFT") == (2.5, 7), timeout=5)
                assert seq(fc, "MSFT") == 1
                assert fc.state.state is State.CONNECTED and fc.state.connects == 2


async def test_the_watchdog_reconnects_when_the_feed_goes_silent() -> None:
    async with serve(*SIMULATED, stdin=subprocess.DEVNULL) as served:
        options = {"idle_timeout": 0.5, "connect_timeout": 1.0, "backoff_max": 0.2}
        async with client.connect(served.ws, **options) as fc:
            await fc.subscribe(["AAPL"])
            await fc.wait_until(lambda: received(fc, "AAPL") >= 2, timeout=10)
            served.process.send_signal(signal.SIGSTOP)  # the socket stays open, silent
            try:
                await fc.wait_until(
                    lambda: fc.state.reason == "no data or heartbeat for 0.5 s", timeout=10
                )
            finally:
                served.process.send_signal(signal.SIGCONT)
            await fc.wait_until(
                lambda: fc.state.state is State.CONNECTED and fc.state.connects >= 2, timeout=15
            )
            after = received(fc, "AAPL")
            await fc.wait_until(lambda: received(fc, "AAPL") > after + 1, timeout=10)


async def test_a_slow_consumer_gets_the_newest_snapshot_of_each_symbol(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed()
    async with client.connect(url(feed)) as fc:
        await fc.subscribe(SYMBOLS)
        for n in range(1, 51):  # 200 updates while nobody iterates
            for symbol in SYMBOLS:
                feed.trade(symbol, 100.0 + n)
        await fc.wait_until(lambda: all(seq(fc, s) == 50 for s in SYMBOLS), timeout=10)
        assert fc.pending <= len(SYMBOLS) + 1  # a snapshot per symbol, the connection state
        events = fc.events()
        waiting = [await anext(events) for _ in range(fc.pending)]
        snaps = [event for event in waiting if isinstance(event, Snapshot)]
        assert sorted((s.symbol, s.seq, s.last) for s in snaps) == [
            (symbol, 50, 150.0) for symbol in sorted(SYMBOLS)
        ]
        assert [e.state for e in waiting if isinstance(e, ConnectionState)] == [State.CONNECTED]
        for symbol in SYMBOLS:
            stats = fc.stats(symbol)
            assert stats is not None and stats.received >= 2
            assert stats.superseded == stats.received - 1  # all but the newest, never consumed


async def test_conflated_counts_come_from_seq_jumps(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with client.connect(url(feed)) as fc:
        await fc.subscribe(["AAPL"])
        feed.trade("AAPL", 10.0)
        await fc.wait_until(lambda: seq(fc, "AAPL") == 1, timeout=5)
        # Five trades in one batch: the feed folds them into one snapshot, seq 1 -> 6.
        feed.push(ticks.trades([0] * 5, [11.0, 12, 13, 14, 15], [1] * 5, ts=time.time_ns()))
        await fc.wait_until(lambda: seq(fc, "AAPL") == 6, timeout=5)
        stats = fc.stats("AAPL")
        assert stats is not None
        assert (stats.received, stats.conflated) == (3, 4)  # seq 0, 1, 6
        snap = fc.latest("AAPL")
        assert snap is not None and (snap.last, snap.trades, snap.volume) == (15.0, 6, 105)


async def test_clock_offset_near_zero_on_one_host_and_latency_sane(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with client.connect(url(feed)) as fc:
        await fc.wait_until(lambda: fc.clock is not None, timeout=5)
        assert fc.clock is not None
        assert abs(fc.clock.offset) < 0.05 and 0 < fc.clock.rtt < 5
        await fc.subscribe(["AAPL"])
        feed.trade("AAPL", 1.0)
        await fc.wait_until(lambda: seq(fc, "AAPL") == 1, timeout=5)
        stats = fc.stats("AAPL")
        assert stats is not None and stats.latency is not None
        assert -0.05 < stats.latency < 5 and stats.latency_max == stats.latency


async def test_bad_options_and_a_feed_that_is_not_there() -> None:
    with pytest.raises(ValueError, match="idle_timeout must be > 0, got 0"):
        client.connect(idle_timeout=0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = f"ws://127.0.0.1:{port}/ws"
    with pytest.raises(client.FeedError) as failed:
        async with client.connect(nowhere):
            pass
    assert failed.value.code == "cannot_connect"
    assert failed.value.message.startswith(f"cannot connect to {nowhere}: ")
