"""The `replay` kind: a recorded tick file played back as a live market.

`feed serve --replay FILE [--speed X] [--loop]` plays an NDJSON file (what `feed serve --record`
and `feed simulate` write) or a CSV file (a header row naming the columns, see `CSV_COLUMNS`),
either gzip-compressed when its name ends in `.gz`. The file is read in chunks, never whole.

Pacing: the gaps between the recorded `ts` values are kept, divided by `speed` (1 = real time,
N = N times faster, 0 = as fast as the feed folds). Each tick's moment is computed against one
absolute clock (`ReplayClock`), so a long replay does not drift; every tick due within
`RESOLUTION_NS` folds in one batch, and the source sleeps only when the next is further away.
A tick without `ts`, or with one earlier than a tick before it, plays right after that tick: the
order of the file is kept. With `loop`, the file starts over at once after its last tick, the
market continuing (seq, volume, trades carry on).

Replayed ticks are stamped with the replay clock (`time.time_ns()` when they are folded), not
with their recorded `ts`, so snapshot times and latency figures measured downstream stay true.

Bad lines are rejected (counted, logged with their line numbers, a few log lines per window).
A last line with no newline that does not parse (a recording cut short) is skipped and reported
once (counter `truncated_lines`); a gzip stream cut short (a recording killed before it closed
the file) is played up to its last complete data and reported once (`truncated_gzip`). At the
end, without `loop`, the source is `ended` and its symbols stale ("replay ended").
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from feed import tickparse
from feed.config import Config, ConfigError, key, non_negative
from feed.sources.base import Ingest, SourceState
from feed.sources.registry import SourceKind, register
from feed.sources.stdin import (
    LineSource,
    LineSplitter,
    RejectLog,
    interner,
    runs,
    with_too_long,
)
from feed.tickparse import Intern, Reject

log = logging.getLogger(__name__)

READ_CHUNK: Final = 256 * 1024
"""Bytes read (decompressed) at a time: a few thousand lines."""
MAX_LINE: Final = 4096
"""Bytes in one line at most; a longer one is rejected and skipped."""
RESOLUTION_NS: Final = 1_000_000
"""Ticks due within this many ns fold together (the event loop's timers are this coarse)."""
CSV_COLUMNS: Final = ("type", "symbol", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size")
_INTEGER_COLUMNS: Final = frozenset({"ts", "size", "bid_size", "ask_size"})
_NUMBER_COLUMNS: Final = frozenset({"price", "bid", "ask"})


@dataclass(frozen=True)
class ReplayConfig:
    file: str = key("")
    """The recording to play; required when replay is a source."""
    speed: float = key(1.0, non_negative)
    """1: the recorded pace; N: N times faster; 0: as fast as possible."""
    loop: bool = key(False)
    """Start over at the end, forever."""


class RecordingError(ValueError):
    """The file cannot be played; str() completes "config key 'replay.file' ..."."""


# -- the file ---------------------------------------------------------------------------------


class _Reader:
    """The decompressed bytes of a recording, a chunk at a time. A gzip stream that ends
    before its end marker (a file being written, or whose writer was killed) ends the chunks
    where its data ends, with `truncated` set."""

    def __init__(self, path: Path, compressed: bool) -> None:
        self._raw: IO[bytes] = open(path, "rb")  # noqa: SIM115  (closed in close())
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="rb") if compressed else None
        self.truncated = False

    def read(self, size: int = READ_CHUNK) -> bytes:
        if self._gzip is None:
            return self._raw.read(size)
        try:
            # read1, not read: read() drops what it decompressed when the stream ends early.
            return self._gzip.read1(size)
        except EOFError:
            self.truncated = True
            return b""

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()
        self._raw.close()


@dataclass(frozen=True)
class Recording:
    """A tick file that can be played: where it is and how to read it."""

    path: Path
    compressed: bool
    columns: tuple[str, ...] | None
    """The CSV header's columns; None for NDJSON."""

    @classmethod
    def inspect(cls, path: Path) -> Recording:
        """Check that `path` can be read as its name says (and read a CSV header); raises
        RecordingError saying what is wrong."""
        shown = repr(str(path))
        if not path.exists():
            raise RecordingError(f"names {shown}, which does not exist")
        if path.is_dir():
            raise RecordingError(f"names {shown}, which is a directory, not a tick file")
        compressed = path.suffix == ".gz"
        is_csv = (path.with_suffix("") if compressed else path).suffix.lower() == ".csv"
        try:
            reader = _Reader(path, compressed)
            try:
                head = reader.read(MAX_LINE + 1)
            finally:
                reader.close()
        except gzip.BadGzipFile as exc:
            raise RecordingError(
                f"names {shown}, which ends in .gz but is not gzip: {exc}"
            ) from None
        except OSError as exc:
            raise RecordingError(f"names {shown}, which cannot be read: {exc}") from None
        columns = csv_header(head.split(b"\n", 1)[0], shown) if is_csv else None
        return cls(path, compressed, columns)

    def open(self) -> _Reader:
        return _Reader(self.path, self.compressed)

    @property
    def format(self) -> str:
        kind = "CSV" if self.columns is not None else "NDJSON"
        return f"{kind}, gzip" if self.compressed else kind


# -- CSV --------------------------------------------------------------------------------------


def csv_header(line: bytes, shown: str) -> tuple[str, ...]:
    """The columns a CSV header row names; raises RecordingError for a bad header."""
    try:
        text = line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise RecordingError(f"names {shown}, a CSV file whose header is not UTF-8") from None
    expected = ",".join(CSV_COLUMNS)
    if not text:
        raise RecordingError(
            f"names {shown}, a CSV file without a header row (its first line names the "
            f"columns: {expected})"
        )
    columns = tuple(cell.strip() for cell in next(csv.reader([text])))
    for column in columns:
        if column not in CSV_COLUMNS:
            raise RecordingError(
                f"names {shown}, a CSV file whose header names an unknown column "
                f"{column!r} (the columns: {expected})"
            )
    if len(set(columns)) != len(columns):
        raise RecordingError(f"names {shown}, a CSV file whose header names a column twice")
    for needed in ("type", "symbol"):
        if needed not in columns:
            raise RecordingError(
                f"names {shown}, a CSV file whose header lacks the column {needed!r} "
                f"(the columns: {expected})"
            )
    return columns


def _cell(column: str, text: str) -> Any:
    """A CSV cell as the JSON value it stands for; a cell that is not a number stays text,
    for the parser to reject with its reason."""
    if column in _INTEGER_COLUMNS:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)  # "100.5": the parser says it must be an integer
        except ValueError:
            return text
    if column in _NUMBER_COLUMNS:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def parse_csv(
    lines: Sequence[bytes], columns: tuple[str, ...], intern: Intern, now_ns: int, first_line: int
) -> tuple[np.ndarray, list[Reject]]:
    """CSV rows (no header) to a batch and rejects numbered by line; an empty cell is a field
    the tick does not have."""
    objects: list[dict[str, Any]] = []
    numbers: list[int] = []
    rejects: list[Reject] = []
    width = len(columns)
    for number, raw in enumerate(lines, first_line):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            rejects.append(Reject(number, None, f"line is not valid UTF-8 (byte {exc.start})"))
            continue
        cells = next(csv.reader([text])) if '"' in text else text.split(",")
        if len(cells) != width:
            rejects.append(
                Reject(number, None, f"row has {len(cells)} cells, the header names {width}")
            )
            continue
        obj = {}
        for column, cell in zip(columns, cells, strict=True):
            cell = cell.strip()
            if cell:
                obj[column] = _cell(column, cell)
        objects.append(obj)
        numbers.append(number)
    batch, bad = tickparse.parse_objects(objects, intern, now_ns)
    if bad:
        rejects.extend(Reject(numbers[r.index], r.field, r.reason) for r in bad)
        rejects.sort(key=lambda reject: reject.index)
    return batch, rejects


