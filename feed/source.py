"""A stream of tick batches: the simplest way to feed the market from code.

Anything with `symbols` and `stream()` (the simulator, a `PushSource`) becomes a full source
(`feed.sources.base.Source`) through `feed.sources.stream.StreamSource`, which claims its symbols
and maps its indices to the market's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import numpy as np


class BatchStream(Protocol):
    """A stream of tick batches (arrays of `feed.ticks.TICK_DTYPE`).

    Guarantees a source gives the pipeline:
    - ordering: ticks within a batch, and batches across the stream, are in the order they
      happened; the coalescer folds them in that order;
    - symbols: `sym` in every tick is an index into `symbols`, which may grow while streaming
      but never reorders or shrinks;
    - pacing: a source stamps `ts` (ns since the epoch) when a tick is produced and yields a
      batch as soon as it is due; it never blocks the event loop for long.
    The stream ends when the source is exhausted; cancelling the consumer stops it.
    """

    @property
    def symbols(self) -> Sequence[str]: ...

    def stream(self) -> AsyncIterator[np.ndarray]: ...


class PushSource:
    """A source fed by code in the same process: `push()` a batch, the pipeline folds it.

    For embedding the feed in a program that already has its ticks, and the base that the
    producer ingest path builds on. Batches are delivered in push order; `end()` ends the stream.
    """

    kind = "push"

    def __init__(self, symbols: Sequence[str]) -> None:
        self._symbols = list(symbols)
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

    @property
    def symbols(self) -> Sequence[str]:
        return self._symbols

    def add_symbol(self, name: str) -> int:
        """Register a new symbol (before pushing ticks for it); returns its index."""
        if name not in self._symbols:
            self._symbols.append(name)
        return self._symbols.index(name)

    def push(self, batch: np.ndarray) -> None:
        self._queue.put_nowait(batch)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[np.ndarray]:
        while (batch := await self._queue.get()) is not None:
            yield batch
