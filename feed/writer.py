"""The writer: one subscriber's socket, what is pending for it, and the only place that writes.

Writes go straight to the transport, synchronously, and only while the bytes queued above the
kernel stay under a limit. Above it, updates wait in the mailbox where a newer snapshot can still
replace an older one, so no caller (the producer, other clients) ever awaits this connection.
The writer keeps its own stall state (since when the socket has been full) and counters.

Per-subscription options (`throttle_ms`, `fields`) live here too, in `options`, and only a
writer that has some pays for them: `set_options` turns it into an `OptionsWriter`, whose flush
holds a throttled symbol back until its interval ends (the newest snapshot, never lost: sent when
the interval ends, through `wake`) and cuts each symbol to its view. A writer without options
runs the same flush as before options existed.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from feed import protocol
from feed.mailbox import Mailbox
from feed.market import Market
from feed.ratelimit import TokenBucket
from feed.views import View

_ids = itertools.count(1)


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    """The server decided to close it; nothing more is written."""
    CLOSED = "closed"


_OPEN = State.OPEN  # a module global: the fan-out reads it once per connection per batch


@dataclass(frozen=True, slots=True)
class Options:
    """How one subscription wants its symbol: at most one update per `throttle` seconds (0:
    every one), in `view` (None: every field)."""

    throttle: float = 0.0
    view: View | None = None


DEFAULT = Options()

_NO_OPTIONS: dict[int, Options] = {}
_NONE_HELD: dict[int, None] = {}
_NONE_DUE: dict[int, float] = {}
"""Never written: every writer's until its first option (`set_options` makes its own)."""

Wake = Callable[["Writer", float], None]
"""Asks for `writer.release(now)` then a flush, `delay` seconds from now (throttles)."""


