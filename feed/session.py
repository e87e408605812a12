"""The session: one connection's requests, sans I/O.

Text in, actions out, in the order the hub must carry them out: nothing here touches a socket,
the registry or the clock, so every rule of docs/protocol.md about requests (rate limit, symbols
and patterns, limits, options) is tested without one (tests/test_session.py), the way
`websockets` keeps its protocol apart from its I/O.

What a session keeps: the symbols its connection holds, each with its options, and the patterns
it subscribed to (symbols that appear later and match one are held too, `match_new`).
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from feed import protocol
from feed.config import LimitsConfig
from feed.protocol import CloseCode, ErrorCode, Ping, ProtocolError, Subscribe, Unsubscribe
from feed.ratelimit import TokenBucket
from feed.views import view_of
from feed.writer import DEFAULT, Options

MAX_PATTERNS = 32
"""Patterns one connection may hold."""

_EMPTY_HELD: dict[int, Options] = {}
_EMPTY_PATTERNS: dict[str, tuple[re.Pattern[str], Options]] = {}


@dataclass(frozen=True, slots=True)
class Send:
    message: bytes
    error: ErrorCode | None = None
    """The error code, when the message is an error (counted by the hub)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold `syms` with `options` (new ones and those held already, whose options change)."""

    syms: list[int]
    options: Options


@dataclass(frozen=True, slots=True)
class SendSnapshot:
    """The current state of `syms` in `options.view`, or wait conflated if the socket is full."""

    syms: list[int]
    options: Options


@dataclass(frozen=True, slots=True)
class TellStale:
    """The `stale` statuses of those of `syms` that are stale."""

    syms: list[int]


@dataclass(frozen=True, slots=True)
class Release:
    syms: list[int]


@dataclass(frozen=True, slots=True)
class Close:
    code: CloseCode
    reason: str


Action = Send | Hold | SendSnapshot | TellStale | Release | Close


@dataclass(slots=True)
class Session:
    lookup: Mapping[str, int]
    """Symbol name to index: what the market holds now."""
    names: Sequence[str]
    """Index to name."""
    limits: LimitsConfig
    bucket: TokenBucket
    clock: Callable[[], int] = time.time_ns
    """For pongs (the server's wall clock, which clients compare with theirs)."""
    entitled: Callable[[str], bool] | None = None
    """Whether this connection's token may read a symbol (None: every symbol)."""
    held: dict[int, Options] = field(default_factory=lambda: _EMPTY_HELD)
    """Every symbol this connection holds, with its options (a dict of its own from the first
    subscribe: until then a shared empty one, never written)."""
    patterns: dict[str, tuple[re.Pattern[str], Options]] = field(
        default_factory=lambda: _EMPTY_PATTERNS
    )
    """Patterns subscribed to (likewise shared and empty until the first)."""

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        """One text frame from the client; what to do about it, in order."""
        if not self.bucket.take(now):
            return [
                Close(
                    CloseCode.POLICY_VIOLATION,
                    f"more than {self.limits.control_rate:g} messages per second",
                )
            ]
        try:
            request = protocol.parse_request(data)
            if isinstance(request, Subscribe):
                return self._subscribe(request)
            if isinstance(request, Unsubscribe):
                return self._unsubscribe(request)
            assert isinstance(request, Ping)
            return [Send(protocol.pong(request.id, self.clock()))]
        except ProtocolError as exc:
            return [Send(protocol.error(exc.code, exc.message, exc.request_id), exc.code)]

    def _options(self, request: Subscribe) -> Options:
        return Options(request.throttle_ms / 1000, view_of(request.fields))

    def _resolve(self, names: Sequence[str], request_id: protocol.RequestId) -> list[int]:
        index = self.lookup
        unknown = [name for name in names if name not in index]
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            shown = ", ".join(unknown[:10]) + more
            raise ProtocolError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol(s): {shown}", request_id)
        return [index[name] for name in names]

    def _split(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """Exact names and patterns (a name the market holds is that symbol, whatever it is)."""
        index = self.lookup
        exact = [name for name in names if name in index or not is_pattern(name)]
        patterns = [name for name in names if name not in index and is_pattern(name)]
        return exact, patterns

    def _subscribe(self, request: Subscribe) -> list[Action]:
        options = self._options(request)
        exact, patterns = self._split(request.symbols)
        syms = self._resolve(exact, request.id)
        entitled = self.entitled
        if entitled is not None:
            refused = [name for name in exact if not entitled(name)]
            if refused:
                more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
                raise ProtocolError(
                    ErrorCode.NOT_ENTITLED,
                    f"not entitled to read: {', '.join(refused[:10])}{more}",
                    request.id,
                )
        new_patterns = [p for p in patterns if p not in self.patterns]
        if len(self.patterns) + len(new_patterns) > MAX_PATTERNS:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SYMBOLS,
                f"this would hold {len(self.patterns) + len(new_patterns)} patterns; the limit "
                f"is {MAX_PATTERNS} per connection",
                request.id,
            )
        compiled = {p: re.compile(fnmatch.translate(p)) for p in patterns}
        matched: list[int] = []
        if compiled:
            seen = set(syms)
            for sym, name in enumerate(self.names):
                if sym in seen or (entitled is not None and not entitled(name)):
                    continue  # a pattern matches within the entitlements only
                if any(rx.match(name) for rx in compiled.values()):
                    matched.append(sym)
                    seen.add(sym)
        wanted = syms + matched
        after = len(self.held) + sum(1 for sym in wanted if sym not in self.held)
        limit = self.limits.max_symbols_per_connection
        if after > limit:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SYMBOLS,
                f"this would hold {after} symbols; the limit is {limit} per connection",
                request.id,
            )
        if compiled and self.patterns is _EMPTY_PATTERNS:
            self.patterns = {}
        for pattern, rx in compiled.items():
            self.patterns[pattern] = (rx, options)
        if self.held is _EMPTY_HELD:
            self.held = {}
        for sym in wanted:
            self.held[sym] = options
        reply = protocol.subscribed(request.id, request.symbols)
        if patterns:
            names = self.names
            reply = reply[:-1] + b',"matched":' + _names_json([names[s] for s in matched]) + b"}"
        return [
            Send(reply),
            Hold(wanted, options),
            SendSnapshot(wanted, options),
            TellStale(wanted),
        ]

    def _unsubscribe(self, request: Unsubscribe) -> list[Action]:
        exact, patterns = self._split(request.symbols)
        syms = self._resolve(exact, request.id)
        for pattern in patterns:
            if pattern in self.patterns:
                del self.patterns[pattern]
        if patterns:
            rxs = [re.compile(fnmatch.translate(p)) for p in patterns]
            names = self.names
            syms += [s for s in self.held if any(rx.match(names[s]) for rx in rxs)]
        removed = [sym for sym in dict.fromkeys(syms) if self.held.pop(sym, None) is not None]
        names = self.names
        return [
            Release(removed),
            Send(protocol.unsubscribed(request.id, [names[sym] for sym in removed])),
        ]

    def match_new(self, sym: int) -> Options | None:
        """A symbol new to the market: the options to hold it with, if a pattern of this
        session matches it (and the connection's limit leaves room)."""
        if not self.patterns or sym in self.held:
            return None
        if len(self.held) >= self.limits.max_symbols_per_connection:
            return None
        name = self.names[sym]
        if self.entitled is not None and not self.entitled(name):
            return None
        for rx, options in self.patterns.values():
            if rx.match(name):
                self.held[sym] = options
                return options
        return None


def is_pattern(name: str) -> bool:
    """Whether a subscribe names a pattern (`*`, `?` or `[...]`, as in shell globs)."""
    return "*" in name or "?" in name or "[" in name


def _names_json(names: list[str]) -> bytes:
    import orjson

    return orjson.dumps(names)


__all__ = ["DEFAULT", "Action", "Session"]
