"""The cyclic garbage collector, watched: how often it ran and how long it held the event loop.

Every collection stops the whole process, fan-out included, for as long as it traverses the
objects of its generations; with thousands of connections a full collection traverses all of
theirs. `GcWatch` times each collection (through `gc.callbacks`, a few hundred nanoseconds a
collection) so that `/stats` shows what the collector costs, and `freeze()` moves every object
alive now into the permanent generation, which collections skip. `tend` (on by default,
`gc.freeze`) freezes at start-up and after every generation-1 collection, so that no collection
walks more than what came since the last freeze: with 10,000 connections a full collection of
everything would hold the loop for over a second (benchmarks/storm.py). That is safe because a
closed connection leaves no reference cycle (`release_websocket`): reference counting frees it,
frozen or not.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web


def release_websocket(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Break the reference cycles aiohttp (3.14) leaves behind a finished WebSocket, so that
    reference counting frees the connection the moment its handler returns, with no cyclic
    collection: with thousands of connections a full collection is what stalls the loop, and
    a frozen connection (`GcWatch.freeze`) would otherwise never be freed. Call it once the
    handler is done with `ws`. What it breaks (each one a cycle through the whole connection:
    request, protocol, transport, reader, writer, about 30 to 50 objects):

    - the protocol keeps `ws._on_data_received` (the heartbeat's reset, set when `heartbeat`
      is) after the connection is lost, and `ws` holds the request that holds the protocol;
    - the exception `ws` keeps (`ws.exception()`: the reset hit while sending the close frame
      to a vanished client), the `EofStream` it was raised handling (its `__context__`) and
      the one the reader keeps carry tracebacks whose frames hold `ws` and the reader.

    Private attributes are read with getattr, so another aiohttp costs at most the cycles;
    tests/test_gc.py shows what a closed connection leaves to the collector."""
    for exc in (ws.exception(), _reader_exception(ws)):
        seen = 0
        while exc is not None and seen < 16:  # the chain: the reset raised handling EofStream
            exc.__traceback__ = None
            exc, seen = exc.__context__ or exc.__cause__, seen + 1
    protocol = request.protocol
    if getattr(protocol, "_data_received_cb", None) is not None:
        protocol._data_received_cb = None


def _reader_exception(ws: web.WebSocketResponse) -> BaseException | None:
    reader = getattr(ws, "_reader", None)
    exception = getattr(reader, "exception", None)
    return exception() if callable(exception) else None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (at install: find_library runs ldconfig, tens of ms)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def allocator() -> str:
    """The allocator this interpreter started under: `PYTHONMALLOC`, read once at start-up
    (`memory.allocator`, `feed.cli.start_under_allocator`); pymalloc when it is not set."""
    return os.environ.get("PYTHONMALLOC") or "pymalloc"


