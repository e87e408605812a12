"""What the exchange adapters map, and the checks of what they map and of their config.

A mapping is a pure function from one upstream message to a `Mapped`: the ticks it carries (with
the exchange's names and units already converted: prices as floats, sizes as integers, `ts` in
ns), what was dropped and why, and a `Signal` for the messages that are about the connection
rather than the market. It never raises, whatever the message holds: the checks here raise
`Invalid`, which the mapping turns into a drop reason.
"""

from __future__ import annotations

import decimal
import enum
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from feed.ticks import QUOTE, TRADE

INT64_MAX: Final = 2**63 - 1


# -- what a mapping returns -------------------------------------------------------------------


class Tick(NamedTuple):
    """One trade or quote as an adapter maps it: exchange symbol name, feed units."""

    kind: int
    """`feed.ticks.TRADE` or `feed.ticks.QUOTE`."""
    symbol: str
    ts: int
    """ns since the epoch."""
    price: float
    size: int
    bid: float
    ask: float
    bid_size: int
    ask_size: int
    id: int | None
    """The upstream's increasing id of this trade or quote per symbol (trade id, book update
    id, sequence), used to apply a tick that two connections deliver once; None: no check."""


def trade(symbol: str, ts: int, price: float, size: int, id: int | None = None) -> Tick:
    return Tick(TRADE, symbol, ts, price, size, math.nan, math.nan, 0, 0, id)


def quote(
    symbol: str,
    ts: int,
    bid: float,
    ask: float,
    bid_size: int,
    ask_size: int,
    id: int | None = None,
) -> Tick:
    return Tick(QUOTE, symbol, ts, math.nan, 0, bid, ask, bid_size, ask_size, id)


class Signal(enum.Enum):
    """What a message says about the connection rather than the market."""

    ALIVE = "alive"
    """A sign of life without ticks (a heartbeat): the upstream is there, the market quiet."""
    SHUTDOWN = "shutdown"
    """The upstream will close this connection soon: reconnect now (planned)."""
    SUBSCRIBED = "subscribed"
    """The subscription was acknowledged."""
    ERROR = "error"
    """The upstream reported an error (`detail` says what)."""
    IGNORED = "ignored"
    """A known message of no use to the feed."""


@dataclass(frozen=True, slots=True)
class Mapped:
    """One upstream message, mapped."""

    ticks: tuple[Tick, ...] = ()
    """The good ticks, in message order."""
    drops: tuple[str, ...] = ()
    """One reason per tick of the message that failed a check and is not applied."""
    unparseable: str | None = None
    """Why the message could not be read at all (not JSON, an unknown shape); else None."""
    signal: Signal | None = None
    detail: str | None = None
    """Words for the log with SHUTDOWN, SUBSCRIBED and ERROR."""


def unparseable(reason: str) -> Mapped:
    return Mapped(unparseable=reason)


# -- checks of mapped values ------------------------------------------------------------------


class Invalid(ValueError):
    """A value failed its check; str() names the field, the rule and the value."""


_DECIMAL: Final = re.compile(r"-?[0-9]{1,40}(?:\.[0-9]{1,40})?(?:[eE][-+]?[0-9]{1,4})?", re.ASCII)
_ISO_TIME: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|\+00:00)",
    re.ASCII,
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CONTEXT: Final = decimal.Context(
    prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation, decimal.Overflow]
)


