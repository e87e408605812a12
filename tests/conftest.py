"""Shared fixtures: a real feed server on a free port, fed by a PushSource the test controls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from feed import config, ticks
from feed.cli import TIMER_CEIL
from feed.server import NODE, create_app
from feed.source import BatchStream, PushSource
from feed.sources import Source
from tests.scaleout import Nats, need_nats, reap
from tests.wsclient import RawClient

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN"]


@dataclass
class Feed:
    app: web.Application
    server: TestServer
    client: TestClient[web.Request, web.Application]
    source: PushSource

    def trade(self, symbol: str, price: float, size: int = 100) -> None:
        sym = list(self.source.symbols).index(symbol)
        self.source.push(ticks.trades([sym], [price], [size], ts=time.time_ns()))

    def quote(self, symbol: str, bid: float, ask: float) -> None:
        sym = list(self.source.symbols).index(symbol)
        self.source.push(ticks.quotes([sym], [bid], [ask], [100], [100], ts=time.time_ns()))

    def push(self, batch: np.ndarray) -> None:
        self.source.push(batch)

    async def ws(self, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        return await self.client.ws_connect("/ws", **kwargs)

    async def raw(self, rcvbuf: int | None = None) -> RawClient:
        assert self.server.port is not None
        return await RawClient.connect(self.server.host, self.server.port, rcvbuf=rcvbuf)


StartFeed = Callable[..., Awaitable[Feed]]


@pytest.fixture
def start_feed(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> StartFeed:
    async def start(
        symbols: list[str] | None = None,
        source: Source | BatchStream | None = None,
        **sections: dict[str, Any],
    ) -> Feed:
        """A feed on a free port, fed by `source` or else by a PushSource of `symbols`."""
        push = PushSource(symbols or SYMBOLS)
        # Freezing (on by default) would walk and freeze the whole test process's heap at each
        # start: tests that are about it ask for it (tests/test_gc.py).
        sections.setdefault("gc", {"freeze": False})
        app = create_app(config.build(sections), source or push)
        server = await aiohttp_server(app)
        client = await aiohttp_client(server)
        return Feed(app, server, client, push)

    return start


@dataclass
class Served:
    """A feed served as `feed serve` serves it: aiohttp's runner behind the node's paced
    listener (feed.intake), on a free port of 127.0.0.1."""

    app: web.Application
    host: str
    port: int
    source: PushSource

    async def stats(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{self.host}:{self.port}/stats") as response,
        ):
            body: dict[str, Any] = await response.json()
        return body

    async def raw(self) -> RawClient:
        return await RawClient.connect(self.host, self.port)


@asynccontextmanager
async def serve_as_feed(**sections: dict[str, Any]) -> AsyncIterator[Served]:
    """What aiohttp's test server would not show: connections through `feed serve`'s own
    listener, and handlers that end as they do in production (the test server cancels the
    handler of a connection that is lost)."""
    sections.setdefault("gc", {"freeze": False})
    push = PushSource(SYMBOLS)
    app = create_app(config.build(sections), push)
    runner = web.AppRunner(app, access_log=None, timeout_ceil_threshold=TIMER_CEIL)
    await runner.setup()
    assert runner.server is not None
    listener = await app[NODE].intake.listen(runner.server, "127.0.0.1", 0)
    host, port = listener.sockets[0].getsockname()[:2]
    try:
        yield Served(app, host, port, push)
    finally:
        listener.close()
        await runner.cleanup()


async def recv(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0, heartbeats: bool = False
) -> dict[str, Any]:
    """The next JSON frame the client sees (heartbeats skipped unless asked for)."""
    while True:
        message = await ws.receive(timeout=timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = orjson.loads(message.data)
        if heartbeats or frame["type"] != "heartbeat":
            return frame


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Receive until a frame matches `predicate`; fails after `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, timeout=max(0.01, deadline - time.monotonic()))
        if predicate(frame):
            return frame


async def subscribe(
    ws: aiohttp.ClientWebSocketResponse, symbols: list[str], request_id: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Subscribe and return the (subscribed, snapshot) answers."""
    await ws.send_json({"op": "subscribe", "symbols": symbols, "id": request_id})
    answer = await recv(ws)
    assert answer == {"type": "subscribed", "id": request_id, "symbols": symbols}
    snapshot = await recv(ws)
    assert snapshot["type"] == "snapshot"
    return answer, snapshot


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[Nats]:
    """A private `nats-server -js` on a free port, its store in the test's directory; stopped,
    with every process the test started, when it ends (skipped without nats-server, failed
    under CI=true: tests.scaleout.need_nats)."""
    need_nats()
    server = Nats(tmp_path / "jetstream")
    await server.start()
    yield server
    await server.stop()
    await reap()
