"""The `stdin` kind: NDJSON ticks read from standard input, and the line handling it shares
with the `replay` kind.

`feed simulate | feed serve --source stdin` feeds the market from a pipe. Input is read without
blocking the event loop and folded in chunks of whatever has arrived (at most `MAX_FOLD` lines
a fold), so a tick at a low rate is folded as soon as its line is complete and a fast producer
is folded a few thousand ticks at a time. Each line is validated by `feed.tickparse`; a bad
line is rejected (counted, logged with its line number, at most a few log lines per
`RejectLog.window`) and the good ones are applied. `ts` is optional: a tick without one is
stamped when its chunk is read. A line longer than `stdin.max_line` bytes is rejected without
being buffered. At the end of input the source is `ended`, its symbols turn stale ("end of
input") and their last state keeps being served.

Standard input may be a pipe or a socket (read by the event loop), or a regular file, a
terminal or /dev/null (read by a helper thread: neither asyncio's nor uvloop's pipe transport
can watch those).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from feed import tickparse
from feed.coalescer import SMALL_BATCH
from feed.config import Config, at_least_one, key, non_negative
from feed.sources.base import BaseSource, Ingest, SourceState
from feed.sources.registry import SourceKind, register
from feed.tickparse import Intern, Reject

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
"""Bytes asked of the input per read: about 2,000 tick lines."""
MAX_FOLD = 4096
"""Lines parsed and folded as one batch at most."""


@dataclass(frozen=True)
class StdinConfig:
    stale_after: float = key(0.0, non_negative)
    """Seconds without input before the symbols turn stale; 0: never (a pipe may be quiet)."""
    max_line: int = key(4096, at_least_one)
    """Bytes in one line at most (its newline aside); a longer line is rejected and skipped."""


# -- lines ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lines:
    """The complete lines of a chunk of input."""

    lines: list[bytes]
    """The lines without their newline, an overlong one replaced by b"" (a blank line, which
    the parsers skip), so that `first + i` stays the number of `lines[i]`."""
    first: int
    """The line number of `lines[0]` (the first line of the input is 1)."""
    too_long: list[int]
    """Numbers of the lines longer than the limit, in order (some may be still incomplete)."""


class LineSplitter:
    """Bytes in, complete lines out, numbered; memory is bounded by `max_line`.

    The incomplete end of a chunk is kept for the next; once it passes `max_line` it is
    reported in `too_long`, dropped, and the rest of that line is skipped up to its newline.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.line = 1
        """The number of the line now in progress."""
        self._tail = b""
        self._skipping = False

    def feed(self, data: bytes) -> Lines:
        too_long: list[int] = []
        if self._skipping:
            cut = data.find(b"\n")
            if cut < 0:
                return Lines([], self.line, too_long)
            data = data[cut + 1 :]
            self._skipping = False
            self.line += 1
        parts = (self._tail + data).split(b"\n") if self._tail else data.split(b"\n")
        self._tail = parts.pop()
        first = self.line
        self.line += len(parts)
        limit = self.max_line
        if parts and max(map(len, parts)) > limit:
            for i, part in enumerate(parts):
                if len(part) > limit:
                    too_long.append(first + i)
                    parts[i] = b""
        if len(self._tail) > limit:
            too_long.append(self.line)
            self._tail = b""
            self._skipping = True
        return Lines(parts, first, too_long)

    def whole(self, data: bytes) -> Lines | None:
        """`feed` in one step for the usual chunk at market rates: nothing pending, and `data`
        whole lines none of which can pass the limit. None (nothing consumed) otherwise."""
        if self._tail or self._skipping or data[-1:] != b"\n" or len(data) > self.max_line:
            return None
        parts = data.split(b"\n")
        parts.pop()
        first = self.line
        self.line += len(parts)
        return Lines(parts, first, [])

    def finish(self) -> tuple[bytes, int] | None:
        """At the end of input: the last line if it had no newline (and its number), else
        None."""
        tail, self._tail = self._tail, b""
        if self._skipping or not tail.strip():
            return None
        return tail, self.line