class Writer:
    __slots__ = (
        "_transport",
        "_write_limit",
        "bucket",
        "bytes_sent",
        "close_code",
        "due",
        "frames_sent",
        "held",
        "id",
        "last_write",
        "mailbox",
        "options",
        "peer",
        "requests",
        "session",
        "stalled_since",
        "state",
        "throttled",
        "wake",
        "wake_at",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        *,
        write_limit: int,
        bucket: TokenBucket,
        now: float,
        wake: Wake | None = None,
    ) -> None:
        self.id = next(_ids)
        self.ws = ws
        self._transport = transport
        self._write_limit = write_limit
        self.mailbox = Mailbox()
        self.bucket = bucket
        self.state = State.OPEN
        self.close_code: int | None = None
        self.frames_sent = 0
        self.bytes_sent = 0
        self.last_write = now
        self.requests = 0
        """Client messages handled: from the first on, its requests go ahead of newcomers'
        in a burst (feed.turns.PerTurn)."""
        self.stalled_since: float | None = None
        """When the socket was first seen full with something left to send; None if not."""
        # Shared empty dicts until the first option: most connections never have one, and three
        # dicts each would cost 10,000 connections memory and the collector time.
        self.options: dict[int, Options] = _NO_OPTIONS
        """Per symbol subscribed with options (absent: every update, every field)."""
        self.held: dict[int, None] = _NONE_HELD
        """Throttled symbols with a newer snapshot waiting for their interval to end."""
        self.due: dict[int, float] = _NONE_DUE
        """Per throttled symbol, when it may be sent next."""
        self.throttled = 0
        """Updates held back by a throttle and replaced by a newer one before they were sent."""
        self.wake = wake
        self.wake_at: float | None = None
        """When `wake` was last asked for (None: not pending)."""
        self.session: Any = None
        """The connection's request side (feed.session.Session), kept by the hub."""
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN and not self.ws.closed and not self._transport.is_closing()

    @property
    def buffered(self) -> int:
        """Bytes queued in user space above the kernel's socket buffer."""
        return self._transport.get_write_buffer_size()

    @property
    def writable(self) -> bool:
        return self.is_open and self._transport.get_write_buffer_size() <= self._write_limit

    def send(self, message: bytes, now: float) -> bool:
        """Write one text frame now, whatever is buffered (control answers are small and rate
        limited). False if the connection no longer takes writes."""
        if not self.is_open:
            return False
        frame = protocol.text_frame(message)
        self._transport.write(frame)
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        self.last_write = now
        return True

    def flush(self, now: float, market: Market) -> bool:
        """Send the newest snapshot of every pending symbol as one frame if the socket can take
        it.

        Returns False when something is left pending because the socket is full. This is the
        fan-out's inner loop: one call per connection per batch, so it stays flat.
        """
        mailbox = self.mailbox
        if not mailbox:
            return True
        transport = self._transport
        if self.state is not _OPEN or self.ws.closed or transport.is_closing():
            return True
        if transport.get_write_buffer_size() > self._write_limit:
            if self.stalled_since is None:
                self.stalled_since = now
            return False
        self.stalled_since = None
        if len(mailbox) == 1:  # the common case: the one symbol of this batch
            frame = market.symbol_frame(mailbox.popitem()[0])
            mailbox.delivered += 1
        else:
            frame = market.update_frame(mailbox.take())
        transport.write(frame)
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        self.last_write = now
        return True

    def set_options(self, syms: list[int], options: Options) -> None:
        """Subscribe `syms` with `options` from now on (DEFAULT: as if none were given)."""
        if self.options is _NO_OPTIONS:
            if options == DEFAULT:
                return
            self.options, self.held, self.due = {}, {}, {}
        mine = self.options
        if options == DEFAULT:
            for sym in syms:
                mine.pop(sym, None)
                self.due.pop(sym, None)
                if sym in self.held:
                    del self.held[sym]
                    self.mailbox[sym] = None  # no throttle any more: send it now
        else:
            for sym in syms:
                mine[sym] = options
                if not options.throttle:
                    self.due.pop(sym, None)
                    if sym in self.held:
                        del self.held[sym]
                        self.mailbox[sym] = None
        # The flush that knows about options, only for a writer that has some.
        self.__class__ = OptionsWriter if mine else Writer

    def forget_pending(self, syms: list[int]) -> None:
        """Nothing pending or held for `syms` any more (their current state is being sent)."""
        self.mailbox.discard(syms)
        if self.held:
            for sym in syms:
                self.held.pop(sym, None)

    def forget(self, syms: list[int]) -> None:
        """`syms` were unsubscribed: nothing pending or held for them, no options."""
        self.mailbox.discard(syms)
        if self.options:
            for sym in syms:
                self.options.pop(sym, None)
                self.held.pop(sym, None)
                self.due.pop(sym, None)
            if not self.options:
                self.__class__ = Writer

    def release(self, now: float) -> None:
        """Move every held symbol whose interval has ended back to the mailbox."""
        self.wake_at = None
        if not self.held:
            return
        due, mailbox = self.due, self.mailbox
        for sym in list(self.held):
            if due.get(sym, 0.0) <= now:
                del self.held[sym]
                mailbox[sym] = None
        self._ask_wake(now)

    def _ask_wake(self, now: float) -> None:
        if not self.held or self.wake is None:
            return
        due = self.due
        soonest = min(due.get(sym, now) for sym in self.held)
        if self.wake_at is None or soonest < self.wake_at:
            self.wake_at = soonest
            self.wake(self, max(0.0, soonest - now))

    def abort(self) -> None:
        """Drop the socket without a goodbye (the peer did not answer our close in time)."""
        if not self._transport.is_closing():
            self._transport.abort()

    def check_stall(self, now: float) -> float:
        """Seconds the socket has stayed full (0 if it is not full)."""
        if self.is_open and self._transport.get_write_buffer_size() > self._write_limit:
            if self.stalled_since is None:
                self.stalled_since = now
            return now - self.stalled_since
        self.stalled_since = None
        return 0.0

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "state": self.state.value,
            "pending": len(self.mailbox) + len(self.held),
            "conflated": self.mailbox.conflated + self.throttled,
            "delivered": self.mailbox.delivered,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "buffered": self.buffered if self.is_open else 0,
            "stalled_for": 0.0 if self.stalled_since is None else now - self.stalled_since,
        }


class OptionsWriter(Writer):
    """A writer with per-symbol options: throttles and views (its flush is the only change)."""

    __slots__ = ()

    def flush(self, now: float, market: Market) -> bool:
        mailbox = self.mailbox
        if not mailbox:
            return True
        transport = self._transport
        if self.state is not _OPEN or self.ws.closed or transport.is_closing():
            return True
        if transport.get_write_buffer_size() > self._write_limit:
            if self.stalled_since is None:
                self.stalled_since = now
            return False
        self.stalled_since = None
        options, due, held = self.options, self.due, self.held
        ready: list[tuple[int, View | None]] = []
        for sym in mailbox:
            option = options.get(sym)
            if option is None:
                ready.append((sym, None))
                continue
            if option.throttle:
                if due.get(sym, 0.0) > now:
                    if sym in held:
                        self.throttled += 1
                    else:
                        held[sym] = None
                    continue
                due[sym] = now + option.throttle
            ready.append((sym, option.view))
        mailbox.clear()
        if held:
            self._ask_wake(now)
        if not ready:
            return True
        mailbox.delivered += len(ready)
        frame = market.views.frame(ready)
        transport.write(frame)
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        self.last_write = now
        return True
