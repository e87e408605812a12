"""The coalescer: folds ticks into one full snapshot per symbol.

Pure (no I/O, no clock): a batch goes in, the indices of the symbols it changed come out, and
`snapshots()` reads their current state. State lives in numpy columns indexed by symbol, so a
batch of any size costs a fixed number of vector operations, not one Python call per tick.
Because every snapshot is complete, a consumer that skips some still ends at the newest state:
this is what makes conflation downstream lossless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from feed.symbols import SymbolTable
from feed.ticks import QUOTE

SNAPSHOT_FIELDS = (
    "symbol",
    "seq",
    "ts",
    "last",
    "last_size",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "open",
    "high",
    "low",
    "volume",
    "vwap",
    "trades",
    "epoch",
)
"""The fields of a snapshot, in wire order (docs/protocol.md)."""

_FLOAT_COLUMNS = ("last", "bid", "ask", "open", "high", "low", "notional")
_INT_COLUMNS = ("seq", "ts", "last_size", "bid_size", "ask_size", "volume", "trades")

_ROW = (
    "seq", "ts", "last", "last_size", "bid", "ask", "bid_size", "ask_size",
    "open", "high", "low", "volume", "notional", "trades",
)  # fmt: skip
"""The columns of a symbol's state, in the order `_snapshot` takes them."""
_SEQ, _TS, _LAST, _LAST_SIZE, _BID, _ASK, _BID_SIZE, _ASK_SIZE = range(8)
_OPEN, _HIGH, _LOW, _VOLUME, _NOTIONAL, _TRADES = range(8, 14)
_ROW_FLOATS = ("last", "bid", "ask", "open", "high", "low")
"""Snapshot fields kept in float columns (None in a snapshot, NaN in a column)."""
_ROW_INTS = ("seq", "ts", "last_size", "bid_size", "ask_size", "volume", "trades")
"""Snapshot fields kept in int columns (None in a snapshot, 0 in a column)."""
ROWS_KEPT = 4096
"""Symbols whose state may live in Python rows at once; past it, rows are written back."""

