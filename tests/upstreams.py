"""Fake exchange upstreams for the adapter tests: real aiohttp WebSocket servers on free ports
that speak the documented formats of Binance's combined streams and the Coinbase Exchange feed,
and record what the adapter did (connections, the streams or subscription each asked for, the
pongs it sent, when it closed).

Each fake is an aiohttp application (`app`), served by the test with `aiohttp_server`; `url` is
then its base URL. `until(predicate)` waits, with a timeout, for what the fake saw to change.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web


@dataclass(eq=False)
class Conn:
    """One connection the adapter made."""

    ws: web.WebSocketResponse
    request: web.Request
    opened: float = field(default_factory=time.monotonic)
    streams: list[str] = field(default_factory=list)
    """Binance: the stream names the URL asked for."""
    subscription: dict[str, Any] | None = None
    """Coinbase: the subscribe message."""
    subscribed_after: float | None = None
    """Coinbase: seconds from the connection to its subscribe message."""
    pongs: list[bytes] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    closed: bool = False
    closed_by_client: bool = False


class Upstream:
    def __init__(self) -> None:
        self.app = web.Application()
        self.conns: list[Conn] = []
        self.url = ""
        self.deaf = False
        """When set, the client's pings get no pong (a half-dead connection)."""
        self._changed = asyncio.Condition()

    def serving(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}"

    @property
    def open(self) -> list[Conn]:
        return [conn for conn in self.conns if not conn.closed]

    @property
    def latest(self) -> Conn:
        return self.open[-1]

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds (checked whenever the fake sees something)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, conn: Conn) -> None:
        """Read the client until it goes, noting pongs, pings and text."""
        ws = conn.ws
        try:
            async for message in ws:
                if message.type is WSMsgType.PONG:
                    conn.pongs.append(message.data)
                elif message.type is WSMsgType.PING:
                    conn.pings.append(message.data)
                    if not self.deaf:
                        await ws.pong(message.data)
                elif message.type is WSMsgType.TEXT:
                    conn.texts.append(message.data)
                    await self.on_text(conn, message.data)
                await self._notify()
            conn.closed_by_client = ws.close_code is not None and not conn.closed
        finally:
            conn.closed = True
            await self._notify()

    async def on_text(self, conn: Conn, data: str) -> None:
        """A text message from the client (after any handshake the fake requires)."""

    async def send(self, message: Any, conn: Conn | None = None) -> None:
        """A JSON object (or raw text) to `conn`, by default every open connection."""
        payload = message if isinstance(message, str) else orjson.dumps(message).decode()
        for target in [conn] if conn else self.open:
            await target.ws.send_str(payload)

    async def send_binary(self, data: bytes) -> None:
        for conn in self.open:
            await conn.ws.send_bytes(data)

    async def ping(self, payload: bytes) -> None:
        for conn in self.open:
            await conn.ws.ping(payload)

    async def drop(self) -> None:
        """Cut every open connection without a close frame (a reset, a crash)."""
        for conn in self.open:
            conn.closed = True
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        await self._notify()

    async def close(self, code: int = 1001) -> None:
        """Close every open connection with a close frame."""
        for conn in self.open:
            conn.closed = True
            await conn.ws.close(code=code, message=b"going away")
        await self._notify()


_STREAM = re.compile(r"[a-z0-9]+@(trade|bookTicker)")