def _malloc_trim() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim): what a storm's
    10,000 connections used in buffers stays mapped otherwise. False where there is none."""
    libc = _libc()
    try:
        return libc is not None and bool(libc.malloc_trim(0))
    except AttributeError:  # not glibc
        return False


log = logging.getLogger(__name__)
LOG_PAUSE = 0.05
"""A collection holding the process this long (seconds) is logged."""
COMPACT_OPEN = 300
"""Compact only while at most this many connections are open,"""
COMPACT_WITHIN = 1.5
"""and only while the frozen objects are at most this many times what start-up left (a
compaction then costs about what the start-up collection did)."""


class GcWatch:
    """Times every collection; once `freezing`, freezes what survives each generation-1 or
    full one."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.freezing = False
        self.frozen = 0
        """Freezes so far (one after each generation-1 or full collection, while `freezing`)."""
        self.compactions = 0
        self.reclaimed = 0
        """Unreachable objects compactions found: what freezing would otherwise have kept."""
        self.base = 0
        """Objects frozen at start-up (what start-up left alive)."""
        self._started = 0.0
        self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 2)
        spent = time.perf_counter() - self._started
        self.collections[generation] += 1
        self.seconds[generation] += spent
        if spent > self.longest[generation]:
            self.longest[generation] = spent
        if generation >= 1 and self.freezing:
            # What survived a second collection is likely to live long (a connection):
            # exempt it from every later one (gc.freeze is a list splice), so that no
            # collection walks more than what came since the last generation-1 one. Left
            # to generation 2, a storm's survivors were walked three times, the last time
            # 30,000-60,000 of them at once (40-80 ms).
            gc.freeze()
            self.frozen += 1
        if spent >= LOG_PAUSE:
            log.warning(
                "gc: a generation-%d collection held the process for %.0f ms "
                "(%d unreachable objects found)",
                generation,
                spent * 1000,
                info.get("collected", 0),
            )

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True
            _libc()  # now, not in the middle of a compaction

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False
        self.stop_freezing()

    def start_freezing(self) -> None:
        """From now on, freeze what survives each generation-1 or full collection; starts with
        a full one (it walks the whole heap once: what start-up left)."""
        self.freezing = True
        gc.collect()
        self.base = gc.get_freeze_count()

    def stop_freezing(self) -> None:
        """Back to the collector as it was: everything frozen goes to the oldest generation (an
        embedding program, a test, goes on with its own collector)."""
        if self.freezing:
            self.freezing = False
            gc.unfreeze()

    def compact(self) -> int:
        """Unfreeze and collect the whole heap (then freeze again): reclaims what frozen
        objects left as cyclic garbage; reference counting freed the rest, frozen or not. Costs
        one full collection of everything alive. Returns the unreachable objects found."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        collected = time.perf_counter()
        trimmed = _malloc_trim()
        self.compactions += 1
        self.reclaimed += found
        log.info(
            "gc: compacted: %d unreachable objects found in %.0f ms; malloc_trim %s in %.0f ms",
            found,
            (collected - started) * 1000,
            "returned memory" if trimmed else "had nothing to return (or is not glibc)",
            (time.perf_counter() - collected) * 1000,
        )
        return found

    def stats(self) -> dict[str, Any]:
        """Counts only: gc.get_freeze_count() walks every frozen object (tens of ms with
        10,000 connections), which a scrape must not."""
        return {
            "collections": list(self.collections),
            "seconds": [round(s, 6) for s in self.seconds],
            "longest_ms": [round(s * 1000, 3) for s in self.longest],
            "freezing": self.freezing,
            "freezes": self.frozen,
            "compactions": self.compactions,
            "reclaimed": self.reclaimed,
        }

    async def tend(
        self,
        connections: Callable[[], tuple[int, int]],
        settle: float = 2.0,
        compact_after: int = 100_000,
        period: float = 0.5,
    ) -> None:
        """Freeze what survives each generation-1 or full collection, so that no collection
        walks more than what came since the last one: during a storm of 10,000 reconnections a full
        collection of everything would hold the loop for over a second. `connections()`
        gives the counts of connections accepted and closed so far.

        A frozen object is still freed by reference counting (a closed connection leaves no
        cycle: `release_websocket`), but frozen cyclic garbage is not. So `compact()` runs once
        100 connections or more closed since the last compaction, connections have settled
        (none new for `settle` seconds) and at most COMPACT_OPEN are open (the heap is near its
        idle size: a compaction costs about what the start-up collection did); or after
        `compact_after` closes whatever the heap (one full collection of it all)."""
        self.start_freezing()
        accepted, closed = connections()
        seen, compacted_at = accepted, closed
        last_change = checked = time.monotonic()
        wait = settle
        while True:
            await asyncio.sleep(period)
            accepted, closed = connections()
            now = time.monotonic()
            if accepted != seen:
                seen, last_change = accepted, now
            closes = closed - compacted_at
            if closes >= compact_after:
                self.compact()
                compacted_at = closed
                continue
            quiet = now - last_change >= settle and accepted - closed <= COMPACT_OPEN
            if closes < 100 or not quiet or now - checked < wait:
                continue
            # Closed connections can take seconds to be freed: until the heap is back near its
            # size at start-up, look again later (the count walks the frozen objects, a few
            # ms; doubling the wait each time, up to a minute).
            checked = now
            if gc.get_freeze_count() <= self.base * COMPACT_WITHIN:
                self.compact()
                compacted_at, wait = closed, settle
            else:
                wait = min(60.0, wait * 2)