# -- pacing -----------------------------------------------------------------------------------


class ReplayClock:
    """When each recorded tick plays, on the monotonic clock: recorded time `t` plays at
    `origin_wall + (t - origin_ts) / speed`, the origin being the first tick of the replay.
    Computed from that one origin, never from the previous sleep, so errors do not add up.
    Recorded times are taken as their running maximum (a missing ts is 0): a tick never plays
    before one that precedes it in the file."""

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("a paced replay needs a speed > 0")
        self.speed = speed
        self._wall: int | None = None
        self._origin = 0
        self._high = 0
        self._end = 0.0

    def due(self, ts: np.ndarray) -> np.ndarray:
        """Monotonic ns at which each tick of a batch (recorded `ts`, in file order) plays;
        non-decreasing, and continuing the batches before it."""
        if self._wall is None:
            self._wall = time.monotonic_ns()
        recorded = np.maximum.accumulate(np.maximum(ts, self._high))
        self._high = int(recorded[-1])
        if self._origin == 0 and self._high > 0:
            self._origin = int(recorded[np.flatnonzero(recorded)[0]])
        offset = np.where(recorded > 0, recorded - self._origin, 0)
        due: np.ndarray = self._wall + offset / self.speed
        self._end = float(due[-1])
        return due

    def next_pass(self) -> None:
        """The file starts over: its first tick plays when the last one of this pass did."""
        self._wall = int(self._end) if self._wall is not None else None
        self._origin = 0
        self._high = 0


