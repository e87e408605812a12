"""The recorder: every accepted tick, from every source, appended to an NDJSON file.

Ticks are written in the interchange format (`feed.ticks.to_ndjson`) as they are folded, into a
buffer that reaches the file at least every `flush_interval` seconds (and at close): a server
killed with SIGKILL loses at most the last interval, one stopped with SIGTERM loses nothing. A
path ending in `.gz` is gzip-compressed, each flush a sync point, so what was flushed is readable
even if the file is never closed. The file is what `feed serve --replay` plays back.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from feed.ticks import to_ndjson

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, path: str | Path, symbols: Sequence[str], flush_interval: float = 1.0):
        self.path = Path(path)
        self.symbols = symbols
        self.flush_interval = flush_interval
        self.ticks = 0
        self.bytes = 0
        self._file: IO[bytes] | gzip.GzipFile | None = None
        self._raw: IO[bytes] | None = None
        self._pending: list[bytes] = []

    def open(self) -> None:
        """Open the file for appending; raises OSError if it cannot be written."""
        self._raw = open(self.path, "ab")  # noqa: SIM115  (closed in close())
        if self.path.suffix == ".gz":
            self._file = gzip.GzipFile(fileobj=self._raw, mode="ab")
        else:
            self._file = self._raw
        log.info("recording every accepted tick to %s", self.path)

    def write(self, batch: np.ndarray) -> None:
        """Queue a folded batch (market indices) for the next flush."""
        if self._file is None:
            return
        chunk = to_ndjson(batch, self.symbols)
        self._pending.append(chunk)
        self.ticks += len(batch)
        self.bytes += len(chunk)

    def flush(self) -> None:
        """Write what is queued and push it to the kernel (and through gzip, a sync point)."""
        file = self._file
        if file is None:
            return
        if self._pending:
            file.write(b"".join(self._pending))
            self._pending.clear()
            if isinstance(file, gzip.GzipFile):
                file.flush(zlib.Z_SYNC_FLUSH)
            assert self._raw is not None
            self._raw.flush()

    async def run(self) -> None:
        """Flush every `flush_interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                self.flush()
            except OSError:
                log.exception("recording to %s failed; recording stops", self.path)
                self._file = None
                return

    def close(self) -> None:
        """Flush everything and close the file."""
        if self._file is None:
            return
        try:
            self.flush()
            self._file.close()
            if self._raw is not None and self._raw is not self._file:
                self._raw.close()
        finally:
            self._file = None
            self._raw = None
        log.info("recorded %d ticks to %s", self.ticks, self.path)



