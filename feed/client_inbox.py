"""The client's inbox: what waits for the consumer of `feed.client`, bounded by the symbols held.

Pure (no I/O): each key holds only its newest event, so a consumer slower than the feed finds the
newest state of every symbol instead of a backlog, as a connection's mailbox does on the server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from feed.client_values import Event, Status


class Inbox:
    """What waits for the consumer, keyed so that each key holds only its newest event: a
    symbol's snapshot, a status (a newer status of a symbol takes it out of older ones), the
    refusal, the connection state. In the order of the newest change of each key."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, Any], Event] = OrderedDict()
        self._statuses: set[tuple[str, Any]] = set()
        self._counter = itertools.count()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: tuple[str, Any], event: Event) -> bool:
        """Add `event`, replacing the one under the same key; True when it replaced one."""
        items = self._items
        replaced = key in items
        items[key] = event
        if replaced:
            items.move_to_end(key)
        self._ready.set()
        return replaced

    def put_status(self, status: Status) -> None:
        names = set(status.symbols)
        for key in list(self._statuses):
            old = self._items[key]
            assert isinstance(old, Status)
            rest = tuple(name for name in old.symbols if name not in names)
            if not rest:
                del self._items[key]
                self._statuses.discard(key)
            elif len(rest) < len(old.symbols):
                self._items[key] = replace(old, symbols=rest)
        key = ("status", next(self._counter))
        self._statuses.add(key)
        self.put(key, status)

    def discard(self, key: tuple[str, Any]) -> None:
        self._items.pop(key, None)

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> Event | None:
        """The oldest event waiting; None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        key, event = self._items.popitem(last=False)
        self._statuses.discard(key)
        return event
