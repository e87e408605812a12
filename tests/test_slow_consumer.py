"""A client that stops reading costs bounded memory, delays nobody, and catches up to the newest
state when it reads again; one that stays stalled past the timeout is closed with 4008."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from feed import ticks
from simulators import SimulatorSettings, TickSimulator
from tests.conftest import Feed, StartFeed, recv_until, subscribe
from tests.wsclient import Closed, RawClient

SYMBOLS = [f"S{i:03d}" for i in range(200)]
WRITE_LIMIT = 16_384
ROUNDS = 150


def round_of_trades(n: int) -> np.ndarray:
    """One trade for every symbol; after round n each symbol has seq n."""
    count = len(SYMBOLS)
    return ticks.trades(
        np.arange(count), np.full(count, 100.0 + n), np.full(count, 1), time.time_ns()
    )


async def stalled_client(feed: Feed) -> RawClient:
    """A client subscribed to every symbol that then stops reading."""
    slow = await feed.raw(rcvbuf=4096)
    await slow.send({"op": "subscribe", "symbols": SYMBOLS, "id": 1})
    assert (await slow.recv())["type"] == "subscribed"
    assert (await slow.recv())["type"] == "snapshot"
    return slow


async def stats_of(feed: Feed) -> dict[str, Any]:
    async with feed.client.get("/stats?connections=1") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_slow_client_is_conflated_bounded_and_catches_up(start_feed: StartFeed) -> None:
    feed = await start_feed(
        SYMBOLS,
        websocket={"write_buffer_limit": WRITE_LIMIT, "send_buffer_size": 4096},
        limits={"slow_consumer_timeout": 600.0},
    )
    slow = await stalled_client(feed)
    fast = await feed.ws()
    await subscribe(fast, ["S000", "S199"])

    for n in range(1, ROUNDS + 1):
        feed.push(round_of_trades(n))
        # The fast client gets every round while the slow one sits on a full socket.
        update = await recv_until(fast, lambda f: f["type"] == "update")
        assert {s["seq"] for s in update["data"]} == {n}

    stats = await stats_of(feed)
    by_id = sorted(stats["hub"]["per_connection"], key=lambda c: c["id"])
    slow_stats = by_id[0]
    assert slow_stats["conflated"] > 0, "the slow client was never backpressured"
    assert slow_stats["stalled_for"] > 0
    assert slow_stats["pending"] <= len(SYMBOLS)
    # Bytes queued above the kernel: the limit, plus at most one frame of every symbol, plus
    # small control frames.
    max_frame = 64 + len(SYMBOLS) * 400
    assert slow_stats["buffered"] <= WRITE_LIMIT + max_frame + 4096
    assert slow_stats["frames_sent"] < ROUNDS, "stale snapshots were queued, not dropped"

    # It reads again: it ends at the newest seq of every symbol, each seq only ever rising.
    newest: dict[str, int] = {}
    frames = 0
    while len(newest) < len(SYMBOLS) or min(newest.values()) < ROUNDS:
        frame = await slow.recv(timeout=10)
        if frame["type"] != "update":
            continue
        frames += 1
        for snap in frame["data"]:
            assert snap["seq"] > newest.get(snap["symbol"], 0), "a snapshot went backwards"
            newest[snap["symbol"]] = snap["seq"]
    assert newest == dict.fromkeys(SYMBOLS, ROUNDS)
    assert frames < ROUNDS
    slow.close()


async def test_a_client_stalled_past_the_timeout_is_closed_with_4008(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed(
        SYMBOLS,
        websocket={
            "write_buffer_limit": WRITE_LIMIT,
            "send_buffer_size": 4096,
            "close_timeout": 10.0,
        },
        limits={"slow_consumer_timeout": 0.3},
    )
    slow = await stalled_client(feed)
    fast = await feed.ws()
    await subscribe(fast, ["S000"])
    n = 0
    deadline = time.monotonic() + 20
    while (await stats_of(feed))["hub"]["closed_slow"] == 0:
        assert time.monotonic() < deadline, "the stalled client was never closed"
        n += 1
        feed.push(round_of_trades(n))
        await recv_until(fast, lambda f: f["type"] == "update")
    # It reads again: what was queued, then the close frame with the documented code.
    code = None
    try:
        while True:
            await slow.recv(timeout=10)
    except Closed as closed:
        code = closed.code
        assert "slow consumer" in closed.reason
    assert code == 4008
    # The fast client was never affected.
    feed.push(round_of_trades(n + 1))
    update = await recv_until(fast, lambda f: f["type"] == "update")
    assert update["data"][0]["seq"] == n + 1
    slow.close()


async def test_under_a_live_market_a_stalled_client_ends_at_the_final_state(
    start_feed: StartFeed,
) -> None:
    """The simulator at 20,000 ticks/s for 1.5 s: the stalled client holds the fast one back in
    nothing, and once the market stops and it reads again it ends at every symbol's final seq."""
    simulator = TickSimulator(
        SimulatorSettings(symbols=len(SYMBOLS), rate=20_000, seed=1, duration=1.5)
    )
    feed = await start_feed(
        source=simulator,
        websocket={"write_buffer_limit": WRITE_LIMIT, "send_buffer_size": 4096},
        limits={"slow_consumer_timeout": 600.0},
    )
    names = list(simulator.symbols)
    slow = await feed.raw(rcvbuf=4096)
    await slow.send({"op": "subscribe", "symbols": names, "id": 1})
    assert (await slow.recv())["type"] == "subscribed"
    fast = await feed.ws()
    await subscribe(fast, names[:5])

    # The fast client follows the market until the source ends.
    fast_seq: dict[str, int] = {}
    while True:
        async with feed.client.get("/healthz") as response:
            if (await response.json())["pipeline"] == "ended":
                break
        update = await recv_until(fast, lambda f: f["type"] == "update")
        for snap in update["data"]:
            fast_seq[snap["symbol"]] = snap["seq"]
    async with feed.client.get("/snapshot", params={"symbols": ",".join(names)}) as response:
        final = {s["symbol"]: s["seq"] for s in await response.json()}
    while any(fast_seq.get(name, 0) < final[name] for name in names[:5] if final[name]):
        update = await recv_until(fast, lambda f: f["type"] == "update")
        for snap in update["data"]:
            fast_seq[snap["symbol"]] = snap["seq"]
    assert sum(final.values()) == simulator.stats().ticks

    stats = await stats_of(feed)
    slow_stats = min(stats["hub"]["per_connection"], key=lambda c: c["id"])
    assert slow_stats["conflated"] > 0 and slow_stats["pending"] <= len(names)

    newest: dict[str, int] = {}
    while any(newest.get(name, 0) < final[name] for name in names):
        frame = await slow.recv(timeout=10)
        for snap in frame.get("data", []):
            assert snap["seq"] > newest.get(snap["symbol"], -1)
            newest[snap["symbol"]] = snap["seq"]
    assert {name: newest.get(name, 0) for name in names} == final
    slow.close()
