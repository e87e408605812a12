"""The market's encoded snapshots and frames are what its state says, whichever path built them."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from feed import protocol, ticks
from feed.coalescer import FEW_SYMBOLS
from feed.market import Market
from tests.test_coalescer import SYMBOLS, assert_same, tick_rows

MANY = [f"S{i:02d}" for i in range(FEW_SYMBOLS * 2)]


def decoded_frame(frame: bytes) -> object:
    """The message of one unmasked text frame, its header checked."""
    start = {126: 4, 127: 10}.get(frame[1], 2)
    assert frame[:start] == protocol.text_frame_header(len(frame) - start)
    return orjson.loads(frame[start:])


@settings(max_examples=200)
@given(st.lists(st.lists(tick_rows(), max_size=30), max_size=8), st.booleans())
def test_every_payload_and_frame_is_the_encoded_current_snapshot(
    batches: list[list[tuple[int, int, int, float, int, float, float, int, int]]], as_rows: bool
) -> None:
    market = Market(SYMBOLS)
    for rows in batches:
        if as_rows:
            changed = market.apply_rows(rows)
        else:
            changed = market.apply(np.array(rows, dtype=ticks.TICK_DTYPE))
        assert changed == sorted({row[0] for row in rows})
        for sym in range(len(SYMBOLS)):
            (snapshot,) = market.coalescer.snapshots([sym])
            assert market.payload(sym) == protocol.encode_snapshot(snapshot)
            assert decoded_frame(market.symbol_frame(sym)) == {"type": "update", "data": [snapshot]}
        both = [0, len(SYMBOLS) - 1]
        assert decoded_frame(market.update_frame(both)) == {
            "type": "update",
            "data": market.coalescer.snapshots(both),
        }


def test_a_batch_of_many_symbols_and_one_of_a_few_encode_alike() -> None:
    """More than FEW_SYMBOLS changed symbols take the vector path, fewer the one-by-one path."""
    market = Market(MANY)
    everyone = ticks.trades(
        list(range(len(MANY))), [10.0 + i for i in range(len(MANY))], [5] * len(MANY), ts=7
    )
    assert len(market.apply(everyone)) > FEW_SYMBOLS
    wide = [market.payload(sym) for sym in range(len(MANY))]
    assert market.apply_rows([(0, ticks.QUOTE, 8, float("nan"), 0, 9.5, 10.5, 1, 2)]) == [0]
    (quoted,) = market.coalescer.snapshots([0])
    assert quoted["bid"] == 9.5 and quoted["last"] == 10.0 and quoted["seq"] == 2
    assert market.payload(0) == protocol.encode_snapshot(quoted)
    assert market.payload(1) == wide[1]  # untouched


@settings(max_examples=150)
@given(st.lists(tick_rows(), max_size=40), st.lists(tick_rows(), max_size=40), st.booleans())
def test_a_restored_market_carries_on_as_if_it_never_stopped(
    before: list[tuple[int, int, int, float, int, float, float, int, int]],
    after: list[tuple[int, int, int, float, int, float, float, int, int]],
    as_rows: bool,
) -> None:
    """What an ingest node does on restart: the snapshots it published restore its state, and
    folding on gives the state of one market that folded everything (vwap to rounding)."""
    whole = Market(SYMBOLS)
    if before:
        whole.apply_rows(list(before))
    restarted = Market()
    stored = [orjson.loads(whole.payload(sym)) for sym in range(len(SYMBOLS))]
    restarted.restore(stored)
    assert list(restarted.symbols) == SYMBOLS
    for market in (whole, restarted):
        if after:
            if as_rows:
                market.apply_rows(list(after))
            else:
                market.apply(np.array(after, dtype=ticks.TICK_DTYPE))
    for sym in range(len(SYMBOLS)):
        want, got = orjson.loads(whole.payload(sym)), orjson.loads(restarted.payload(sym))
        assert_same(want, got)
        assert got["epoch"] == want["epoch"]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), min_size=1, max_size=40))
def test_a_fed_market_keeps_only_the_newest_by_epoch_then_seq(
    versions: list[tuple[int, int]],
) -> None:
    """A gateway's market: whatever order snapshots arrive in, it holds the newest, and says
    which ones it took."""
    market = Market()
    newest = (-1, -1)
    for epoch, seq in versions:
        payload = b'{"symbol":"X","seq":%d,"epoch":%d}' % (seq, epoch)
        taken = market.put("X", payload, epoch, seq)
        assert (taken is not None) == ((epoch, seq) > newest)
        newest = max(newest, (epoch, seq))
        assert market.version(0) == newest
    assert market.payload(0) == b'{"symbol":"X","seq":%d,"epoch":%d}' % (newest[1], newest[0])
