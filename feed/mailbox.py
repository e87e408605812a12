"""The mailbox: which symbols one connection still has to be sent, conflated per symbol.

This is the backpressure boundary of a connection. It names symbols, not payloads: what is sent
is the market's newest snapshot of each when the socket can take more, so a newer snapshot
replaces a pending one for free (conflation) and the size is bounded by the number of symbols
subscribed, whatever the client does. Since every snapshot is full, replacing loses no state.
"""

from __future__ import annotations

from collections.abc import Iterable


class Mailbox(dict[int, None]):
    """Pending symbols in the order each first became pending.

    A dict underneath, so that the fan-out's inner loop (a membership test and an insert per
    subscriber per changed symbol) runs in C; `put` is the same thing spelled out.
    """

    __slots__ = ("conflated", "delivered")

    def __init__(self) -> None:
        super().__init__()
        self.conflated = 0
        """Snapshots replaced by a newer one before they were sent."""
        self.delivered = 0
        """Snapshots taken for sending."""

    def put(self, sym: int) -> None:
        """`sym` has a new snapshot to send; if one was pending, the newer replaces it."""
        if sym in self:
            self.conflated += 1
        else:
            self[sym] = None

    def discard(self, syms: Iterable[int]) -> None:
        """Forget what is pending for `syms` (they were unsubscribed or sent by other means)."""
        for sym in syms:
            self.pop(sym, None)

    def take(self) -> list[int]:
        """Every pending symbol, emptying the mailbox."""
        syms = list(self)
        self.clear()
        self.delivered += len(syms)
        return syms
