"""Work spread over turns of the event loop, so that a burst never holds it for long.

A storm of reconnections puts thousands of handshakes (and then their subscriptions) in the
loop's ready queue at once; each is short, but together they would run back to back for a
second or more while pings, requests and the fan-out of every other client wait behind them.
`PerTurn` admits a few per turn of the loop and lets the rest wait, in order, for the next
turns; between two turns the loop polls its sockets as usual.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

Turn = asyncio.Future[None] | Callable[[], Any]
"""An awaiting caller's future, or a call left for a later turn (kept as it is: nothing is
allocated to hold it)."""


class PerTurn:
    """At most `limit` admissions per turn of the loop; the rest wait in order.

    Two lines, each with `limit` a turn: `ahead` for connections already served (the client
    that was there before a storm of reconnections), so that they keep their pace while 10,000
    newcomers' first requests wait their turn in `waiting`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0
        """Admitted in this turn."""
        self.admitted_ahead = 0
        """Admitted in this turn from the `ahead` line, which has a limit of its own."""
        self.waiting: deque[Turn] = deque()
        """Futures of awaiting callers, and calls left for a later turn, in order."""
        self.ahead: deque[Turn] = deque()
        """The same, let in before any of `waiting`."""
        self.deferred = 0
        """Admissions that had to wait for a later turn, so far."""
        self.taken = 0
        """Admissions so far."""
        self._scheduled = False

    def enter(self, ahead: bool = False) -> bool:
        """Admit now if this turn has room and nobody waits (no await: the common case)."""
        if self._room(ahead):
            self._take(ahead)
            return True
        return False

    async def admit(self, ahead: bool = False) -> None:
        """Return at once if this turn has room, or else on a later turn, first come first
        admitted in its line (`ahead`: that of connections already served). A caller cancelled
        while waiting simply leaves the queue."""
        if self._room(ahead):
            self._take(ahead)
            return
        turn = asyncio.get_running_loop().create_future()
        self._defer(turn, ahead)
        await turn

    def call(self, callback: Callable[[], Any], ahead: bool = False) -> None:
        """Call `callback()` now if this turn has room and nobody waits, or else on a
        later turn, in order with those waiting (a protocol's callbacks, which cannot await)."""
        if self._room(ahead):
            self._take(ahead)
            callback()
            return
        self._defer(callback, ahead)

    @property
    def queued(self) -> int:
        """Admissions waiting for a later turn, in either line."""
        return len(self.waiting) + len(self.ahead)

    def _line(self, ahead: bool) -> deque[Turn]:
        return self.ahead if ahead else self.waiting

    def _room(self, ahead: bool) -> bool:
        """Room in this turn for one more of this line, and nobody of it waiting."""
        return self._room_left(ahead) and not self._line(ahead)

    def _room_left(self, ahead: bool) -> bool:
        return (self.admitted_ahead if ahead else self.admitted) < self.limit

    def _count(self, ahead: bool) -> None:
        if ahead:
            self.admitted_ahead += 1
        else:
            self.admitted += 1
        self.taken += 1

    def _take(self, ahead: bool) -> None:
        self._count(ahead)
        self._schedule()

    def _defer(self, turn: Turn, ahead: bool) -> None:
        self._line(ahead).append(turn)
        self.deferred += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """A new turn: room for `limit` more in each line, given first to those waiting."""
        self._scheduled = False
        self.admitted = self.admitted_ahead = 0
        for line, ahead in ((self.ahead, True), (self.waiting, False)):
            while line and self._room_left(ahead):
                turn = line.popleft()
                if isinstance(turn, asyncio.Future):
                    if not turn.done():  # not cancelled meanwhile
                        turn.set_result(None)
                        self._count(ahead)
                else:
                    self._count(ahead)
                    turn()
        if self.admitted or self.admitted_ahead:
            self._schedule()
