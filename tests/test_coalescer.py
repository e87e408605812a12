"""The coalescer folds any tick sequence, cut into any batches, to the same snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feed import coalescer as coalescer_module
from feed import ticks
from feed.coalescer import SNAPSHOT_FIELDS, Coalescer
from feed.symbols import SymbolTable

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]

prices = st.floats(min_value=0.01, max_value=10_000, allow_nan=False, allow_infinity=False)
sizes = st.integers(min_value=1, max_value=1_000_000)


@st.composite
def tick_rows(draw: st.DrawFn) -> tuple[int, int, int, float, int, float, float, int, int]:
    sym = draw(st.integers(0, len(SYMBOLS) - 1))
    ts = draw(st.integers(0, 2**62))
    if draw(st.booleans()):
        return (sym, ticks.TRADE, ts, draw(prices), draw(sizes), math.nan, math.nan, 0, 0)
    bid = draw(prices)
    ask = bid + draw(st.floats(0.01, 10))
    return (sym, ticks.QUOTE, ts, math.nan, 0, bid, ask, draw(sizes), draw(sizes))


@st.composite
def batched(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    rows = draw(st.lists(tick_rows(), max_size=60))
    array = np.array(rows, dtype=ticks.TICK_DTYPE)
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=8)))
    return array, cuts


def fold_one_at_a_time(array: np.ndarray) -> Coalescer:
    coalescer = Coalescer(SymbolTable(SYMBOLS))
    for row in array.tolist():
        coalescer.apply_one(*row)
    return coalescer


def fold_in_batches(
    array: np.ndarray, cuts: list[int], small_batch: int
) -> tuple[Coalescer, list[set[int]]]:
    """Fold batch by batch; `small_batch` chooses the path: 0 forces the vector path for every
    batch, a large value the tick-by-tick one."""
    coalescer = Coalescer(SymbolTable(SYMBOLS), small_batch=small_batch)
    changed = [set(coalescer.apply(batch)) for batch in np.split(array, cuts)]
    return coalescer, changed


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    for field in SNAPSHOT_FIELDS:
        if field == "vwap" and a[field] is not None:
            assert b[field] == pytest.approx(a[field], rel=1e-9), field
        else:
            assert a[field] == b[field], field


@settings(max_examples=300)
@given(batched())
def test_any_batching_gives_the_same_snapshots_as_one_tick_at_a_time(
    case: tuple[np.ndarray, list[int]],
) -> None:
    array, cuts = case
    reference = fold_one_at_a_time(array)
    indices = list(range(len(SYMBOLS)))
    for small_batch in (0, 10**9, coalescer_module.SMALL_BATCH):
        batched_, changed = fold_in_batches(array, cuts, small_batch)
        for a, b in zip(reference.snapshots(indices), batched_.snapshots(indices), strict=True):
            assert_same(a, b)
        # Each batch reports exactly the symbols it touched, sorted.
        for batch, reported in zip(np.split(array, cuts), changed, strict=True):
            assert reported == set(batch["sym"].tolist())


@settings(max_examples=200)
@given(batched(), st.integers(0, 3))
def test_reads_between_batches_see_the_newest_state(
    case: tuple[np.ndarray, list[int]], few_symbols: int
) -> None:
    """Small batches keep their symbols' state in Python rows until a vector batch, a vector
    read or growth writes them back: a read at any point between batches sees every tick."""
    array, cuts = case
    reference = Coalescer(SymbolTable(SYMBOLS))
    coalescer = Coalescer(SymbolTable(SYMBOLS), small_batch=3, few_symbols=few_symbols)
    for batch in np.split(array, cuts):
        for row in batch.tolist():
            reference.apply_one(*row)
        changed = coalescer.apply(batch)
        for a, b in zip(reference.snapshots(changed), coalescer.snapshots(changed), strict=True):
            assert_same(a, b)


@settings(max_examples=100)
@given(batched())
def test_reading_one_by_one_or_vectorized_gives_the_same_snapshots(
    case: tuple[np.ndarray, list[int]],
) -> None:
    array, _ = case
    indices = list(range(len(SYMBOLS)))
    one_by_one = Coalescer(SymbolTable(SYMBOLS), few_symbols=len(SYMBOLS))
    vectorized = Coalescer(SymbolTable(SYMBOLS), few_symbols=0)
    for coalescer in (one_by_one, vectorized):
        for row in array.tolist():
            coalescer.apply_one(*row)
    pairs = zip(one_by_one.snapshots(indices), vectorized.snapshots(indices), strict=True)
    for a, b in pairs:
        assert_same(a, b)


@settings(max_examples=200)
@given(batched())
def test_invariants(case: tuple[np.ndarray, list[int]]) -> None:
    array, cuts = case
    coalescer = Coalescer(SymbolTable(SYMBOLS))
    previous = coalescer.snapshots(list(range(len(SYMBOLS))))
    for batch in np.split(array, cuts):
        coalescer.apply(batch)
        current = coalescer.snapshots(list(range(len(SYMBOLS))))
        for sym, (before, after) in enumerate(zip(previous, current, strict=True)):
            mine = batch[batch["sym"] == sym]
            trades = mine[mine["kind"] == ticks.TRADE]
            # seq counts ticks folded: strictly increasing for a symbol that ticked.
            assert after["seq"] == before["seq"] + len(mine)
            assert after["volume"] == before["volume"] + int(trades["size"].sum())
            assert after["trades"] == before["trades"] + len(trades)
            if len(mine):
                assert after["ts"] == int(mine["ts"][-1])
            if after["trades"]:
                assert after["low"] <= after["last"] <= after["high"]
                assert after["low"] <= after["open"] <= after["high"]
                assert after["low"] * (1 - 1e-12) <= after["vwap"] <= after["high"] * (1 + 1e-12)
            if before["trades"]:
                assert after["high"] >= before["high"]
                assert after["low"] <= before["low"]
                assert after["open"] == before["open"]
        previous = current


def test_fields_before_any_tick_are_null() -> None:
    coalescer = Coalescer(SymbolTable(["X"]))
    (snap,) = coalescer.snapshots([0])
    assert list(snap) == list(SNAPSHOT_FIELDS)
    assert snap["seq"] == 0 and snap["volume"] == 0 and snap["trades"] == 0
    assert all(snap[f] is None for f in ("last", "bid", "ask", "open", "high", "low", "vwap"))


def test_a_quote_moves_only_the_book_and_a_trade_only_the_tape() -> None:
    coalescer = Coalescer(SymbolTable(["X"]))
    coalescer.apply(ticks.quotes([0], [99.5], [100.5], [300], [200], ts=1))
    coalescer.apply(ticks.trades([0, 0], [100.0, 101.0], [100, 300], ts=[2, 3]))
    (snap,) = coalescer.snapshots([0])
    assert snap == {
        "symbol": "X",
        "seq": 3,
        "ts": 3,
        "last": 101.0,
        "last_size": 300,
        "bid": 99.5,
        "ask": 100.5,
        "bid_size": 300,
        "ask_size": 200,
        "open": 100.0,
        "high": 101.0,
        "low": 100.0,
        "volume": 400,
        "vwap": (100.0 * 100 + 101.0 * 300) / 400,
        "trades": 2,
        "epoch": 0,
    }


def test_symbols_added_later_are_folded() -> None:
    table = SymbolTable(["A"])
    coalescer = Coalescer(table)
    table.extend(f"S{i}" for i in range(100))
    assert coalescer.apply(ticks.trades([100], [5.0], [1], ts=1)) == [100]
    assert coalescer.snapshots([100])[0]["symbol"] == "S99"


def test_unknown_symbol_index_is_rejected_without_changing_state() -> None:
    coalescer = Coalescer(SymbolTable(["A"]))
    with pytest.raises(ValueError, match="unknown symbol index 1"):
        coalescer.apply(ticks.trades([0, 1], [5.0, 6.0], [1, 1], ts=1))
    assert coalescer.snapshots([0])[0]["seq"] == 0


def test_rows_past_the_cap_are_written_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalescer_module, "ROWS_KEPT", 1)
    coalescer = Coalescer(SymbolTable(SYMBOLS), few_symbols=0)  # reads the columns
    coalescer.apply(ticks.trades([0, 1, 2], [10.0, 20.0, 30.0], [1, 2, 3], ts=5))
    assert not coalescer._rows
    snapshots = coalescer.snapshots([0, 1, 2])
    assert [s["last"] for s in snapshots] == [10.0, 20.0, 30.0]
    assert [s["volume"] for s in snapshots] == [1, 2, 3]