class BinanceUpstream(Upstream):
    """`/stream?streams=a/b/...`: checks each stream name (lower-case symbol, `@trade` or
    `@bookTicker`, at most 1,024) and answers 400 otherwise, as Binance does; sends events
    wrapped as `{"stream":..., "data":...}` and protocol pings."""

    def __init__(self) -> None:
        super().__init__()
        self.app.router.add_get("/stream", self._handle)
        self.refused = 0
        self.unavailable = False
        """When set, new connections get HTTP 503 (the open ones go on)."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.unavailable:
            self.refused += 1
            await self._notify()
            return web.json_response({"code": -1, "msg": "unavailable"}, status=503)
        streams = request.query.get("streams", "").split("/")
        bad = [name for name in streams if not _STREAM.fullmatch(name)]
        if bad or len(streams) > 1024:
            self.refused += 1
            return web.json_response({"code": -1100, "msg": f"bad streams {bad}"}, status=400)
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = Conn(ws, request, streams=streams)
        self.conns.append(conn)
        await self._notify()
        await self._serve(conn)
        return ws

    async def trade(
        self, symbol: str, price: str, qty: str, trade_time: int, trade_id: int
    ) -> None:
        event = {
            "e": "trade",
            "E": trade_time + 1,
            "s": symbol,
            "t": trade_id,
            "p": price,
            "q": qty,
            "T": trade_time,
            "m": True,
            "M": True,
        }
        await self.send({"stream": f"{symbol.lower()}@trade", "data": event})

    async def book(
        self, symbol: str, update: int, bid: str, bid_qty: str, ask: str, ask_qty: str
    ) -> None:
        event = {"u": update, "s": symbol, "b": bid, "B": bid_qty, "a": ask, "A": ask_qty}
        await self.send({"stream": f"{symbol.lower()}@bookTicker", "data": event})

    async def server_shutdown(self) -> None:
        await self.send({"e": "serverShutdown", "E": int(time.time() * 1000)})


class CoinbaseUpstream(Upstream):
    """The Exchange feed at `/`: requires a subscribe message within `subscribe_window` seconds
    (5, as Coinbase), to known products and the ticker and heartbeat channels; answers with
    `subscriptions`, or an `error` and a close; sends ticker and heartbeat messages."""

    def __init__(self, products: list[str], subscribe_window: float = 5.0) -> None:
        super().__init__()
        self.products = products
        self.subscribe_window = subscribe_window
        self.app.router.add_get("/", self._handle)
        self.sequence = 1000

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = Conn(ws, request)
        self.conns.append(conn)
        await self._notify()
        try:
            first = await ws.receive(timeout=self.subscribe_window)
        except TimeoutError:
            await self._refuse(conn, "Failed to subscribe", "no subscribe within 5 s")
            return ws
        if first.type is not WSMsgType.TEXT:
            await self._refuse(conn, "Failed to subscribe", "expected a subscribe message")
            return ws
        conn.texts.append(first.data)
        problem = self._check_subscription(first.data)
        if problem:
            await self._refuse(conn, "Failed to subscribe", problem)
            return ws
        conn.subscription = orjson.loads(first.data)
        conn.subscribed_after = time.monotonic() - conn.opened
        products = conn.subscription["product_ids"]
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "subscriptions",
                    "channels": [
                        {"name": "ticker", "product_ids": products},
                        {"name": "heartbeat", "product_ids": products},
                    ],
                }
            ).decode()
        )
        await self._notify()
        await self._serve(conn)
        return ws

    def _check_subscription(self, data: str) -> str | None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return "message is not JSON"
        if not isinstance(message, dict) or message.get("type") != "subscribe":
            return "expected type subscribe"
        products = message.get("product_ids")
        if not isinstance(products, list) or not products:
            return "product_ids must be a non-empty list"
        for product in products:
            if product not in self.products:
                return f"{product} is not a valid product"
        channels = message.get("channels")
        if not isinstance(channels, list) or not {"ticker", "heartbeat"} <= set(channels):
            return "channels must include ticker and heartbeat"
        return None

    async def _refuse(self, conn: Conn, message: str, reason: str) -> None:
        await conn.ws.send_str(
            orjson.dumps({"type": "error", "message": message, "reason": reason}).decode()
        )
        conn.closed = True
        await conn.ws.close()
        await self._notify()

    def _next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    async def ticker(
        self,
        product: str,
        *,
        price: str,
        last_size: str,
        best_bid: str,
        best_ask: str,
        best_bid_size: str,
        best_ask_size: str,
        time_text: str,
        trade_id: int,
        side: str = "buy",
    ) -> None:
        await self.send(
            {
                "type": "ticker",
                "sequence": self._next_sequence(),
                "product_id": product,
                "price": price,
                "open_24h": price,
                "volume_24h": "1000.0",
                "low_24h": price,
                "high_24h": price,
                "volume_30d": "30000.0",
                "best_bid": best_bid,
                "best_bid_size": best_bid_size,
                "best_ask": best_ask,
                "best_ask_size": best_ask_size,
                "side": side,
                "time": time_text,
                "trade_id": trade_id,
                "last_size": last_size,
            }
        )

    async def heartbeats(self, product: str, count: int, every: float) -> None:
        """`count` heartbeats, one every `every` seconds (Coinbase sends one a second)."""
        for _ in range(count):
            await self.heartbeat(product)
            await asyncio.sleep(every)

    async def heartbeat(self, product: str, last_trade_id: int = 1) -> None:
        await self.send(
            {
                "type": "heartbeat",
                "sequence": self._next_sequence(),
                "last_trade_id": last_trade_id,
                "product_id": product,
                "time": "2024-05-01T12:00:00.000000Z",
            }
        )
