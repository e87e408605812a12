"""The tick simulator: a deterministic pure core and a paced stream that reports what it achieved.

Timing tests check correctness of the schedule with generous tolerances, never speed.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from feed.source import BatchStream
from feed.ticks import QUOTE, TRADE
from simulators import (
    DEFAULT_TICKERS,
    TIME_COMPRESSION,
    SimulatorSettings,
    TickSimulator,
    generated_symbol,
    symbol_names,
    tick_simulator,
)

GENERATED = re.compile(r"[A-Z]{3,5}")


def run(sim: TickSimulator, steps: int) -> list[np.ndarray]:
    return [sim.next_batch() for _ in range(steps)]


def joined(batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(batches)


def on_grid(prices: np.ndarray) -> bool:
    cents = prices * 100
    return bool(np.all(np.abs(cents - np.rint(cents)) < 1e-6))


async def collect(sim: TickSimulator, timeout: float = 10.0) -> list[np.ndarray]:
    async def drain() -> list[np.ndarray]:
        return [batch async for batch in sim.stream()]

    return await asyncio.wait_for(drain(), timeout)


# Determinism


def test_same_seed_gives_identical_batches() -> None:
    config = SimulatorSettings(symbols=300, rate=20_000, seed=7)
    a, b = run(TickSimulator(config), 500), run(TickSimulator(config), 500)
    assert [len(x) for x in a] == [len(y) for y in b]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert sum(len(x) for x in a) > 5_000


def test_different_seed_gives_different_batches() -> None:
    a = joined(run(TickSimulator(SimulatorSettings(seed=1, rate=20_000)), 200))
    b = joined(run(TickSimulator(SimulatorSettings(seed=2, rate=20_000)), 200))
    assert a.tobytes() != b.tobytes()


def test_next_batch_leaves_ts_zero_and_may_be_empty() -> None:
    batches = run(TickSimulator(SimulatorSettings(rate=100, step=0.001)), 200)
    assert any(len(b) == 0 for b in batches)
    assert all((b["ts"] == 0).all() for b in batches)


@pytest.mark.parametrize("chunk", [16, tick_simulator._CHUNK])
async def test_stream_emits_the_same_ticks_as_next_batch(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(tick_simulator, "_CHUNK", chunk)  # 16: a chunk is 4 steps
    config = SimulatorSettings(rate=5_000, seed=3, duration=0.25)
    twin = TickSimulator(config)
    expected = joined(run(twin, 250))
    for paced in (False, True):
        sim = TickSimulator(SimulatorSettings(rate=5_000, seed=3, duration=0.25, paced=paced))
        got = joined(await collect(sim))
        got["ts"] = 0
        assert got.tobytes() == expected.tobytes()


def test_writing_a_batch_leaves_the_steps_that_follow_untouched() -> None:
    config = SimulatorSettings(rate=20_000, seed=5)
    sim, twin = TickSimulator(config), TickSimulator(config)
    kept = []
    for _ in range(1_000):  # several chunks
        batch = sim.next_batch()
        assert batch.tobytes() == twin.next_batch().tobytes()
        batch["ts"], batch["price"] = 7, -1.0  # as stream() stamps ts
        kept.append(batch)
    assert all((b["ts"] == 7).all() for b in kept)


@pytest.mark.parametrize(
    ("settings", "steps"),
    [
        ({"rate": 100, "step": 0.01}, 100),  # capped at 1 s of market time
        ({"rate": 10_000}, 26),  # ~256 ticks
        ({"rate": 2_000, "burst_factor": 4.0}, 32),  # sized for the burst rate
        ({"rate": 1_000, "step": 1e-5}, 256),  # at most 256 steps
        ({"rate": 1e6, "step": 0.01}, 1),  # a step holds more than a chunk's worth
        ({"rate": 1.0, "step": 2.0}, 1),
        ({"rate": 1e-300, "step": 1e-300}, 256),  # expected ticks underflow to 0
    ],
)
def test_steps_are_drawn_in_chunks_of_a_few_hundred_ticks(
    settings: dict[str, Any], steps: int
) -> None:
    assert TickSimulator(SimulatorSettings(**settings))._chunk_steps == steps


def test_the_chunked_burst_schedule_is_the_per_step_one() -> None:
    config = SimulatorSettings(step=0.003, burst_factor=3.0, burst_every=0.7, burst_length=0.2)
    sim = TickSimulator(config)
    k = np.arange(5_000)
    assert sim._means(k).tolist() == [sim._mean(i) for i in range(5_000)]


# Symbols


def test_symbols_start_with_the_defaults() -> None:
    assert list(TickSimulator(SimulatorSettings(symbols=3)).symbols) == ["AAPL", "MSFT", "NVDA"]
    names = TickSimulator(SimulatorSettings(symbols=100)).symbols
    assert len(names) == 100
    assert tuple(names[: len(DEFAULT_TICKERS)]) == DEFAULT_TICKERS


def test_generated_symbols_are_unique_well_formed_and_deterministic() -> None:
    names = symbol_names(5_000)
    assert len(set(names)) == 5_000
    generated = names[len(DEFAULT_TICKERS) :]
    assert all(GENERATED.fullmatch(name) for name in generated)
    assert not set(generated) & set(DEFAULT_TICKERS)
    assert symbol_names(5_000) == names
    assert symbol_names(200) == names[:200]


def test_generated_symbol_is_a_bijection_across_lengths() -> None:
    boundary = 26**3
    indices = [*range(0, 3_000), *range(boundary - 500, boundary + 2_500)]
    names = [generated_symbol(i) for i in indices]
    assert len(set(names)) == len(names)
    assert {len(generated_symbol(i)) for i in (0, boundary - 1, boundary, 26**3 + 26**4)} == {
        3,
        4,
        5,
    }


def test_simulator_is_a_source() -> None:
    source: BatchStream = TickSimulator()
    assert len(source.symbols) == 100


# Tick sanity


def check_ticks(batch: np.ndarray, symbols: int) -> None:
    assert ((batch["sym"] >= 0) & (batch["sym"] < symbols)).all()
    assert np.isin(batch["kind"], [TRADE, QUOTE]).all()
    quotes = batch[batch["kind"] == QUOTE]
    trades = batch[batch["kind"] == TRADE]
    assert (quotes["bid"] > 0).all()
    assert (quotes["bid"] < quotes["ask"]).all()
    assert on_grid(quotes["bid"]) and on_grid(quotes["ask"])
    assert (quotes["bid_size"] > 0).all() and (quotes["ask_size"] > 0).all()
    assert np.isnan(quotes["price"]).all() and (quotes["size"] == 0).all()
    assert (trades["price"] > 0).all() and on_grid(trades["price"])
    assert (trades["size"] > 0).all()
    assert np.isnan(trades["bid"]).all() and np.isnan(trades["ask"]).all()
    assert (trades["bid_size"] == 0).all() and (trades["ask_size"] == 0).all()


def test_quotes_and_trades_are_well_formed() -> None:
    sim = TickSimulator(SimulatorSettings(symbols=1_000, rate=20_000))
    batch = joined(run(sim, 2_000))
    assert len(batch) > 30_000
    check_ticks(batch, 1_000)
    quotes = batch[batch["kind"] == QUOTE]
    assert (quotes["bid_size"] % 100 == 0).all()  # round lots
    assert (quotes["ask"] - quotes["bid"] > 0.015).any()  # not every spread is one tick
    # Spreads as on a liquid US equity: a few basis points of the mid, a few cents.
    spread_bp = (quotes["ask"] - quotes["bid"]) / ((quotes["ask"] + quotes["bid"]) / 2) * 1e4
    assert 0.5 < float(np.median(spread_bp)) < 20


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    symbols=st.integers(1, 3_000),
    rate=st.floats(1.0, 1e6),
    step=st.floats(1e-4, 0.1),
    trade_ratio=st.floats(0.0, 1.0),
)
def test_ticks_are_well_formed_for_any_settings(
    seed: int, symbols: int, rate: float, step: float, trade_ratio: float
) -> None:
    config = SimulatorSettings(
        symbols=symbols, rate=rate, step=step, seed=seed, trade_ratio=trade_ratio
    )
    sim = TickSimulator(config)
    steps = max(1, min(20, int(20_000 / (rate * step))))
    batches = [b for b in run(sim, steps) if len(b)]
    if batches:
        check_ticks(joined(batches), symbols)


def test_trades_print_near_the_last_quote_of_their_symbol() -> None:
    sim = TickSimulator(SimulatorSettings(symbols=50, rate=20_000, trade_ratio=0.5))
    batch = joined(run(sim, 1_000))
    mid: dict[int, float] = {}
    checked = 0
    for sym, kind, price, bid, ask in zip(
        batch["sym"].tolist(),
        batch["kind"].tolist(),
        batch["price"].tolist(),
        batch["bid"].tolist(),
        batch["ask"].tolist(),
        strict=True,
    ):
        if kind == QUOTE:
            mid[sym] = (bid + ask) / 2
        elif sym in mid:
            assert abs(price / mid[sym] - 1) < 0.005
            checked += 1
    assert checked > 5_000


def test_trade_ratio_is_respected() -> None:
    for ratio in (0.0, 0.3, 1.0):
        sim = TickSimulator(SimulatorSettings(rate=50_000, trade_ratio=ratio))
        kinds = joined(run(sim, 1_000))["kind"]
        assert abs(np.mean(kinds == TRADE) - ratio) < 0.02


def test_activity_is_skewed_and_prices_move() -> None:
    sim = TickSimulator(SimulatorSettings(symbols=1_000, rate=20_000, step=0.01))
    first = joined(run(sim, 10))
    batch = joined(run(sim, 1_000))  # 10 s of market time
    counts = np.bincount(batch["sym"], minlength=1_000)
    assert counts[0] > 20 * np.median(counts)

    def aapl_mid(b: np.ndarray) -> float:
        q = b[(b["sym"] == 0) & (b["kind"] == QUOTE)]
        return float((q["bid"][-1] + q["ask"][-1]) / 2)

    before, after = aapl_mid(first), aapl_mid(batch)
    assert before != after and 0.5 < after / before < 2


def test_realized_volatility_matches_the_documented_time_scale() -> None:
    sim = TickSimulator(SimulatorSettings(symbols=5, rate=200, step=1.0, trade_ratio=0.0))
    mids = []  # each symbol's last quoted mid at the end of every 10 s of market time
    for _ in range(100):
        window = joined(run(sim, 10))[::-1]
        syms, last = np.unique(window["sym"], return_index=True)
        assert list(syms) == [0, 1, 2, 3, 4]
        mids.append((window["bid"][last] + window["ask"][last]) / 2)
    realized = np.std(np.diff(np.log(mids), axis=0), axis=0)
    per_10s = math.sqrt(TIME_COMPRESSION * 10 / (252 * 6.5 * 3600))  # of a 100% volatility name
    assert ((realized > 0.1 * per_10s) & (realized < 1.0 * per_10s)).all()  # 15%..80% drawn


@pytest.mark.parametrize("chunk", [1, 300, tick_simulator._CHUNK])  # 1, 4, 32 steps a chunk
def test_bursts_multiply_the_rate_inside_their_windows(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(tick_simulator, "_CHUNK", chunk)
    config = SimulatorSettings(
        rate=2_000, step=0.01, burst_factor=4.0, burst_every=1.0, burst_length=0.25
    )
    sim = TickSimulator(config)
    counts = np.array([len(b) for b in run(sim, 2_000)])  # 20 s of market time
    in_burst = (np.arange(2_000) * config.step) % config.burst_every < config.burst_length
    inside = counts[in_burst].sum() / (in_burst.sum() * config.step)
    outside = counts[~in_burst].sum() / ((~in_burst).sum() * config.step)
    assert 1_800 < outside < 2_200
    assert 3.4 < inside / outside < 4.6
    assert config.average_rate == pytest.approx(2_000 * (1 + 3 * 0.25))


# The stream


async def test_paced_stream_keeps_the_rate_and_reports_it() -> None:
    sim = TickSimulator(SimulatorSettings(rate=2_000))
    counted = batches = 0
    start = time.perf_counter()
    async with aclosing(sim.stream()) as stream:
        async for batch in stream:
            counted += len(batch)
            batches += 1
            if time.perf_counter() - start >= 1.0:
                break
    elapsed = time.perf_counter() - start
    assert counted == pytest.approx(2_000 * elapsed, rel=0.15)
    stats = sim.stats()
    assert (stats.ticks, stats.batches) == (counted, batches)
    assert stats.wall_seconds == pytest.approx(elapsed, rel=0.1)
    assert stats.achieved_rate == pytest.approx(counted / elapsed, rel=0.1)
    assert stats.requested_rate == pytest.approx(2_000, rel=0.01)
    assert stats.behind == 0


async def test_paced_stream_catches_up_after_a_stall() -> None:
    sim = TickSimulator(SimulatorSettings(rate=2_000))
    sizes: list[int] = []
    behind = 0.0
    start = time.perf_counter()
    async with aclosing(sim.stream()) as stream:
        async for batch in stream:
            sizes.append(len(batch))
            elapsed = time.perf_counter() - start
            if not behind and elapsed >= 0.2:
                time.sleep(0.3)  # block the event loop
                behind = sim.stats().behind
                stalled_at = len(sizes)
            if elapsed >= 1.0:
                break
    elapsed = time.perf_counter() - start
    assert behind >= 0.2
    assert sum(sizes) == pytest.approx(2_000 * elapsed, rel=0.15)
    assert sizes[stalled_at] > 300 > 10 * np.median(sizes)  # ~600 ticks due at once
    assert sim.stats().achieved_rate == pytest.approx(sum(sizes) / elapsed, rel=0.1)


async def test_catch_up_batches_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tick_simulator, "_CATCH_UP_SECONDS", 0.05)
    sim = TickSimulator(SimulatorSettings(rate=2_000))
    market: list[float] = []
    stream = sim.stream()
    await anext(stream)
    time.sleep(0.3)
    while sim.stats().behind > 0.01:
        await asyncio.wait_for(anext(stream), 5)
        market.append(sim.stats().market_seconds)
    await stream.aclose()
    spans = np.diff(market)
    assert len(spans) >= 4
    assert (spans <= 0.05 + 1e-9).all()


async def test_stream_stamps_ts_when_yielding() -> None:
    sim = TickSimulator(SimulatorSettings(rate=5_000, paced=False, duration=1.0))
    async with aclosing(sim.stream()) as stream:
        while True:
            before = time.time_ns()
            try:
                batch = await anext(stream)
            except StopAsyncIteration:
                break
            assert len(batch) > 0
            assert (batch["ts"] >= before).all() and (batch["ts"] <= time.time_ns()).all()


async def test_duration_stops_the_stream() -> None:
    fast = TickSimulator(SimulatorSettings(rate=10_000, step=0.01, paced=False, duration=0.5))
    ticks = sum(len(b) for b in await collect(fast))
    assert fast.stats().market_seconds == pytest.approx(0.5)
    assert ticks == fast.stats().ticks and 4_000 < ticks < 6_000

    paced = TickSimulator(SimulatorSettings(rate=2_000, duration=0.2))
    start = time.perf_counter()
    await collect(paced)
    assert time.perf_counter() - start >= 0.15
    assert paced.stats().market_seconds == pytest.approx(0.2)
    wall = paced.stats().wall_seconds
    await asyncio.sleep(0.05)
    assert paced.stats().wall_seconds == wall  # frozen once the stream ended


class LoopTurns:
    """Counts turns of the event loop that another task gets, while in its `async with`."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.count += 1

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_unpaced_stream_yields_to_the_event_loop() -> None:
    sim = TickSimulator(SimulatorSettings(rate=1e6, step=0.01, paced=False))
    turns = LoopTurns()
    async with turns, aclosing(sim.stream()) as stream:
        async for _ in stream:
            if sim.stats().batches >= 20:
                break
    assert turns.count >= 10
    assert sim.stats().achieved_rate > 0


