"""The fold the Python peers share: one tick at a time into a plain dict per symbol.

This is how the designs the peers stand for keep state: a dict per symbol, updated in place on
every tick, then serialized whole. It follows `feed.coalescer.Coalescer.apply_one` exactly (same
fields, same order, `None` where unknown) without numpy's per-call overhead, so a peer is not
made slower than its design is. `tests/test_peers.py` checks it against the Coalescer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from feed.coalescer import SNAPSHOT_FIELDS
from feed.ticks import QUOTE

Snapshot = dict[str, Any]


def empty_snapshot(symbol: str) -> Snapshot:
    """The state of a symbol before any tick: `SNAPSHOT_FIELDS` in order, unknowns `None`."""
    snapshot: Snapshot = dict.fromkeys(SNAPSHOT_FIELDS)
    snapshot.update(symbol=symbol, seq=0, epoch=0, ts=0, volume=0, trades=0)
    return snapshot


class Book:
    """Every symbol's snapshot, indexed like the simulator's `sym`; `ticks` counts folds."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.symbols)}
        self.snapshots: list[Snapshot] = [empty_snapshot(name) for name in self.symbols]
        self._notional: list[float] = [0.0] * len(self.symbols)  # sum of price * size
        self.ticks = 0

    def fold(
        self,
        sym: int,
        kind: int,
        ts: int,
        price: float,
        size: int,
        bid: float,
        ask: float,
        bid_size: int,
        ask_size: int,
    ) -> Snapshot:
        """Fold one tick (the fields of `feed.ticks.TICK_DTYPE`, in order) and return its
        symbol's snapshot: the same dict every time, updated in place."""
        s = self.snapshots[sym]
        self.ticks += 1
        s["seq"] += 1
        s["ts"] = ts
        if kind == QUOTE:
            s["bid"] = bid
            s["ask"] = ask
            s["bid_size"] = bid_size
            s["ask_size"] = ask_size
            return s
        s["last"] = price
        s["last_size"] = size
        if s["open"] is None:
            s["open"] = s["high"] = s["low"] = price
        else:
            if price > s["high"]:
                s["high"] = price
            if price < s["low"]:
                s["low"] = price
        volume = s["volume"] + size
        notional = self._notional[sym] + price * size
        self._notional[sym] = notional
        s["volume"] = volume
        s["vwap"] = notional / volume if volume else None
        s["trades"] += 1
        return s
