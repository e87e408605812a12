"""The mailbox: what one connection still has to be sent, conflated per symbol.

This is the backpressure boundary of a connection. It holds at most one payload per symbol:
a newer snapshot replaces the pending one (conflation), so its size is bounded by the number of
symbols subscribed, whatever the client does. Since every payload is a full snapshot, replacing
loses no state: the next drain carries the newest values.
"""

from __future__ import annotations

from collections.abc import Iterable


class Mailbox:
    """Pending payloads keyed by symbol, in the order each symbol first became pending."""

    __slots__ = ("_pending", "conflated", "delivered")

    def __init__(self) -> None:
        self._pending: dict[int, bytes] = {}
        self.conflated = 0
        """Payloads replaced by a newer one before they were sent."""
        self.delivered = 0
        """Payloads taken for sending."""

    def put(self, sym: int, payload: bytes) -> None:
        """Make `payload` the one to send for `sym`, replacing any pending one."""
        pending = self._pending
        if sym in pending:
            self.conflated += 1
        pending[sym] = payload

    def discard(self, syms: Iterable[int]) -> None:
        """Forget what is pending for `syms` (they were unsubscribed or sent by other means)."""
        pending = self._pending
        for sym in syms:
            pending.pop(sym, None)

    def take(self) -> list[bytes]:
        """Everything pending, emptying the mailbox."""
        payloads = list(self._pending.values())
        self._pending.clear()
        self.delivered += len(payloads)
        return payloads

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)
