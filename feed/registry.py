"""The subscription registry: who listens to which symbol, both ways round.

Pure bookkeeping, generic over the subscriber type, so the hub can fan a symbol out without
scanning connections and drop a closed connection without scanning symbols.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)


class SubscriptionRegistry(Generic[S]):
    def __init__(self) -> None:
        self._by_symbol: dict[int, dict[S, None]] = {}
        self._by_subscriber: dict[S, dict[int, None]] = {}
        self.on_hold: Callable[[list[int], list[int]], None] | None = None
        """Told (held, released): the symbols that gained their first subscriber and those
        that lost their last one (a gateway following only what its clients hold)."""

    def subscribe(self, subscriber: S, symbols: Iterable[int]) -> list[int]:
        """Add symbols for a subscriber; return those that were new to it, in the order given."""
        mine = self._by_subscriber.setdefault(subscriber, {})
        added: list[int] = []
        by_symbol = self._by_symbol
        first: list[int] = []
        for sym in symbols:
            if sym in mine:
                continue
            mine[sym] = None
            listeners = by_symbol.get(sym)
            if listeners is None:
                listeners = by_symbol[sym] = {}
                first.append(sym)
            listeners[subscriber] = None
            added.append(sym)
        if first and self.on_hold is not None:
            self.on_hold(first, [])
        return added

    def unsubscribe(self, subscriber: S, symbols: Iterable[int]) -> list[int]:
        """Remove symbols for a subscriber; return those it actually had."""
        mine = self._by_subscriber.get(subscriber)
        if mine is None:
            return []
        removed: list[int] = []
        last: list[int] = []
        for sym in symbols:
            if sym in mine:
                del mine[sym]
                removed.append(sym)
                listeners = self._by_symbol[sym]
                del listeners[subscriber]
                if not listeners:
                    del self._by_symbol[sym]
                    last.append(sym)
        if last and self.on_hold is not None:
            self.on_hold([], last)
        return removed

    def remove(self, subscriber: S) -> None:
        """Forget a subscriber entirely (its connection closed)."""
        mine = self._by_subscriber.pop(subscriber, None)
        if mine is None:
            return
        last: list[int] = []
        for sym in mine:
            listeners = self._by_symbol[sym]
            del listeners[subscriber]
            if not listeners:
                del self._by_symbol[sym]
                last.append(sym)
        if last and self.on_hold is not None:
            self.on_hold([], last)

    def subscribers(self, sym: int) -> Iterable[S]:
        """Who listens to `sym` (a live view: do not change the registry while iterating)."""
        return self._by_symbol.get(sym, ())

    def symbols_of(self, subscriber: S) -> list[int]:
        return list(self._by_subscriber.get(subscriber, ()))

    def held(self) -> list[int]:
        """Every symbol with at least one subscriber."""
        return list(self._by_symbol)

    def sizes(self) -> tuple[int, int]:
        """(symbols with at least one subscriber, subscriptions in all), summed in C: what
        `/metrics` reads, without a loop over subscribers in Python."""
        return len(self._by_symbol), sum(map(len, self._by_subscriber.values()))

    def holds(self, subscriber: S, sym: int) -> bool:
        return sym in self._by_subscriber.get(subscriber, ())

    def count(self, subscriber: S) -> int:
        return len(self._by_subscriber.get(subscriber, ()))

    def __contains__(self, subscriber: object) -> bool:
        return subscriber in self._by_subscriber

    def __len__(self) -> int:
        """Number of subscribers."""
        return len(self._by_subscriber)