def short(value: Any, limit: int = 40) -> str:
    """`value` as JSON-ish text for a reason, at most `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decimal_text(value: Any, name: str) -> str:
    if isinstance(value, str):
        if _DECIMAL.fullmatch(value) is None:
            raise Invalid(f"{name} must be a decimal number, got {short(value)}")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    raise Invalid(f"{name} must be a decimal number, got {short(value)}")


def price(value: Any, name: str) -> float:
    """A price: a decimal string (or a JSON number) greater than 0 and finite."""
    number = float(_decimal_text(value, name))
    if not (number > 0 and math.isfinite(number)):
        raise Invalid(f"{name} must be a finite number > 0, got {short(value)}")
    return number


def size(value: Any, name: str, scale: int, minimum: int) -> int:
    """A quantity in the feed's integer units: `value` x `scale`, exactly (decimal arithmetic,
    no float), rounded half to even; at least `minimum` and at most 2**63 - 1."""
    text = _decimal_text(value, name)
    try:
        scaled = _CONTEXT.multiply(_CONTEXT.create_decimal(text), scale)
        units = int(scaled.to_integral_value(context=_CONTEXT))
    except (ArithmeticError, ValueError):
        raise Invalid(f"{name} is out of range, got {short(value)}") from None
    if units < minimum:
        if units >= 0 and float(text) > 0:
            raise Invalid(f"{name} rounds to 0 at size_scale {scale}, got {short(value)}")
        raise Invalid(f"{name} must be >= {minimum / scale:g}, got {short(value)}")
    if units > INT64_MAX:
        raise Invalid(f"{name} is too large at size_scale {scale}, got {short(value)}")
    return units


def integer(value: Any, name: str, low: int = 0, high: int = INT64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"{name} must be an integer from {low} to {high}, got {short(value)}")
    return value


def ms_to_ns(value: Any, name: str) -> int:
    """An exchange time in ms since the epoch, in ns."""
    return integer(value, name, 1, INT64_MAX // 1_000_000) * 1_000_000


def iso_to_ns(value: Any, name: str) -> int:
    """An ISO-8601 UTC time with up to 9 fractional digits (`2024-05-01T12:00:00.123456Z`), in
    ns since the epoch, exactly."""
    match = _ISO_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise Invalid(f"{name} must be an ISO-8601 UTC time, got {short(value)}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise Invalid(f"{name} is not a valid time, got {short(value)}") from None
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    ns = seconds * 1_000_000_000 + int((match.group(7) or "").ljust(9, "0"))
    if not 1 <= ns <= INT64_MAX:
        raise Invalid(f"{name} is out of range, got {short(value)}")
    return ns


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{name} must be a non-empty string, got {short(value)}")
    return value


def check_quote(bid: float, ask: float) -> None:
    if bid > ask:
        raise Invalid(f"crossed quote: bid {bid:g} > ask {ask:g}")


# -- config checks shared by the adapters' sections -------------------------------------------


def websocket_url(value: Any) -> str | None:
    if not isinstance(value, str) or not re.fullmatch(r"wss?://[^\s/?#]+(/[^\s?#]*)?", value):
        return "must be a ws:// or wss:// URL with a host (no query)"
    return None


def power_of_ten(value: Any) -> str | None:
    if value in {10**k for k in range(19)}:
        return None
    return "must be a power of ten from 1 to 10**18 (1, 10, 100, ..., 100000000)"


def symbol_list(pattern: str, example: str, most: int | None = None) -> Callable[[Any], str | None]:
    """A check of a `symbols` key: names matching `pattern` (any case: they are upper-cased),
    no name twice, at most `most`."""
    compiled = re.compile(pattern, re.ASCII)

    def check(value: Any) -> str | None:
        bad = [name for name in value if not compiled.fullmatch(name.upper())]
        if bad:
            return f"must list exchange symbols like {example}; bad: {', '.join(map(repr, bad))}"
        upper = [name.upper() for name in value]
        twice = sorted({name for name in upper if upper.count(name) > 1})
        if twice:
            return f"lists {', '.join(twice)} twice"
        if most is not None and len(value) > most:
            return f"lists {len(value)} symbols; at most {most} are allowed"
        return None

    return check


def check_section(
    kind: str, symbols: Sequence[str], reconnect_min: float, reconnect_max: float
) -> None:
    """The checks of an adapter's section that only hold when the kind runs (it is listed in
    `source.kinds`): raises ConfigError naming the key."""
    from feed.config import ConfigError

    if not symbols:
        raise ConfigError(
            f"config key '{kind}.symbols' must list at least one symbol when source.kinds "
            f"lists {kind}, got []"
        )
    if reconnect_max < reconnect_min:
        raise ConfigError(
            f"config key '{kind}.reconnect_max' must be >= {kind}.reconnect_min "
            f"({reconnect_min:g}), got {reconnect_max:g}"
        )


def preview(names: Sequence[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
