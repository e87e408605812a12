"""Views: the fields a subscription asked for, and the frames that carry them.

Framing, apart from the market's state. A view is a set of snapshot fields (`symbol`, `seq`, `ts`
and `epoch` always among them: a client orders snapshots by (`epoch`, `seq`)); the full view is
`None`. Each symbol's payload in a view is encoded once per change of the symbol and shared by
every subscription with the same view, as full snapshots are: the cache keeps, per view and
symbol, the full payload it was cut from, and is stale the moment the market holds another.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from feed import protocol
from feed.coalescer import SNAPSHOT_FIELDS
from feed.market import Market

ALWAYS = ("symbol", "seq", "ts", "epoch")
"""Fields every view carries."""


@dataclass(frozen=True, slots=True)
class View:
    fields: tuple[str, ...]
    """In wire order."""


def view_of(fields: Iterable[str] | None) -> View | None:
    """The view of `fields` (with the fields every view carries); None for every field."""
    if fields is None:
        return None
    wanted = set(fields) | set(ALWAYS)
    if wanted >= set(SNAPSHOT_FIELDS):
        return None
    return View(tuple(name for name in SNAPSHOT_FIELDS if name in wanted))


class Frames:
    """What a writer sends, by view: the full view straight from the market (its frames are
    built once per change), any other cut from the full payload once per change."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.symbol_frame = market.symbol_frame
        """The update frame of one symbol, full view (bound: the fan-out's fast path)."""
        self.update_frame = market.update_frame
        """The update frame of several symbols, full view."""
        self._cache: dict[View, dict[int, tuple[bytes, bytes, bytes | None]]] = {}
        self.encoded = 0
        """Payloads cut for a view (one per symbol per change per view in use)."""

    def payload(self, sym: int, view: View | None) -> bytes:
        full = self.market.payload(sym)
        if view is None:
            return full
        cache = self._cache.get(view)
        if cache is None:
            cache = self._cache[view] = {}
        hit = cache.get(sym)
        if hit is not None and hit[0] is full:
            return hit[1]
        snapshot = orjson.loads(full)
        body = orjson.dumps({name: snapshot.get(name) for name in view.fields})
        cache[sym] = (full, body, None)
        self.encoded += 1
        return body

    def view_frame(self, sym: int, view: View | None) -> bytes:
        """The update frame of one symbol in `view`, built once per change."""
        if view is None:
            return self.symbol_frame(sym)
        body = self.payload(sym, view)
        entry = self._cache[view][sym]
        frame = entry[2]
        if frame is None:
            frame = protocol.text_frame(protocol.update_frame([body]))
            self._cache[view][sym] = (entry[0], body, frame)
        return frame

    def frame(self, items: list[tuple[int, View | None]]) -> bytes:
        """One update frame carrying each (symbol, view)."""
        if len(items) == 1:
            return self.view_frame(*items[0])
        payload = self.payload
        return protocol.text_frame(protocol.update_frame([payload(s, v) for s, v in items]))

    def snapshot(self, items: list[tuple[int, View | None]]) -> bytes:
        """The `snapshot` message answering a subscribe."""
        payload = self.payload
        return protocol.snapshot_frame([payload(s, v) for s, v in items])
