"""The `binance` kind: trades and best bid/ask from Binance spot's public WebSocket streams.

One connection to the combined stream `<url>/stream?streams=<sym>@trade/<sym>@bookTicker/...`
(stream names in lower case; the feed's symbol is the exchange symbol in upper case, `BTCUSDT`).
Each event arrives wrapped as `{"stream": name, "data": event}`:
- `@trade` (`e`, `E`, `s`, `t`, `p`, `q`, `T`, `m`, `M`) is a trade: price `p`, size `q` x
  `size_scale`, `ts` = the trade time `T` (ms) in ns, applied once per trade id `t`;
- `@bookTicker` (`u`, `s`, `b`, `B`, `a`, `A`; it has no time) is a quote stamped when it is
  received, applied once per book update id `u`;
- `serverShutdown` (`{"e":"serverShutdown","E":...}`, bare, wrapped in a stream, or in an
  `"event"` object) makes a planned reconnect.

The limits Binance sets, and how they are kept: a connection lives 24 hours (the adapter
replaces it after `max_connection_age`, 23.5 h by default, before the cut-off); the server pings
every 20 s and wants a pong echoing the payload within a minute (aiohttp's client answers every
ping so, `autoping=True`); at most 5 incoming messages per second (the adapter sends no JSON
command at all, only those pongs and at most one ping of its own per `ping_interval` of
silence); at most 1,024 streams per connection (two per symbol: `binance.symbols` is refused
past 512 symbols).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from feed.config import Config, key, positive
from feed.sources.exchange import ExchangeSource
from feed.sources.mapping import (
    Invalid,
    Mapped,
    Signal,
    check_quote,
    check_section,
    integer,
    ms_to_ns,
    power_of_ten,
    preview,
    price,
    quote,
    short,
    size,
    symbol_list,
    text,
    trade,
    unparseable,
    websocket_url,
)
from feed.sources.registry import SourceKind, register

MAX_SYMBOLS: Final = 512
"""Binance carries at most 1,024 streams per connection, and each symbol takes two."""


@dataclass(frozen=True)
class BinanceConfig:
    url: str = key("wss://stream.binance.com:9443", websocket_url)
    symbols: tuple[str, ...] = key((), symbol_list(r"[A-Z0-9]{2,20}", "BTCUSDT", MAX_SYMBOLS))
    stale_after: float = key(5.0, positive)
    reconnect_min: float = key(1.0, positive)
    reconnect_max: float = key(60.0, positive)
    ping_interval: float = key(10.0, positive)
    max_connection_age: float = key(84600.0, positive)
    size_scale: int = key(100_000_000, power_of_ten)


def stream_names(symbols: Sequence[str]) -> list[str]:
    """The two streams of each symbol, as Binance names them (lower-case symbol)."""
    names = []
    for symbol in symbols:
        lower = symbol.lower()
        names += [f"{lower}@trade", f"{lower}@bookTicker"]
    return names


def combined_url(base: str, symbols: Sequence[str]) -> str:
    return f"{base.rstrip('/')}/stream?streams={'/'.join(stream_names(symbols))}"


# -- the mapping (pure) -----------------------------------------------------------------------


def parse(data: str | bytes, now_ns: int, scale: int) -> Mapped:
    """One text message of the combined stream, mapped (never raises)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return unparseable("not JSON")
    return map_message(obj, now_ns, scale)


