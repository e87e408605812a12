"""One subscriber's socket: its mailbox, its counters and the only place that writes to it.

Writes go straight to the transport, synchronously, and only while the bytes queued above the
kernel stay under a limit. Above it, updates wait in the mailbox where a newer snapshot can still
replace an older one, so no caller (the producer, other clients) ever awaits this connection.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from typing import Any

from aiohttp import web

from feed import protocol
from feed.mailbox import Mailbox
from feed.market import Market
from feed.ratelimit import TokenBucket

_ids = itertools.count(1)


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    """The server decided to close it; nothing more is written."""
    CLOSED = "closed"


_OPEN = State.OPEN  # a module global: the fan-out reads it once per connection per batch


class Connection:
    __slots__ = (
        "_transport",
        "_write_limit",
        "bucket",
        "bytes_sent",
        "close_code",
        "frames_sent",
        "id",
        "last_write",
        "mailbox",
        "peer",
        "stalled_since",
        "state",
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
        self.stalled_since: float | None = None
        """When the socket was first seen full with something left to send; None if not."""
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
            "pending": len(self.mailbox),
            "conflated": self.mailbox.conflated,
            "delivered": self.mailbox.delivered,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "buffered": self.buffered if self.is_open else 0,
            "stalled_for": 0.0 if self.stalled_since is None else now - self.stalled_since,
        }
