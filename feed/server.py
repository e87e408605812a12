"""The server: an aiohttp application wiring source, pipeline, market and hub to HTTP routes.

`create_app` is the seam: the CLI runs it behind a TCP site, tests run it under
`aiohttp_client`, and an embedding program can mount it in its own runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator

import orjson
from aiohttp import WSMsgType, web

from feed.config import Config
from feed.hub import Hub
from feed.market import Market
from feed.pipeline import Pipeline
from feed.protocol import CloseCode
from feed.source import Source

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
MARKET = web.AppKey("market", Market)
HUB = web.AppKey("hub", Hub)
SOURCE = web.AppKey("source", Source)
PIPELINE = web.AppKey("pipeline", Pipeline)


def make_source(config: Config) -> Source:
    """The source named by `source.kind`, built from its section of the config."""
    from simulators import SimulatorSettings, TickSimulator

    sim = config.simulator
    return TickSimulator(
        SimulatorSettings(
            symbols=sim.symbols,
            rate=sim.rate,
            seed=sim.seed,
            step=sim.step,
            trade_ratio=sim.trade_ratio,
            burst_factor=sim.burst_factor,
            burst_every=sim.burst_every,
            burst_length=sim.burst_length,
            paced=sim.paced,
        )
    )


def create_app(config: Config, source: Source | None = None) -> web.Application:
    """The feed as an aiohttp application; `source` defaults to the one the config names."""
    app = web.Application()
    source = source if source is not None else make_source(config)
    market = Market(source.symbols)
    hub = Hub(market, config.limits, config.websocket)
    app[CONFIG] = config
    app[SOURCE] = source
    app[MARKET] = market
    app[HUB] = hub
    app[PIPELINE] = Pipeline(source, market, hub)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/symbols", symbols)
    app.router.add_get("/snapshot", snapshot)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_connections)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Run the pipeline and the hub's sweeper for the application's lifetime."""
    tasks = [
        asyncio.create_task(app[PIPELINE].run(), name="feed-pipeline"),
        asyncio.create_task(app[HUB].run_sweeper(), name="feed-sweeper"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_connections(app: web.Application) -> None:
    await app[HUB].close_all(CloseCode.GOING_AWAY, "server shutting down")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    config = request.app[CONFIG]
    if hub.full:
        hub.counters["rejected_full"] += 1
        response = _json(
            {
                "error": "too_many_connections",
                "message": f"the server is at its limit of {config.limits.max_connections} "
                "connections; try again later",
            },
            status=503,
        )
        response.headers["Retry-After"] = "1"
        return response
    ws = web.WebSocketResponse(
        heartbeat=config.websocket.ping_interval,
        compress=config.websocket.compress,
        max_msg_size=config.limits.max_message_size,
    )
    try:
        await ws.prepare(request)
    except ConnectionError:
        # The client went away during the handshake: nothing to serve, nothing to log.
        return web.Response(status=400, text="connection closed during the handshake")
    transport = request.transport
    if transport is None:  # the client went away during the handshake
        return ws
    if config.websocket.send_buffer_size:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.websocket.send_buffer_size)
    conn = hub.connect(ws, transport)
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                hub.receive(conn, message.data)
            elif message.type is WSMsgType.BINARY:
                hub.reject_binary(conn)
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        hub.disconnect(conn)
    return ws


async def symbols(request: web.Request) -> web.Response:
    return _json(list(request.app[MARKET].symbols))


async def snapshot(request: web.Request) -> web.Response:
    market = request.app[MARKET]
    wanted = request.query.get("symbols", "")
    names = [name for name in (part.strip() for part in wanted.split(",")) if name]
    if not names:
        return _json(
            {"error": "bad_symbols", "message": "pass ?symbols=A,B with at least one symbol"}, 400
        )
    index = market.symbols.lookup
    unknown = [name for name in names if name not in index]
    if unknown:
        return _json(
            {"error": "unknown_symbol", "message": f"unknown symbol(s): {', '.join(unknown)}"},
            404,
        )
    body = b"[" + b",".join(market.payload(index[name]) for name in names) + b"]"
    return web.Response(body=body, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """200 while the pipeline runs (or its source ended cleanly), 503 if it failed."""
    pipeline = request.app[PIPELINE]
    healthy = pipeline.state != "failed"
    return _json(
        {
            "status": "ok" if healthy else "failed",
            "pipeline": pipeline.state,
            "symbols": len(request.app[MARKET].symbols),
            "connections": len(request.app[HUB].connections),
            "ticks": request.app[MARKET].ticks,
        },
        200 if healthy else 503,
    )


async def stats(request: web.Request) -> web.Response:
    """Counters for operators: market, fan-out and source; `?connections=1` adds each
    connection's own (pending, conflated, frames and bytes sent, bytes buffered, stalled)."""
    app = request.app
    market = app[MARKET]
    body: dict[str, object] = {
        "market": {
            "symbols": len(market.symbols),
            "ticks": market.ticks,
            "batches": market.batches,
        },
        "pipeline": {
            "state": app[PIPELINE].state,
            "rejected_batches": app[PIPELINE].rejected_batches,
        },
        "hub": app[HUB].stats(per_connection=request.query.get("connections") == "1"),
    }
    source_stats = getattr(app[SOURCE], "stats", None)
    if callable(source_stats):
        body["source"] = dataclasses.asdict(source_stats())
    return _json(body)