def runs(chunk: Lines) -> Iterator[tuple[list[bytes], int, list[int]]]:
    """The chunk's lines in runs of at most MAX_FOLD: each run's lines, the number of its first
    line, and the numbers of the overlong lines up to its end (the last run takes the rest)."""
    lines, longs = chunk.lines, chunk.too_long
    if len(lines) <= MAX_FOLD:  # one run, the usual case
        if lines or longs:
            yield lines, chunk.first, longs
        return
    for start in range(0, len(lines), MAX_FOLD):
        run = lines[start : start + MAX_FOLD]
        first = chunk.first + start
        if start + MAX_FOLD >= len(lines):
            mine, longs = longs, []
        else:
            cut = bisect.bisect_left(longs, first + len(run))
            mine, longs = longs[:cut], longs[cut:]
        yield run, first, mine


def with_too_long(
    rejects: list[Reject], too_long: Sequence[int], limit: int, key_name: str
) -> list[Reject]:
    """`rejects` and one for each overlong line, in line order."""
    if not too_long:
        return rejects
    reason = f"line is longer than {limit} bytes ({key_name})"
    merged = rejects + [Reject(number, None, reason) for number in too_long]
    return sorted(merged, key=lambda reject: reject.index)


# -- rejects ----------------------------------------------------------------------------------


