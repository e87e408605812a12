"""Connections' way in and out, paced over turns of the event loop.

When 10,000 clients reconnect together, the loop's poll hands over thousands of upgrade
requests at once, and aiohttp parses each, builds its request and starts its handler back to
back; when they drop together, thousands of `connection_lost` calls (and the handlers' ends
they wake) run back to back the same way. Each is short (30-70 us), together they held the loop
for 150-450 ms while every other client's pings, requests and updates waited.

`Intake` stands between the transport and aiohttp's protocol (`Paced`), and passes on

- a new connection's first bytes (its upgrade request) for `opens_per_turn` connections a
  turn: the others stop reading, keep what they read, and go on in order on later turns (the
  rest of the request waits in the kernel's socket buffer, untouched);
- every later read for `reads_per_turn` connections a turn (the others stop reading likewise);
  the reads of connections already served (past their first frame) have a line and a limit
  of their own, so a client that was there before a storm keeps its pace through it;
- a lost connection's `connection_lost` for `closes_per_turn` connections a turn, the others
  in order on later turns (the transport is closed at once; only aiohttp's teardown waits).

Writes and flow control go straight through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from feed.turns import PerTurn


class Intake:
    """The pacing of connections' first reads and of their teardowns (see the module)."""

    def __init__(
        self, opens_per_turn: int = 64, reads_per_turn: int = 256, closes_per_turn: int = 64
    ) -> None:
        self.opens = PerTurn(opens_per_turn)
        """A new connection's first read (its upgrade request)."""
        self.reads = PerTurn(reads_per_turn)
        """Every later read (WebSocket frames: requests, pongs, producers' ticks)."""
        self.closes = PerTurn(closes_per_turn)
        """aiohttp's teardown of a lost connection."""

    def protocol_factory(
        self, make: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A factory for `loop.create_server`: what `make` makes, paced."""
        return lambda: Paced(make(), self)

    async def listen(
        self,
        make: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        """Listen on host:port, every connection paced (an aiohttp runner's `server` as `make`)."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol_factory(make),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )

    def stats(self) -> dict[str, int]:
        return {
            "opens_deferred": self.opens.deferred,
            "opens_waiting": self.opens.queued,
            "reads_deferred": self.reads.deferred,
            "reads_waiting": self.reads.queued,
            "closes_deferred": self.closes.deferred,
            "closes_waiting": self.closes.queued,
        }


class Paced(asyncio.Protocol):
    """A protocol (aiohttp's `RequestHandler`) behind the intake's pacing."""

    __slots__ = ("held", "inner", "intake", "lost", "reads", "transport")

    def __init__(self, inner: asyncio.Protocol, intake: Intake) -> None:
        self.inner = inner
        self.intake = intake
        self.transport: asyncio.Transport | None = None
        self.reads = 0
        """Reads passed on: the first is the upgrade request, the second the client's first
        frame; from the third on, the connection's reads are in the line of the already served."""
        self.held = b""
        """What a connection waiting for its turn read before it stopped reading."""
        self.lost: Exception | None = None
        """Why the connection was lost, while its teardown waits for its turn."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.held:  # read in the same poll, before the pause took hold
            self.held += data
            return
        gate = self.intake.reads if self.reads else self.intake.opens
        ahead = self.reads >= 2
        if gate.enter(ahead):
            self.reads += 1
            self.inner.data_received(data)
        else:
            self.held = data
            assert self.transport is not None
            self.transport.pause_reading()
            gate.call(self._release, ahead=ahead)

    def _release(self) -> None:
        """This connection's turn: what it read goes on, and it reads again."""
        self.reads += 1
        data, self.held = self.held, b""
        assert self.transport is not None
        if not data or self.transport.is_closing():  # lost meanwhile: nothing to pass on
            return
        self.transport.resume_reading()  # first: the protocol may pause it again itself
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.held:  # cannot happen while paused; if it does, keep the order
            data, self.held = self.held, b""
            self.inner.data_received(data)
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.held = b""  # a later turn's _release has nothing left to pass on
        self.lost = exc
        self.intake.closes.call(self._teardown)

    def _teardown(self) -> None:
        exc, self.lost = self.lost, None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
