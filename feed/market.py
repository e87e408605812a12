"""The market: every symbol's newest snapshot, encoded, in one place.

What every reader (the fan-out, HTTP snapshots, new subscribers) reads from. It is written in
one of two ways: folded from ticks (`apply`, in `feed serve` and `feed ingest`), or fed the
snapshots another process folded (`put`, in `feed gateway`), which keeps only the newest of each
symbol by (`epoch`, `seq`). Each snapshot is encoded once per change, and the frame that carries
it alone is built at most once per change: the same bytes then go to every subscriber.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from feed import protocol
from feed.coalescer import FEW_SYMBOLS, Coalescer
from feed.symbols import SymbolTable

_NONE = (-1, -1)
"""The version of no snapshot: any snapshot is newer."""


def new_epoch() -> int:
    """An epoch for state that begins now: ms since the Unix epoch."""
    return time.time_ns() // 1_000_000


class Market:
    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self.symbols = SymbolTable(symbols)
        self.epoch = new_epoch()
        """When this market began (each symbol's own epoch is when it joined, or restored)."""
        self.coalescer = Coalescer(self.symbols, new_epoch=new_epoch)
        self.views: Any = None
        """The frames of views other than the full one (`feed.views.Frames`), kept beside the
        market by the hub that serves them: framing apart from state."""
        self._latest: list[bytes | None] = []
        self._versions: list[tuple[int, int]] = []
        """Per symbol fed by `put`: the (epoch, seq) of the snapshot held."""
        self._frames: list[bytes | None] = []
        """Per symbol, the update frame carrying only its newest snapshot, once built."""
        self.ticks = 0
        """Ticks folded so far."""
        self.batches = 0

    def apply(self, batch: np.ndarray) -> list[int]:
        """Fold a batch, encode each snapshot it changed; return the symbols it changed."""
        syms = self.coalescer.apply(batch)
        self.ticks += len(batch)
        self.batches += 1
        return self._encode(syms)

    def apply_rows(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """`apply` for ticks given as rows (the fields of TICK_DTYPE, in order)."""
        syms = self.coalescer.apply_rows(rows)
        self.ticks += len(rows)
        self.batches += 1
        return self._encode(syms)

    def restore(self, snapshots: Iterable[dict[str, Any]]) -> list[int]:
        """Carry on from snapshots this market's lineage produced (an ingest node restarting):
        each symbol's state (and epoch) is set to its snapshot's."""
        coalescer, symbols = self.coalescer, self.symbols
        restored = []
        for snapshot in snapshots:
            sym = symbols.get(snapshot["symbol"])
            if sym is None:
                sym = symbols.add(snapshot["symbol"])
            coalescer.restore(sym, snapshot)
            restored.append(sym)
        return self._encode(restored)

    def put(self, name: str, payload: bytes, epoch: int, seq: int) -> int | None:
        """Hold `payload`, the encoded snapshot of `name` at (`epoch`, `seq`), if it is newer
        than the one held; returns the symbol when it was taken, None when it was older."""
        symbols = self.symbols
        sym = symbols.get(name)
        if sym is None:
            sym = symbols.add(name)
        self._grow()
        versions = self._versions
        if (epoch, seq) <= versions[sym]:
            return None
        versions[sym] = (epoch, seq)
        self._latest[sym] = payload
        self._frames[sym] = None
        self.batches += 1
        return sym

    def version(self, sym: int) -> tuple[int, int]:
        """The (epoch, seq) of the snapshot `put` holds for `sym`; (-1, -1) before any."""
        versions = self._versions
        return versions[sym] if sym < len(versions) else _NONE

    def _grow(self) -> None:
        latest = self._latest
        if len(latest) < len(self.symbols):
            grow = len(self.symbols) - len(latest)
            latest.extend([None] * grow)
            self._frames.extend([None] * grow)
            self._versions.extend([_NONE] * grow)

    def _encode(self, syms: list[int]) -> list[int]:
        if not syms:
            return syms
        if len(self._latest) < len(self.symbols):
            self._grow()
        latest, frames = self._latest, self._frames
        snapshots = self.coalescer.current(syms)
        if len(syms) <= FEW_SYMBOLS:
            # A few ticks at a time: each symbol's frame in one encoding, its snapshot cut from
            # it. The first write of this change waits for this, so it is done once, here.
            update, header = protocol.encode_update, protocol.text_frame_header
            for sym, snapshot in zip(syms, snapshots, strict=True):
                message = update(snapshot)
                frames[sym] = header(len(message)) + message
                latest[sym] = protocol.update_payload(message)
            return syms
        encode = protocol.encode_snapshot
        for sym, snapshot in zip(syms, snapshots, strict=True):
            latest[sym] = encode(snapshot)
            frames[sym] = None  # built if some connection is sent this symbol alone
        return syms

    def payload(self, sym: int) -> bytes:
        """The current encoded snapshot of `sym` (one that never ticked has seq 0)."""
        latest = self._latest
        if sym < len(latest):
            cached = latest[sym]
            if cached is not None:
                return cached
        return protocol.encode_snapshot(self.coalescer.snapshots([sym])[0])

    def update_frame(self, syms: list[int]) -> bytes:
        """The WebSocket frame that carries the newest snapshot of each of `syms`."""
        if len(syms) == 1:
            return self.symbol_frame(syms[0])
        payload = self.payload
        return protocol.text_frame(protocol.update_frame([payload(sym) for sym in syms]))

    def symbol_frame(self, sym: int) -> bytes:
        """The update frame that carries only the newest snapshot of `sym`: what most
        connections are sent. Built once per change and shared by every subscriber, so it costs
        them no encoding at all."""
        frames = self._frames
        frame = frames[sym] if sym < len(frames) else None
        if frame is None:
            frame = protocol.text_frame(protocol.update_frame([self.payload(sym)]))
            if sym < len(frames):
                frames[sym] = frame
        return frame