_INT16_KEYS = 2**15 - 1
SMALL_BATCH = 24
"""Batches up to this many ticks are folded tick by tick: below it, the vector path's fixed cost
(some forty numpy calls) exceeds a Python loop (benchmarks/README.md, ingest)."""
FEW_SYMBOLS = 8
"""Snapshots of up to this many symbols are read element by element, for the same reason."""


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the runs of equal values in a sorted array."""
    n = len(ordered)
    boundary = np.empty(n, dtype=bool)
    boundary[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = n
    return starts, ends


class Coalescer:
    """Per-symbol state folded from every tick seen so far.

    Semantics per tick, applied in arrival order:
    - any tick: `seq` += 1, `ts` = the tick's ts;
    - quote: `bid`, `ask`, `bid_size`, `ask_size` = the quote's;
    - trade: `last`, `last_size` = the trade's; `open` = the first trade's price; `high`/`low`
      extend to it; `volume` += size; `vwap` = sum(price*size) / volume; `trades` += 1.
    Folding a sequence in any batching gives the same state (vwap up to float rounding).
    """

    def __init__(
        self,
        symbols: SymbolTable,
        small_batch: int = SMALL_BATCH,
        few_symbols: int = FEW_SYMBOLS,
        new_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self._symbols = symbols
        self._new_epoch = new_epoch
        self._epochs: list[int] = []
        """Per symbol, when its lineage of state began: `new_epoch()` when the symbol is added,
        or the restored snapshot's (`restore`)."""
        self._small_batch = small_batch
        self._few_symbols = few_symbols
        self._capacity = 0
        self._cols: dict[str, np.ndarray] = {}
        self._rows: dict[int, dict[str, Any]] = {}
        """Symbols folded tick by tick since the columns were last written: their newest state
        is this snapshot, in wire shape, not the columns. A Python dict is read and written
        several times faster than numpy elements, which is what a batch of two or three ticks
        costs, and it is encoded as it stands."""
        self._notional: dict[int, float] = {}
        """sum(price * size) of each symbol in `_rows` (the snapshot carries only the vwap)."""
        for name in _FLOAT_COLUMNS:
            self._cols[name] = np.full(0, np.nan)
        for name in _INT_COLUMNS:
            self._cols[name] = np.zeros(0, dtype=np.int64)
        self._grow()

    @property
    def symbols(self) -> SymbolTable:
        return self._symbols

    def restore(self, sym: int, snapshot: dict[str, Any]) -> None:
        """Set `sym`'s state to a snapshot this coalescer (or one before it) produced: what an
        ingest node does on restart, so `seq`, volume, VWAP and high/low carry on. The notional
        is rebuilt as vwap x volume (exact up to float rounding)."""
        self._grow()
        self._check(sym, sym)
        self._rows.pop(sym, None)
        self._notional.pop(sym, None)
        self._epochs[sym] = snapshot["epoch"]
        c = self._cols
        for name in _ROW_INTS:
            c[name][sym] = snapshot.get(name) or 0
        for name in _ROW_FLOATS:
            value = snapshot.get(name)
            c[name][sym] = np.nan if value is None else value
        vwap, volume = snapshot.get("vwap"), snapshot.get("volume") or 0
        c["notional"][sym] = vwap * volume if vwap is not None else np.nan

    def _grow(self) -> None:
        """Make room for symbols added to the table since the last call."""
        needed = len(self._symbols)
        if len(self._epochs) < needed:
            # Each symbol's lineage begins when it joins (a symbol's epoch says when, so that a
            # reader can tell its `seq` starting again from `seq` going backwards).
            self._epochs.extend([self._new_epoch()] * (needed - len(self._epochs)))
        if needed <= self._capacity:
            return
        self._write_rows()
        capacity = max(needed, 2 * self._capacity, 16)
        for name, column in self._cols.items():
            fill = np.nan if name in _FLOAT_COLUMNS else 0
            grown = np.full(capacity, fill, dtype=column.dtype)
            grown[: len(column)] = column
            self._cols[name] = grown
        self._capacity = capacity

    def _check(self, low: int, high: int) -> None:
        if low < 0 or high >= len(self._symbols):
            bad = low if low < 0 else high
            raise ValueError(f"tick for unknown symbol index {bad} (have {len(self._symbols)})")

    # -- folding ------------------------------------------------------------------------------

    def apply(self, batch: np.ndarray) -> list[int]:
        """Fold a batch of ticks; return the sorted indices of the symbols it changed."""
        n = len(batch)
        if n == 0:
            return []
        if n <= self._small_batch:
            return self.apply_rows(batch.tolist())
        self._grow()
        self._write_rows()
        sym = batch["sym"]
        self._check(int(sym.min()), int(sym.max()))
        c = self._cols
        # One stable sort by symbol serves all three groupings: positions of each symbol's
        # ticks, of its quotes and of its trades, each in arrival order. Symbol indices that fit
        # in 16 bits sort by radix, in linear time.
        keys = sym.astype(np.int16) if len(self._symbols) <= _INT16_KEYS else sym
        order = np.argsort(keys, kind="stable")
        ordered_sym = sym[order]
        starts, ends = _runs(ordered_sym)
        changed = ordered_sym[starts]
        c["seq"][changed] += ends - starts
        c["ts"][changed] = batch["ts"][order[ends - 1]]

        is_quote = batch["kind"][order] == QUOTE
        quote_pos = order[is_quote]
        if len(quote_pos):
            quote_sym = ordered_sym[is_quote]
            _, q_ends = _runs(quote_sym)
            q_syms = quote_sym[q_ends - 1]
            q_last = quote_pos[q_ends - 1]
            for field in ("bid", "ask", "bid_size", "ask_size"):
                c[field][q_syms] = batch[field][q_last]

        is_trade = ~is_quote
        trade_pos = order[is_trade]
        if len(trade_pos):
            trade_sym = ordered_sym[is_trade]
            t_starts, t_ends = _runs(trade_sym)
            t_syms = trade_sym[t_starts]
            price = batch["price"][trade_pos]
            size = batch["size"][trade_pos]
            c["last"][t_syms] = price[t_ends - 1]
            c["last_size"][t_syms] = size[t_ends - 1]
            opened = c["open"][t_syms]
            c["open"][t_syms] = np.where(np.isnan(opened), price[t_starts], opened)
            c["high"][t_syms] = np.fmax(c["high"][t_syms], np.maximum.reduceat(price, t_starts))
            c["low"][t_syms] = np.fmin(c["low"][t_syms], np.minimum.reduceat(price, t_starts))
            c["volume"][t_syms] += np.add.reduceat(size, t_starts)
            c["notional"][t_syms] = np.nan_to_num(c["notional"][t_syms]) + np.add.reduceat(
                price * size, t_starts
            )
            c["trades"][t_syms] += t_ends - t_starts
        result: list[int] = changed.tolist()
        return result

    def apply_rows(self, ticks: list[tuple[Any, ...]]) -> list[int]:
        """Fold ticks given as rows (the fields of TICK_DTYPE, in order) one by one: the path
        of small batches, and of sources that have a few ticks at a time and no array."""
        if not ticks:
            return []
        self._grow()
        syms = [tick[0] for tick in ticks]
        self._check(min(syms), max(syms))  # before any change: all or nothing
        fold = self._fold
        for tick in ticks:
            fold(*tick)
        if len(self._rows) > ROWS_KEPT:
            self._write_rows()
        return sorted(set(syms))

    def apply_one(
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
    ) -> None:
        """Fold one tick: the reference semantics, which the batch path is tested against."""
        self._grow()
        self._check(sym, sym)
        self._fold(sym, kind, ts, price, size, bid, ask, bid_size, ask_size)

    def _fold(
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
    ) -> None:
        snap = self._rows.get(sym)
        if snap is None:
            snap = self._load(sym)
        snap["seq"] += 1
        snap["ts"] = ts
        if kind == QUOTE:
            if bid == bid:  # not NaN: quoted (the vector path reads a NaN bid as no quote)
                snap["bid"] = bid
                snap["ask"] = ask
                snap["bid_size"] = bid_size
                snap["ask_size"] = ask_size
            else:
                snap["bid"] = snap["ask"] = snap["bid_size"] = snap["ask_size"] = None
            return
        snap["last"] = price
        snap["last_size"] = size
        if snap["trades"] == 0:
            snap["open"] = snap["high"] = snap["low"] = price
            notional = price * size
        else:
            if price > snap["high"]:
                snap["high"] = price
            if price < snap["low"]:
                snap["low"] = price
            notional = self._notional[sym] + price * size
        self._notional[sym] = notional
        volume = snap["volume"] + size
        snap["volume"] = volume
        snap["vwap"] = notional / volume if volume else None
        snap["trades"] += 1

    def _load(self, sym: int) -> dict[str, Any]:
        """Move a symbol's state from the columns into `_rows`."""
        snap = self._rows[sym] = self._read(sym)
        self._notional[sym] = self._cols["notional"].item(sym)
        return snap

    def _write_rows(self) -> None:
        """Write the rows back into the columns, before anything reads or folds the columns."""
        rows = self._rows
        if not rows:
            return
        idx = np.fromiter(rows, dtype=np.int64, count=len(rows))
        snaps = list(rows.values())
        c = self._cols
        for name in _ROW_INTS:
            c[name][idx] = [snap[name] or 0 for snap in snaps]
        for name in _ROW_FLOATS:
            c[name][idx] = [snap[name] for snap in snaps]  # None is written as NaN
        c["notional"][idx] = list(self._notional.values())
        rows.clear()
        self._notional.clear()

    # -- reading ------------------------------------------------------------------------------

    def snapshots(self, indices: list[int]) -> list[dict[str, Any]]:
        """The current snapshot of each symbol in `indices`, as plain JSON-ready dicts.

        Values not yet known (no trade yet, no quote yet) are None.
        """
        self._grow()
        if len(indices) <= self._few_symbols:
            return [self._snapshot(i) for i in indices]
        self._write_rows()
        idx = np.asarray(indices, dtype=np.int64)
        c = self._cols
        cols = {name: c[name][idx] for name in c}
        volume = cols["volume"]
        with np.errstate(invalid="ignore", divide="ignore"):
            vwap = np.where(volume > 0, cols["notional"] / np.maximum(volume, 1), np.nan)
        quoted = ~np.isnan(cols["bid"])
        traded = cols["trades"] > 0
        rows = zip(
            idx.tolist(),
            cols["seq"].tolist(),
            cols["ts"].tolist(),
            cols["last"].tolist(),
            cols["last_size"].tolist(),
            cols["bid"].tolist(),
            cols["ask"].tolist(),
            cols["bid_size"].tolist(),
            cols["ask_size"].tolist(),
            cols["open"].tolist(),
            cols["high"].tolist(),
            cols["low"].tolist(),
            volume.tolist(),
            vwap.tolist(),
            cols["trades"].tolist(),
            quoted.tolist(),
            traded.tolist(),
            strict=True,
        )
        names, epochs = self._symbols, self._epochs
        return [_snapshot(names[row[0]], row[1], epochs[row[0]], *row[2:]) for row in rows]

    def current(self, indices: list[int]) -> list[dict[str, Any]]:
        """`snapshots`, without copies where the state lives in Python: the caller reads them
        before the next fold and never modifies them (the market encodes them at once)."""
        self._grow()
        if len(indices) > self._few_symbols:
            return self.snapshots(indices)
        rows = self._rows
        return [rows.get(i) or self._read(i) for i in indices]

    def _snapshot(self, i: int) -> dict[str, Any]:
        """One symbol's snapshot, read element by element (cheaper than the vector path)."""
        snap = self._rows.get(i)
        return self._read(i) if snap is None else snap.copy()

    def _read(self, i: int) -> dict[str, Any]:
        """One symbol's snapshot from the columns."""
        c = self._cols
        row = [c[name].item(i) for name in _ROW]
        trades = row[_TRADES]
        volume = row[_VOLUME]
        bid = row[_BID]
        return _snapshot(
            self._symbols[i],
            row[_SEQ],
            self._epochs[i],
            row[_TS],
            row[_LAST],
            row[_LAST_SIZE],
            bid,
            row[_ASK],
            row[_BID_SIZE],
            row[_ASK_SIZE],
            row[_OPEN],
            row[_HIGH],
            row[_LOW],
            volume,
            row[_NOTIONAL] / volume if volume else None,
            trades,
            bid == bid,  # not NaN: quoted
            trades > 0,
        )


def _snapshot(
    symbol: str,
    seq: int,
    epoch: int,
    ts: int,
    last: float,
    last_size: int,
    bid: float,
    ask: float,
    bid_size: int,
    ask_size: int,
    open_: float,
    high: float,
    low: float,
    volume: int,
    vwap: float | None,
    trades: int,
    quoted: bool,
    traded: bool,
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "seq": seq,
        "ts": ts,
        "last": last if traded else None,
        "last_size": last_size if traded else None,
        "bid": bid if quoted else None,
        "ask": ask if quoted else None,
        "bid_size": bid_size if quoted else None,
        "ask_size": ask_size if quoted else None,
        "open": open_ if traded else None,
        "high": high if traded else None,
        "low": low if traded else None,
        "volume": volume,
        "vwap": vwap if traded else None,
        "trades": trades,
        "epoch": epoch,
    }
