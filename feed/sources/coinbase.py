"""The `coinbase` kind: trades and best bid/ask from the Coinbase Exchange WebSocket feed.

Right after connecting (Coinbase closes a connection that has not subscribed within 5 s) the
adapter sends `{"type":"subscribe","product_ids":[...],"channels":["ticker","heartbeat"]}`;
symbols are product ids (`BTC-USD`). Messages:
- `ticker` is sent for every match, so each one is a trade and a quote: the trade (`price`,
  `last_size` x `size_scale`, `ts` = `time`, applied once per `trade_id`) and the book's top
  after it (`best_bid`, `best_ask`, `best_bid_size`, `best_ask_size`, same `ts`, applied once
  per `sequence`), in that order. A half that fails a check is dropped and the other applied;
- `heartbeat` (one a second per product) is a sign of life, not a tick: it keeps a quiet product
  live and tells it from a dead connection;
- `subscriptions` acknowledges the subscription (logged);
- `error` is logged and counted; before the acknowledgement it means the subscription was
  refused, and the adapter drops the connection and tries again after a backoff delay;
- any other type is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from feed.config import Config, key, positive
from feed.sources.exchange import ExchangeSource
from feed.sources.mapping import (
    Invalid,
    Mapped,
    Signal,
    Tick,
    check_quote,
    check_section,
    integer,
    iso_to_ns,
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

CHANNELS = ("ticker", "heartbeat")


@dataclass(frozen=True)
class CoinbaseConfig:
    url: str = key("wss://ws-feed.exchange.coinbase.com", websocket_url)
    symbols: tuple[str, ...] = key((), symbol_list(r"[A-Z0-9]{1,12}-[A-Z0-9]{1,12}", "BTC-USD"))
    stale_after: float = key(3.0, positive)
    reconnect_min: float = key(1.0, positive)
    reconnect_max: float = key(60.0, positive)
    ping_interval: float = key(10.0, positive)
    size_scale: int = key(100_000_000, power_of_ten)


def subscribe_message(products: list[str]) -> str:
    message = {"type": "subscribe", "product_ids": products, "channels": list(CHANNELS)}
    return orjson.dumps(message).decode()


# -- the mapping (pure) -----------------------------------------------------------------------


def parse(data: str | bytes, scale: int) -> Mapped:
    """One text message of the feed, mapped (never raises)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return unparseable("not JSON")
    return map_message(obj, scale)


def map_message(obj: Any, scale: int) -> Mapped:
    """One decoded message, mapped (never raises)."""
    if not isinstance(obj, dict):
        return unparseable(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return unparseable("a message needs a 'type' string")
    if kind == "ticker":
        return _ticker(obj, scale)
    if kind == "heartbeat":
        return Mapped(signal=Signal.ALIVE)
    if kind == "subscriptions":
        return Mapped(signal=Signal.SUBSCRIBED, detail=_channels(obj.get("channels")))
    if kind == "error":
        message, reason = obj.get("message"), obj.get("reason")
        detail = short(message, 200) if isinstance(message, str) else "error"
        if isinstance(reason, str):
            detail = f"{detail}: {short(reason, 200)}"
        return Mapped(signal=Signal.ERROR, detail=detail)
    return Mapped(signal=Signal.IGNORED)


def _channels(channels: Any) -> str:
    if not isinstance(channels, list):
        return "no channel list"
    parts = []
    for channel in channels:
        if isinstance(channel, dict):
            products = channel.get("product_ids")
            names = products if isinstance(products, list) else []
            shown = ", ".join(short(p) if not isinstance(p, str) else p for p in names[:10])
            parts.append(f"{short(channel.get('name'))}: {shown}")
    return "; ".join(parts) or "no channel"


def _ticker(obj: dict[str, Any], scale: int) -> Mapped:
    product = obj.get("product_id")
    where = product if isinstance(product, str) and len(product) <= 25 else "?"
    try:
        symbol = text(product, "product_id")
        ts = iso_to_ns(obj.get("time"), "time")
    except Invalid as exc:
        return Mapped(drops=(f"{where}: ticker trade dropped: {exc}",
                             f"{where}: ticker quote dropped: {exc}"))  # fmt: skip
    ticks: list[Tick] = []
    drops: list[str] = []
    try:
        ticks.append(
            trade(
                symbol,
                ts,
                price(obj.get("price"), "price"),
                size(obj.get("last_size"), "last_size", scale, 1),
                integer(obj.get("trade_id"), "trade_id"),
            )
        )
    except Invalid as exc:
        drops.append(f"{where}: ticker trade dropped: {exc}")
    try:
        bid, ask = price(obj.get("best_bid"), "best_bid"), price(obj.get("best_ask"), "best_ask")
        bid_size = size(obj.get("best_bid_size"), "best_bid_size", scale, 0)
        ask_size = size(obj.get("best_ask_size"), "best_ask_size", scale, 0)
        check_quote(bid, ask)
        sequence = integer(obj.get("sequence"), "sequence")
        ticks.append(quote(symbol, ts, bid, ask, bid_size, ask_size, sequence))
    except Invalid as exc:
        drops.append(f"{where}: ticker quote dropped: {exc}")
    return Mapped(ticks=tuple(ticks), drops=tuple(drops))


# -- the source -------------------------------------------------------------------------------


class CoinbaseSource(ExchangeSource):
    kind = "coinbase"

    def __init__(self, settings: CoinbaseConfig) -> None:
        super().__init__(
            symbols=[name.upper() for name in settings.symbols],
            stale_after=settings.stale_after,
            reconnect_min=settings.reconnect_min,
            reconnect_max=settings.reconnect_max,
            ping_interval=settings.ping_interval,
        )
        self.settings = settings

    def url(self) -> str:
        return self.settings.url

    def subscribe_messages(self) -> list[str]:
        return [subscribe_message(self.names)]

    def map(self, data: str, now_ns: int) -> Mapped:
        return parse(data, self.settings.size_scale)

    def describe(self) -> str:
        return (
            f"coinbase: {len(self.names)} products ({preview(self.names)}) from "
            f"{self.settings.url}, sizes x{self.settings.size_scale}"
        )


def create(section: Any, config: Config) -> CoinbaseSource:
    settings: CoinbaseConfig = section
    check_section("coinbase", settings.symbols, settings.reconnect_min, settings.reconnect_max)
    return CoinbaseSource(settings)


KIND = register(SourceKind("coinbase", CoinbaseConfig, create))