# -- the source -------------------------------------------------------------------------------


class ReplaySource(LineSource):
    """Plays one recording, paced or not, once or in a loop."""

    kind = "replay"

    def __init__(self, recording: Recording, speed: float = 1.0, loop: bool = False) -> None:
        super().__init__()
        self.recording = recording
        self.speed = speed
        self.loop = loop
        self.rejects = RejectLog(f"replay {recording.path}")
        self.counters.update(passes=0, truncated_lines=0, truncated_gzip=0, lines_too_long=0)

    async def run(self, ingest: Ingest) -> None:
        if self._ingest is not ingest:
            self.attach(ingest)
        self.set_state(SourceState.LIVE)
        clock = ReplayClock(self.speed) if self.speed > 0 else None
        intern = interner(self)
        try:
            while True:
                played = await self._play_once(clock, intern)
                self.count("passes")
                if not self.loop:
                    break
                if not played:
                    log.warning("replay %s: no tick to play, not looping", self.recording.path)
                    break
                if clock is not None:
                    clock.next_pass()
        finally:
            self.rejects.flush()
        self.set_state(SourceState.ENDED, "replay ended")

    async def _play_once(self, clock: ReplayClock | None, intern: Intern) -> int:
        """One pass over the file; the number of ticks played."""
        played = 0
        reader = self.recording.open()
        splitter = LineSplitter(MAX_LINE)
        first_pass = self.counters["passes"] == 0
        try:
            while data := reader.read():
                chunk = splitter.feed(data)
                if chunk.too_long:
                    self.count("lines_too_long", len(chunk.too_long))
                for lines, first, too_long in runs(chunk):
                    batch, rejects = self._parse(lines, first, intern)
                    self._reject(with_too_long(rejects, too_long, MAX_LINE, "the replay limit"))
                    played += len(batch)
                    await self._play(batch, clock)
            last = splitter.finish()
        finally:
            reader.close()
        if reader.truncated and first_pass:
            self.count("truncated_gzip")
            log.warning(
                "replay %s: the gzip stream ends before its end marker (a recording that was "
                "not closed): playing what it holds",
                self.recording.path,
            )
        if last is not None:
            batch, rejects = self._parse([last[0]], last[1], intern)
            if rejects:
                if first_pass:
                    self.count("truncated_lines")
                    log.warning(
                        "replay %s: the last line (line %d) is truncated: skipped",
                        self.recording.path,
                        last[1],
                    )
            else:
                played += len(batch)
                await self._play(batch, clock)
        return played

    def _parse(
        self, lines: list[bytes], first: int, intern: Intern
    ) -> tuple[np.ndarray, list[Reject]]:
        # ts 0 (an invalid recorded value) marks a tick recorded without one, for the clock.
        columns = self.recording.columns
        if columns is None:
            return tickparse.parse_lines(lines, intern, 0, first)
        if first == 1:  # the header row
            lines, first = lines[1:], 2
        return parse_csv(lines, columns, intern, 0, first)

    async def _play(self, batch: np.ndarray, clock: ReplayClock | None) -> None:
        """Fold the batch's ticks when they are due, each stamped with the moment it folds."""
        if not len(batch):
            return
        if clock is None:
            batch["ts"] = time.time_ns()
            self.emit(batch)
            await asyncio.sleep(0)
            return
        due = clock.due(batch["ts"])
        done, n = 0, len(batch)
        while done < n:
            now = time.monotonic_ns()
            upto = int(np.searchsorted(due, now + RESOLUTION_NS, side="right"))
            if upto > done:
                part = batch[done:upto]
                part["ts"] = time.time_ns()
                self.emit(part)
                done = upto
                await asyncio.sleep(0)
            else:
                await asyncio.sleep((float(due[done]) - now) / 1e9)

    def describe(self) -> str:
        pace = "unpaced" if self.speed == 0 else f"speed {self.speed:g}x"
        loop = ", in a loop" if self.loop else ""
        return f"replay: {self.recording.path} ({self.recording.format}), {pace}{loop}"


def create(section: Any, config: Config) -> ReplaySource:
    settings: ReplayConfig = section
    if not settings.file:
        raise ConfigError(
            "config key 'replay.file' must name the file to play when replay is a source "
            "(--replay FILE)"
        )
    try:
        recording = Recording.inspect(Path(settings.file))
    except RecordingError as exc:
        raise ConfigError(f"config key 'replay.file' {exc}") from None
    return ReplaySource(recording, settings.speed, settings.loop)


KIND = register(SourceKind("replay", ReplayConfig, create))
