"""The producer pipeline: every source's batches folded into the market and handed to a sink.

Each source runs as its own task and calls `apply` for every batch it reads; the batch is folded
(vectorized), each changed snapshot encoded once and the sink (the local hub, or a bus) publishes
it before `apply` returns. Folding on arrival, with no timer in between, keeps a tick's latency
its own; a source that reads faster than the feed folds is held back by its own reads.

The pipeline also keeps who owns each symbol (the first source to tick it) and which symbols are
stale, and tells the sink when that changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from feed.market import Market
from feed.sources.base import Source, SourceState, SymbolRejected
from feed.ticks import TICK_DTYPE

log = logging.getLogger(__name__)

WATCH_PERIOD = 0.25
"""Seconds between checks of the sources' silence (stale_after is honoured to this)."""


class Sink(Protocol):
    """Where folded snapshots go: the local hub (fan-out) or a bus to gateways."""

    def publish(self, syms: list[int]) -> None:
        """These symbols' snapshots changed (the market holds the new ones)."""
        ...

    def status(self, state: str, syms: list[int], reason: str | None) -> None:
        """These symbols turned `stale` (with a reason) or `live` again."""
        ...


Tap = Callable[[np.ndarray], None]
"""Sees every accepted batch after it is folded (the recorder)."""
Observer = Callable[[list[int], int], None]
"""Told of each batch once the sink has its snapshots: the symbols it changed and the `ts` (ns)
of its newest tick (the metrics' tick-to-send latency). Once per batch, never per tick."""


class Pipeline:
    def __init__(
        self,
        sources: Sequence[Source],
        market: Market,
        sink: Sink,
        *,
        max_symbols: int = 100_000,
        watch_period: float = WATCH_PERIOD,
    ) -> None:
        self.sources = list(sources)
        self.market = market
        self.sink = sink
        self.max_symbols = max_symbols
        self.watch_period = watch_period
        self.rejected_batches = 0
        self.state = "starting"
        """starting, running, ended (every source is exhausted) or failed (one failed)."""
        self.taps: list[Tap] = []
        self.observers: list[Observer] = []
        self._owner: dict[int, str] = {}
        self._owned: dict[str, dict[int, None]] = {source.name: {} for source in self.sources}
        self.stale_symbols: dict[int, str] = {}
        """Stale symbols and why."""
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"two sources share a name: {names}")
        for source in self.sources:
            # Attached now, not when running: a source that knows its symbols up front (the
            # simulator) claims them here, so they are listed before the first tick.
            attach = getattr(source, "attach", None)
            if callable(attach):
                attach(self)

    # -- Ingest: what sources call ------------------------------------------------------------

    def symbol(self, source: Source, name: str) -> int:
        symbols = self.market.symbols
        sym = symbols.get(name)
        if sym is None:
            if len(symbols) >= self.max_symbols:
                raise SymbolRejected(
                    f"symbol {name!r} is new and the feed holds its limit of "
                    f"{self.max_symbols} symbols (limits.max_symbols)"
                )
            sym = symbols.add(name)
        owner = self._owner.get(sym)
        if owner is None:
            self._owner[sym] = source.name
            self._owned.setdefault(source.name, {})[sym] = None
        elif owner != source.name:
            raise SymbolRejected(f"symbol {name!r} is ticked by source {owner!r}")
        return sym

    def apply(self, source: Source, batch: np.ndarray) -> None:
        try:
            syms = self.market.apply(batch)
        except ValueError:
            self.rejected_batches += 1
            log.exception("rejected a batch of %d ticks from %s", len(batch), source.name)
            return
        for tap in self.taps:
            tap(batch)
        self._publish(syms)
        if self.observers and syms:
            newest = int(batch["ts"].max())
            for observe in self.observers:
                observe(syms, newest)

    def apply_rows(self, source: Source, rows: list[tuple[Any, ...]]) -> None:
        """`apply` for a few ticks given as rows (the fields of TICK_DTYPE, in order): no
        array is built unless a tap wants one."""
        try:
            syms = self.market.apply_rows(rows)
        except ValueError:
            self.rejected_batches += 1
            log.exception("rejected a batch of %d ticks from %s", len(rows), source.name)
            return
        if self.taps:
            batch = np.array(rows, dtype=TICK_DTYPE)
            for tap in self.taps:
                tap(batch)
        self._publish(syms)
        if self.observers and syms:
            newest = max(row[2] for row in rows)  # ts, the third field of TICK_DTYPE
            for observe in self.observers:
                observe(syms, newest)

    def _publish(self, syms: list[int]) -> None:
        if not syms:
            return
        if self.stale_symbols:
            stale = self.stale_symbols
            back = [sym for sym in syms if sym in stale]
            if back:
                for sym in back:
                    del stale[sym]
                self.sink.status("live", back, None)
        self.sink.publish(syms)

    def stale(self, source: Source, syms: Iterable[int] | None, reason: str) -> None:
        owned = self._owned.get(source.name, {})
        chosen = list(owned) if syms is None else [sym for sym in syms if sym in owned]
        turned = [sym for sym in chosen if self.stale_symbols.get(sym) != reason]
        if not turned:
            return
        for sym in turned:
            self.stale_symbols[sym] = reason
        self.sink.status("stale", turned, reason)

    def live(self, source: Source, syms: Iterable[int] | None = None) -> None:
        owned = self._owned.get(source.name, {})
        chosen = list(owned) if syms is None else [sym for sym in syms if sym in owned]
        back = [sym for sym in chosen if sym in self.stale_symbols]
        if not back:
            return
        for sym in back:
            del self.stale_symbols[sym]
        self.sink.status("live", back, None)

    # -- reading ------------------------------------------------------------------------------

    def owned(self, source: Source) -> list[int]:
        return list(self._owned.get(source.name, {}))

    def owner(self, sym: int) -> str | None:
        return self._owner.get(sym)

    def source_status(self) -> list[dict[str, Any]]:
        result = []
        for source in self.sources:
            status = source.status()
            status["symbols"] = len(self._owned.get(source.name, {}))
            result.append(status)
        return result

    # -- running ------------------------------------------------------------------------------

    async def _run_source(self, source: Source) -> None:
        try:
            await source.run(self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("source %s failed; serving its last state", source.name)
            set_state = getattr(source, "set_state", None)
            if callable(set_state):
                set_state(SourceState.FAILED, f"{type(exc).__name__}: {exc}")
        else:
            log.info("source %s ended; serving its last state", source.name)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_period)
            now = time.monotonic()
            for source in self.sources:
                source.check(now)

    async def run(self) -> None:
        """Run every source until all are exhausted (or this is cancelled)."""
        self.state = "running"
        watcher = asyncio.create_task(self._watch(), name="feed-source-watch")
        tasks = [
            asyncio.create_task(self._run_source(source), name=f"feed-source-{source.name}")
            for source in self.sources
        ]
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.state = "ended"
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        states = {source.status()["state"] for source in self.sources}
        self.state = "failed" if SourceState.FAILED.value in states else "ended"
        log.info("every source ended after %d ticks; serving the last state", self.market.ticks)

    @property
    def failed(self) -> bool:
        return self.state == "failed" or any(
            source.status()["state"] == SourceState.FAILED.value for source in self.sources
        )
