"""The market's encoded snapshots and frames are what its state says, whichever path built them."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from feed import protocol, ticks
from feed.coalescer import FEW_SYMBOLS
from feed.market import Market
from tests.test_coalescer import SYMBOLS, tick_rows

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