class RejectLog:
    """Logs rejected lines without flooding the log: the first `burst` rejects of each
    `window` seconds get a line each (line number, field, reason), the others are counted and
    summed up in one line when the window is over (`tick`) or at the end (`flush`)."""

    def __init__(self, where: str, burst: int = 5, window: float = 10.0) -> None:
        self.where = where
        self.burst = burst
        self.window = window
        self._start = time.monotonic()
        self._shown = 0
        self._hidden = 0
        self._last_hidden = 0

    def add(self, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        self.tick(time.monotonic())
        for reject in rejects:
            if self._shown < self.burst:
                self._shown += 1
                field = f" ({reject.field})" if reject.field else ""
                log.warning(
                    "%s: line %d rejected%s: %s", self.where, reject.index, field, reject.reason
                )
            else:
                self._hidden += 1
                self._last_hidden = reject.index

    def tick(self, now: float) -> None:
        """Start a new window if this one is over (summing up what it did not show)."""
        if now - self._start >= self.window:
            self.flush()
            self._start = now
            self._shown = 0

    def flush(self) -> None:
        if self._hidden:
            log.warning(
                "%s: %d more line(s) rejected, not shown (the last: line %d)",
                self.where,
                self._hidden,
                self._last_hidden,
            )
            self._hidden = 0


def interner(source: BaseSource) -> Intern:
    """The parser's `intern` for `source`: claims each new symbol for it in the pipeline (a
    refusal, SymbolRejected, becomes a reject of that symbol's ticks)."""
    ingest = source.ingest

    def intern(name: str) -> int:
        return ingest.symbol(source, name)

    return intern


# -- reading standard input -------------------------------------------------------------------


OnData = Callable[[bytes], None]


class _Input(Protocol):
    async def pump(self, on_data: OnData) -> None:
        """Call `on_data` with each chunk read, in order, until the end of input."""
        ...


class _PipeProtocol(asyncio.Protocol):
    """Hands each chunk to the source as the event loop reads it: folded and fanned out in the
    same callback, with no task to wake in between. While a chunk is being folded the loop
    reads nothing more, so a producer faster than the fold fills the pipe and waits."""

    def __init__(self, on_data: OnData, done: asyncio.Future[None]) -> None:
        self._on_data = on_data
        self._done = done
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            self._on_data(data)
        except Exception as exc:  # the source fails; the feed serves its last state
            self._done.set_exception(exc)
            if self._transport is not None:
                self._transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            if exc is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(exc)


class _PipeInput:
    """A pipe or socket, watched by the event loop (`connect_read_pipe` on a duplicate of the
    descriptor, so that closing it leaves the process's standard input alone)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def pump(self, on_data: OnData) -> None:
        loop = asyncio.get_running_loop()
        blocking = os.get_blocking(self._fd)
        pipe = os.fdopen(os.dup(self._fd), "rb", buffering=0)
        done: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await loop.connect_read_pipe(lambda: _PipeProtocol(on_data, done), pipe)
        except BaseException:
            pipe.close()
            raise
        try:
            await done
        finally:
            transport.close()
            # The transport made the (shared) open file non-blocking; give it back as it was.
            with contextlib.suppress(OSError):
                os.set_blocking(self._fd, blocking)


class _ThreadInput:
    """A regular file, a terminal or /dev/null, read by a daemon thread a chunk ahead at most
    (a thread blocked on a terminal does not hold up the process's exit)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        self._slots = threading.Semaphore(2)
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="feed-stdin", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            self._slots.acquire()
            if self._closed:
                return
            data: bytes | OSError
            try:
                data = os.read(self._fd, READ_CHUNK)
            except OSError as exc:
                data = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody reads any more
                return
            if not data or isinstance(data, OSError):
                return

    async def pump(self, on_data: OnData) -> None:
        try:
            while True:
                data = await self._queue.get()
                self._slots.release()
                if isinstance(data, OSError):
                    raise data
                if not data:
                    return
                on_data(data)
        finally:
            self._closed = True
            self._slots.release()


async def open_input(fd: int) -> _Input | None:
    """An input reading `fd`, or None when `fd` is not open."""
    if fd == 0 and sys.stdin is None:
        # Closed when Python started: descriptor 0 may since name some other file.
        return None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return _PipeInput(fd)
    return _ThreadInput(fd)


# -- the source -------------------------------------------------------------------------------


class LineSource(BaseSource):
    """What the sources of NDJSON lines (stdin, replay) share: rejects counted and logged, a
    few lines per window (`RejectLog`)."""

    rejects: RejectLog

    def _reject(self, rejects: list[Reject]) -> None:
        if rejects:
            self.rejected(len(rejects))
            self.rejects.add(rejects)

    def check(self, now: float) -> None:
        super().check(now)
        self.rejects.tick(now)


class StdinSource(LineSource):
    """NDJSON ticks from a file descriptor (standard input unless told otherwise)."""

    kind = "stdin"

    def __init__(self, settings: StdinConfig, fd: int = 0) -> None:
        super().__init__(stale_after=settings.stale_after or None)
        self.settings = settings
        self.fd = fd
        self.rejects = RejectLog("stdin")
        self._names: dict[str, int] = {}
        """Names checked and interned, kept across chunks (`parse_lines_rows`)."""
        self.counters.update(lines=0, lines_too_long=0)

    async def run(self, ingest: Ingest) -> None:
        if self._ingest is not ingest:
            self.attach(ingest)
        source = await open_input(self.fd)
        if source is None:
            log.warning("stdin: standard input is closed; no ticks will come from it")
            self.set_state(SourceState.ENDED, "end of input: standard input is closed")
            return
        intern = interner(self)
        splitter = LineSplitter(self.settings.max_line)

        def on_data(data: bytes) -> None:
            self.heard()
            # The usual arrival, a few whole lines, skips the general splitter: the first fold
            # after an idle moment runs with cold caches (docs/performance.md, step 19).
            self._fold(splitter.whole(data) or splitter.feed(data), intern)

        try:
            await source.pump(on_data)
            last = splitter.finish()
            if last is not None:
                self._fold(Lines([last[0]], last[1], []), intern)
        finally:
            self.rejects.flush()
        self.set_state(SourceState.ENDED, "end of input")

    def _fold(self, chunk: Lines, intern: Intern) -> None:
        self.counters["lines"] += len(chunk.lines)
        if chunk.too_long:
            self.count("lines_too_long", len(chunk.too_long))
        limit = self.settings.max_line
        for lines, first, too_long in runs(chunk):
            if len(lines) <= SMALL_BATCH:
                # A few ticks, the usual arrival at market rates: folded as rows, no array,
                # names already seen not checked again.
                rows, rejects = tickparse.parse_lines_rows(
                    lines, intern, time.time_ns(), first, self._names
                )
                self._reject(with_too_long(rejects, too_long, limit, "stdin.max_line"))
                self.emit_rows(rows)
                continue
            batch, rejects = tickparse.parse_lines(lines, intern, time.time_ns(), first)
            self._reject(with_too_long(rejects, too_long, limit, "stdin.max_line"))
            self.emit(batch)

    def describe(self) -> str:
        stale = f", stale after {self.stale_after:g} s" if self.stale_after else ""
        return f"stdin: NDJSON ticks from standard input{stale}"


def create(section: Any, config: Config) -> StdinSource:
    return StdinSource(section)


KIND = register(SourceKind("stdin", StdinConfig, create))
