"""A batch stream (the simulator, a `PushSource`) as a source: its symbols claimed in the
market, its indices mapped to the market's, each batch folded as it is yielded."""

from __future__ import annotations

from typing import Any

import numpy as np

from feed.source import BatchStream
from feed.sources.base import BaseSource, Ingest, SourceState


class StreamSource(BaseSource):
    """Runs `stream.stream()` to its end. A stream never goes stale: it has no upstream to
    lose, and its end (a simulation's duration) leaves the last state live."""

    stale_on_end = False

    def __init__(self, stream: BatchStream, kind: str = "stream", describe: str = "") -> None:
        self.kind = kind
        super().__init__()
        self.stream = stream
        self._description = describe or kind
        self._map = np.zeros(0, dtype=np.int32)
        self._identity = True

    def _claim_new_symbols(self) -> None:
        names = self.stream.symbols
        known = len(self._map)
        if len(names) <= known:
            return
        added = np.array(self.symbols(names[known:]), dtype=np.int32)
        self._map = np.concatenate([self._map, added])
        self._identity = bool(np.array_equal(self._map, np.arange(len(self._map))))

    def attach(self, ingest: Ingest) -> None:
        super().attach(ingest)
        self._claim_new_symbols()

    async def run(self, ingest: Ingest) -> None:
        if self._ingest is not ingest:
            self.attach(ingest)
        self.set_state(SourceState.LIVE)
        async for batch in self.stream.stream():
            if len(self.stream.symbols) > len(self._map):
                self._claim_new_symbols()
            if not self._identity:
                batch = batch.copy()
                batch["sym"] = self._map[batch["sym"]]
            self.emit(batch)
        self.set_state(SourceState.ENDED, "end of stream")

    def heard(self) -> None:
        self.last_heard = 0.0  # never checked: stale_after is None

    def status(self) -> dict[str, Any]:
        result = super().status()
        stats = getattr(self.stream, "stats", None)
        if callable(stats):
            import dataclasses

            result["stream"] = dataclasses.asdict(stats())
        return result

    def describe(self) -> str:
        return self._description
