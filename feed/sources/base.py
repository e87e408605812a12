"""What a source is, what the pipeline offers it, and the bookkeeping every source shares.

A source runs as one task (`Source.run`), turns whatever it reads (a simulator, a pipe, a file,
a producer's socket, an exchange's stream) into tick batches and hands each one to the pipeline
with `Ingest.apply`, which folds it and fans it out before returning: a source that reads faster
than the feed folds is slowed by its own reads, so nothing queues up in between.

Guarantees a source gives the pipeline:
- ordering: ticks within a batch, and batches across the stream, are in the order they
  happened; the coalescer folds them in that order;
- symbols: `sym` in every tick is a market index obtained from `Ingest.symbol`, which also
  makes the source the symbol's owner (one source per symbol);
- time: `ts` is when the tick was born (the upstream's or the producer's stamp, else the moment
  it was read), in ns since the epoch;
- liveness: it says when its upstream is quiet or gone (`BaseSource.set_state`), so the
  subscribers of its symbols are told the data is stale.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from feed.tickparse import SymbolRejected

__all__ = ["BaseSource", "Ingest", "Source", "SourceState", "SymbolRejected"]

log = logging.getLogger(__name__)


class SourceState(enum.StrEnum):
    CONNECTING = "connecting"
    """Starting, or connecting to its upstream for the first time."""
    LIVE = "live"
    """Data flows."""
    RECONNECTING = "reconnecting"
    """Lost its upstream and is trying again; its symbols are stale."""
    STALE = "stale"
    """Connected, but the upstream has been silent past `stale_after`; its symbols are stale."""
    ENDED = "ended"
    """Exhausted (end of input, a replay without loop); the last state stays served."""
    FAILED = "failed"
    """Stopped by an error it cannot recover from; the last state stays served, stale."""


STALE_STATES = frozenset({SourceState.RECONNECTING, SourceState.STALE, SourceState.FAILED})


class Ingest(Protocol):
    """The pipeline, as a running source sees it."""

    def symbol(self, source: Source, name: str) -> int:
        """The market index of `name`, adding the symbol if new and making `source` its owner.
        Raises SymbolRejected when another source owns it or `limits.max_symbols` is reached."""
        ...

    def apply(self, source: Source, batch: np.ndarray) -> None:
        """Fold a batch (market indices) and fan it out, now. Never awaits anyone."""
        ...

    def apply_rows(self, source: Source, rows: list[tuple[Any, ...]]) -> None:
        """`apply` for a few ticks given as rows (the fields of TICK_DTYPE, in order)."""
        ...

    def stale(self, source: Source, syms: Iterable[int] | None, reason: str) -> None:
        """Tell subscribers that these symbols of `source` (None: all it owns) are stale."""
        ...

    def live(self, source: Source, syms: Iterable[int] | None = None) -> None:
        """Tell subscribers that these symbols of `source` (None: all) are live again."""
        ...


@runtime_checkable
class Source(Protocol):
    """One way ticks come in. `run` is called once and runs until the source is exhausted
    (it returns) or the feed stops (it is cancelled); an exception marks it failed."""

    name: str
    kind: str

    async def run(self, ingest: Ingest) -> None: ...

    def check(self, now: float) -> None:
        """Called about every `watch_period` seconds (monotonic `now`) to notice silence."""
        ...

    def status(self) -> dict[str, Any]:
        """What `/healthz` and `/stats` show: kind, state, ticks in and rejected, last tick."""
        ...

    def describe(self) -> str:
        """One line for the start-up log."""
        ...


class BaseSource:
    """The state, counters and stale logic every source shares; a kind subclasses it and
    writes `run`, calling `emit` for every batch and `heard` for any sign of life."""

    kind: str = "source"

    def __init__(self, *, stale_after: float | None = None, name: str | None = None) -> None:
        self.name = name or self.kind
        self.stale_after = stale_after
        """Seconds of upstream silence before this source's symbols are stale (None: never)."""
        self.state = SourceState.CONNECTING
        self.reason: str | None = None
        """Why the source is in its state, when that is not obvious (stale, failed...)."""
        self.ticks_in = 0
        self.ticks_rejected = 0
        self.last_tick_ns: int | None = None
        """Wall-clock ns when the newest accepted tick arrived."""
        self.last_heard = time.monotonic()
        self.counters: dict[str, int] = {}
        """Kind-specific counters (reconnects, dropped, unparseable...), shown in the status."""
        self._ingest: Ingest | None = None

    # -- for the pipeline ---------------------------------------------------------------------

    def attach(self, ingest: Ingest) -> None:
        self._ingest = ingest

    @property
    def ingest(self) -> Ingest:
        if self._ingest is None:
            raise RuntimeError(f"source {self.name} is not attached to a pipeline")
        return self._ingest

    async def run(self, ingest: Ingest) -> None:
        raise NotImplementedError

    def check(self, now: float) -> None:
        if (
            self.stale_after is not None
            and self.state is SourceState.LIVE
            and now - self.last_heard > self.stale_after
        ):
            self.set_state(
                SourceState.STALE, f"no data from {self.name} for {self.stale_after:g} s"
            )

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "reason": self.reason,
            "ticks_in": self.ticks_in,
            "ticks_rejected": self.ticks_rejected,
            "last_tick_ns": self.last_tick_ns,
            **self.counters,
        }

    def describe(self) -> str:
        return self.kind

    # -- for the source itself ----------------------------------------------------------------

    def symbols(self, names: Sequence[str]) -> list[int]:
        """Market indices of `names`, claimed for this source (raises SymbolRejected)."""
        ingest = self.ingest
        return [ingest.symbol(self, name) for name in names]

    def emit(self, batch: np.ndarray) -> None:
        """Hand a batch of good ticks (market indices) to the pipeline."""
        if not len(batch):
            return
        self.ticks_in += len(batch)
        self.last_tick_ns = time.time_ns()
        self.heard()
        self.ingest.apply(self, batch)

    def emit_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """`emit` for a few ticks given as rows: cheaper than an array at low rates."""
        if not rows:
            return
        self.ticks_in += len(rows)
        self.last_tick_ns = time.time_ns()
        self.heard()
        self.ingest.apply_rows(self, rows)

    def rejected(self, count: int = 1) -> None:
        self.ticks_rejected += count

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def heard(self) -> None:
        """The upstream showed a sign of life (a tick, a heartbeat): not stale."""
        self.last_heard = time.monotonic()
        if self.state is not SourceState.LIVE and self.state is not SourceState.ENDED:
            self.set_state(SourceState.LIVE)

    def set_state(self, state: SourceState, reason: str | None = None) -> None:
        """Move to `state`; subscribers of this source's symbols hear of it when their data
        turns stale (reconnecting, stale, failed, and ended when `stale_on_end`) or live."""
        previous = self.state
        if state is previous and reason == self.reason:
            return
        self.state, self.reason = state, reason
        if state is not previous:
            log.info(
                "source %s: %s -> %s%s",
                self.name,
                previous,
                state,
                f" ({reason})" if reason else "",
            )
        if self._ingest is None:
            return
        if state in STALE_STATES or (state is SourceState.ENDED and self.stale_on_end):
            self._ingest.stale(self, None, reason or state.value)
        elif state is SourceState.LIVE and previous is not SourceState.CONNECTING:
            self._ingest.live(self, None)

    stale_on_end: ClassVar[bool] = True
    """Whether the end of this source's input makes its symbols stale (a replay that ended,
    a producer gone); the simulator's end does not."""


class Backoff:
    """Exponential backoff with full jitter: the n-th retry waits a uniform random time in
    [0, min(cap, base * 2**n)], so many clients of one failed upstream do not retry in step.
    `reset()` once a connection has proven itself (it delivered data)."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
