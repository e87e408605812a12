"""The values `feed.client` hands out: snapshots, statuses, connection states, refusals, its
figures and its error. Plain frozen dataclasses, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class FeedError(Exception):
    """A request refused by the feed, with its error code (`unknown_symbol`,
    `too_many_symbols`, `bad_symbols`, ... as in docs/protocol.md), or one of the client's own
    codes: `cannot_connect` (the first connection failed) and `closed` (the client was closed
    before the answer came)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The full state of one symbol (docs/protocol.md, Snapshots); None: not known yet."""

    symbol: str
    seq: int
    """Ticks folded for this symbol so far, strictly increasing."""
    ts: int
    """ns since the epoch of the newest tick, on the clock of whoever stamped it (0: none)."""
    last: float | None
    last_size: int | None
    bid: float | None
    ask: float | None
    bid_size: int | None
    ask_size: int | None
    open: float | None
    high: float | None
    low: float | None
    volume: int
    vwap: float | None
    trades: int
    epoch: int = 0
    """When the feed's state of this symbol began (ms since the Unix epoch): `seq` counts within
    one epoch, and a newer epoch means the feed's state was lost and `seq` started again."""

    @classmethod
    def from_wire(cls, item: Mapping[str, Any]) -> Snapshot:
        """A snapshot from its JSON object (fields this version does not know are ignored)."""
        get = item.get
        return cls(
            item["symbol"], item["seq"], item["ts"], get("last"), get("last_size"), get("bid"),
            get("ask"), get("bid_size"), get("ask_size"), get("open"), get("high"), get("low"),
            get("volume", 0), get("vwap"), get("trades", 0), get("epoch", 0),
        )  # fmt: skip

    @property
    def spread(self) -> float | None:
        """ask - bid, once quoted."""
        return None if self.bid is None or self.ask is None else self.ask - self.bid

    @property
    def change(self) -> float | None:
        """last - open, once traded."""
        return None if self.last is None or self.open is None else self.last - self.open


class SymbolState(StrEnum):
    """Whether a symbol's data is still coming (docs/protocol.md, status)."""

    STALE = "stale"
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class Status:
    """Some symbols turned stale (with the feed's reason, for a person) or live again."""

    state: SymbolState
    symbols: tuple[str, ...]
    reason: str | None = None


class State(StrEnum):
    """The client's connection: what `feed.state.state` says."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    """Lost; `retry_in` seconds until the next attempt."""
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A change of the connection, with why and what comes next."""

    state: State
    url: str
    connects: int
    """Connections made so far (2 after the first reconnect)."""
    reason: str | None = None
    """Why the connection was lost (kept until the next connection, or the first failure)."""
    error: str | None = None
    """Why the last attempt to connect failed (DISCONNECTED, CONNECTING)."""
    retry_in: float | None = None
    """Seconds until the next attempt (DISCONNECTED only)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Symbols held that the feed refused to subscribe again on a new connection (`code`
    `unknown_symbol`: a restarted feed whose symbols come from producers that have not ticked
    yet, or a symbol gone for good), set aside so that the others flow. They stay held
    (`feed.symbols`) and are asked for again on every later connection and when subscribed
    again; each is back with its next snapshot. `symbols` are all those set aside now."""

    symbols: tuple[str, ...]
    code: str
    message: str
    """The feed's error message, for a person (it names at most 10 symbols)."""


Event = Snapshot | Status | ConnectionState | Refused


@dataclass(frozen=True, slots=True)
class SymbolStats:
    """What this client saw of one symbol, over every connection."""

    received: int
    """Snapshots received (older or repeated ones, dropped, not counted)."""
    conflated: int
    """Ticks the feed folded that never arrived as a snapshot of their own (seq jumps)."""
    superseded: int
    """Snapshots replaced in this client's inbox by a newer one before the consumer took them."""
    latency: float | None
    """Seconds from the newest update's `ts` to its receipt, corrected by the clock offset as
    estimated now (on one host it may read slightly negative: the estimate is within half the
    round trip of its sample)."""
    latency_mean: float | None
    latency_max: float | None


@dataclass(frozen=True, slots=True)
class Clock:
    """The feed's clock against this host's, from the best recent `ping`/`pong`."""

    offset: float
    """Seconds to add to this host's time to get the feed's."""
    rtt: float
    """Round trip of the sample the offset comes from, in seconds."""