async def test_a_paced_stream_that_runs_late_still_yields_to_the_event_loop() -> None:
    """A consumer slower than a step keeps the stream always due; other tasks must still run."""
    sim = TickSimulator(SimulatorSettings(rate=10_000, step=0.001))
    turns = LoopTurns()
    at_ten = 0
    async with turns, aclosing(sim.stream()) as stream:
        async for _ in stream:
            time.sleep(0.002)  # the consumer: two steps of work per batch, never awaiting
            if sim.stats().batches == 10:
                at_ten = turns.count  # running late from here on
            if sim.stats().batches >= 50:
                break
    assert turns.count - at_ten >= 30, "other tasks starved while the stream ran late"


def test_a_paced_stream_waits_with_timers_not_a_spin_under_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop's timers round a delay under 1 ms down to none: waiting for the next step must
    not turn into a busy loop of zero-length sleeps (it once cost an idle server 10% of a core)."""
    sim = TickSimulator(SimulatorSettings(rate=2_000, step=0.001))
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        if delay > 0:
            waits.append(delay)
        await real_sleep(delay)

    async def stream_100_steps() -> None:
        async with aclosing(sim.stream()) as stream:
            async for _ in stream:
                if sim._k >= 100:
                    break

    monkeypatch.setattr(asyncio, "sleep", sleep)
    uvloop.run(stream_100_steps())
    assert waits and min(waits) >= 0.001
    assert len(waits) <= 100  # at most one wait per step (fewer where a wait spans steps)


def test_stats_before_streaming() -> None:
    stats = TickSimulator(SimulatorSettings(burst_factor=2.0)).stats()
    assert (stats.ticks, stats.batches, stats.wall_seconds, stats.behind) == (0, 0, 0.0, 0.0)
    assert stats.achieved_rate == 0.0
    assert stats.requested_rate == pytest.approx(2_000 * 1.2)


# Settings validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("symbols", 0),
        ("symbols", 2_000_000),
        ("symbols", 1.5),
        ("rate", -5),
        ("rate", 0.0),
        ("rate", math.inf),
        ("rate", math.nan),
        ("seed", -1),
        ("step", 0),
        ("trade_ratio", 1.5),
        ("trade_ratio", -0.1),
        ("burst_factor", 0),
        ("burst_every", -1.0),
        ("burst_length", 0.0),
        ("burst_length", 10.0),
        ("duration", 0.0),
    ],
)
def test_settings_validation_names_the_field_and_value(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{field} .*{re.escape(repr(value))}"):
        SimulatorSettings(**{field: value})
