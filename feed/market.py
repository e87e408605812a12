"""The market: every symbol's folded state and its encoded snapshot, in one place.

What the pipeline writes into and what every reader (the fan-out, HTTP snapshots, new
subscribers) reads from. Each snapshot is encoded once per change; the same bytes then go to
every subscriber and every HTTP reader.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from feed import protocol
from feed.coalescer import Coalescer
from feed.symbols import SymbolTable


class Market:
    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self.symbols = SymbolTable(symbols)
        self.coalescer = Coalescer(self.symbols)
        self._latest: list[bytes | None] = []
        self.ticks = 0
        """Ticks folded so far."""
        self.batches = 0

    def apply(self, batch: np.ndarray) -> tuple[list[int], list[bytes]]:
        """Fold a batch; return the symbols it changed and their newly encoded snapshots."""
        syms = self.coalescer.apply(batch)
        self.ticks += len(batch)
        self.batches += 1
        if not syms:
            return [], []
        encode = protocol.encode_snapshot
        payloads = [encode(s) for s in self.coalescer.snapshots(syms)]
        latest = self._latest
        if len(latest) < len(self.symbols):
            latest.extend([None] * (len(self.symbols) - len(latest)))
        for sym, payload in zip(syms, payloads, strict=True):
            latest[sym] = payload
        return syms, payloads

    def payload(self, sym: int) -> bytes:
        """The current encoded snapshot of `sym` (one that never ticked has seq 0)."""
        latest = self._latest
        if sym < len(latest):
            cached = latest[sym]
            if cached is not None:
                return cached
        return protocol.encode_snapshot(self.coalescer.snapshots([sym])[0])