def map_message(obj: Any, now_ns: int, scale: int) -> Mapped:
    """One decoded message, mapped (never raises): a trade, a quote, a shutdown notice, the
    answer to a command (ignored), an error; anything else is unparseable."""
    if not isinstance(obj, dict):
        return unparseable(f"expected a JSON object, got {type(obj).__name__}")
    stream: str | None = None
    if "stream" in obj or "data" in obj:
        stream, data = obj.get("stream"), obj.get("data")
        if not isinstance(stream, str) or not isinstance(data, dict):
            return unparseable("a stream event needs 'stream' (a string) and 'data' (an object)")
    else:
        data = obj["event"] if isinstance(obj.get("event"), dict) else obj
    event = data.get("e")
    if event == "serverShutdown":
        return Mapped(signal=Signal.SHUTDOWN, detail=f"serverShutdown, E={short(data.get('E'))}")
    if stream is None:
        if "result" in obj and "id" in obj:
            return Mapped(signal=Signal.IGNORED)
        if "code" in obj and "msg" in obj:
            return Mapped(
                signal=Signal.ERROR, detail=f"code {short(obj['code'])}: {short(obj['msg'], 200)}"
            )
        if event == "trade":
            return _trade(data, scale)
        if event is None and {"u", "s", "b", "a"} <= data.keys():
            return _book(data, now_ns, scale)
        return unparseable("neither a stream event nor a known message")
    name, _, kind = stream.partition("@")
    if kind == "trade":
        mapped = _trade(data, scale) if event == "trade" else _drop(data, f"event {short(event)}")
    elif kind == "bookTicker":
        mapped = _book(data, now_ns, scale)
    else:
        return unparseable(f"unknown stream {short(stream)}")
    for tick in mapped.ticks:
        if tick.symbol.lower() != name:
            return _drop(data, f"symbol {short(tick.symbol)} on stream {short(stream)}")
    return mapped


def _drop(data: dict[str, Any], reason: str) -> Mapped:
    return Mapped(drops=(f"{_symbol_of(data)}: {reason}",))


def _symbol_of(data: dict[str, Any]) -> str:
    symbol = data.get("s")
    return symbol if isinstance(symbol, str) and len(symbol) <= 20 else "?"


def _trade(data: dict[str, Any], scale: int) -> Mapped:
    try:
        tick = trade(
            text(data.get("s"), "s"),
            ms_to_ns(data.get("T"), "T"),
            price(data.get("p"), "p"),
            size(data.get("q"), "q", scale, 1),
            integer(data.get("t"), "t"),
        )
    except Invalid as exc:
        return _drop(data, f"trade dropped: {exc}")
    return Mapped(ticks=(tick,))


def _book(data: dict[str, Any], now_ns: int, scale: int) -> Mapped:
    try:
        symbol = text(data.get("s"), "s")
        update = integer(data.get("u"), "u")
        bid, ask = price(data.get("b"), "b"), price(data.get("a"), "a")
        bid_size, ask_size = size(data.get("B"), "B", scale, 0), size(data.get("A"), "A", scale, 0)
        check_quote(bid, ask)
    except Invalid as exc:
        return _drop(data, f"bookTicker dropped: {exc}")
    return Mapped(ticks=(quote(symbol, now_ns, bid, ask, bid_size, ask_size, update),))


# -- the source -------------------------------------------------------------------------------


class BinanceSource(ExchangeSource):
    kind = "binance"

    def __init__(self, settings: BinanceConfig) -> None:
        super().__init__(
            symbols=[name.upper() for name in settings.symbols],
            stale_after=settings.stale_after,
            reconnect_min=settings.reconnect_min,
            reconnect_max=settings.reconnect_max,
            ping_interval=settings.ping_interval,
            max_connection_age=settings.max_connection_age,
        )
        self.settings = settings

    def url(self) -> str:
        return combined_url(self.settings.url, self.names)

    def map(self, data: str, now_ns: int) -> Mapped:
        return parse(data, now_ns, self.settings.size_scale)

    def describe(self) -> str:
        return (
            f"binance: {len(self.names)} symbols ({preview(self.names)}) from "
            f"{self.settings.url}, sizes x{self.settings.size_scale}"
        )


def create(section: Any, config: Config) -> BinanceSource:
    settings: BinanceConfig = section
    check_section("binance", settings.symbols, settings.reconnect_min, settings.reconnect_max)
    return BinanceSource(settings)


KIND = register(SourceKind("binance", BinanceConfig, create))
