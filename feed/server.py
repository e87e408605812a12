"""The server: an aiohttp application wiring source, pipeline, market and hub to HTTP routes.

`create_app` is the seam: the CLI runs it behind a TCP site, tests run it under
`aiohttp_client`, and an embedding program can mount it in its own runner. One app serves the
three roles (docs/scaling.md):
- `serve`: sources -> pipeline -> market -> hub (the embedded default, no broker);
- `ingest`: sources -> pipeline -> market -> the bus (no subscribers of its own);
- `gateway`: the bus -> follower -> market -> hub (no sources).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
from aiohttp import WSMsgType, web

from feed import auth, metrics, static
from feed.config import Config, ConfigError
from feed.follower import Follower
from feed.gcwatch import GcWatch, allocator, release_websocket
from feed.hub import Hub
from feed.intake import Intake
from feed.loopwatch import LoopWatch
from feed.market import Market
from feed.pipeline import Pipeline
from feed.protocol import CloseCode
from feed.publisher import BusSink
from feed.recorder import Recorder
from feed.source import BatchStream
from feed.sources import Source, registry
from feed.sources.stream import StreamSource
from feed.sweeper import Sweeper

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Node:
    """The parts of one feed process and the role of each (the composition root)."""

    role: str
    """serve, ingest or gateway."""
    config: Config
    """Every setting, validated at start-up."""
    market: Market
    """The newest snapshot of every symbol, encoded: what all readers read."""
    hub: Hub | None
    """Connections, subscriptions and the fan-out (serve, gateway)."""
    pipeline: Pipeline | None
    """The sources, who owns which symbol, what is stale: ticks in, snapshots to the sink
    (serve: the hub; ingest: the bus)."""
    publisher: BusSink | None = None
    """The pipeline's sink in ingest: each changed snapshot onto NATS, and heartbeats."""
    follower: Follower | None = None
    """The market's way in on a gateway: snapshots from NATS, statuses from the nodes."""
    recorder: Recorder | None = None
    """Writes every accepted tick to `record.file`, when set."""
    auth: auth.Authenticator | None = None
    """Who may connect and read what: one path for /ws and HTTP alike."""
    gc: GcWatch = dataclasses.field(default_factory=GcWatch)
    """Times the cyclic collector's pauses (and freezes what is long-lived, `gc.freeze`)."""
    loop: LoopWatch = dataclasses.field(default_factory=LoopWatch)
    """How long the event loop was held at a time (a timer's lateness)."""
    intake: Intake = dataclasses.field(default_factory=Intake)
    """Connections' first reads and teardowns, a few per turn of the loop (`feed serve`'s
    listener)."""


NODE = web.AppKey("node", Node)
CONFIG = web.AppKey("config", Config)
MARKET = web.AppKey("market", Market)
HUB = web.AppKey("hub", Hub)
PIPELINE = web.AppKey("pipeline", Pipeline)


def make_sources(config: Config) -> list[Source]:
    """The sources the config asks for (`source.kinds`, and the kinds that enable themselves)."""
    return registry.create_all(config)


def _as_source(source: Source | BatchStream) -> Source:
    if isinstance(source, Source):
        return source
    return StreamSource(source, kind=getattr(source, "kind", type(source).__name__.lower()))


ROLES = ("serve", "ingest", "gateway")


def create_app(
    config: Config,
    source: Source | BatchStream | Sequence[Source | BatchStream] | None = None,
    role: str = "serve",
) -> web.Application:
    """The feed as an aiohttp application in `role`; `source` (one, or several) defaults to
    those the config names (serve, ingest)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    app = web.Application()
    market = Market()
    hub = Hub(market, config.limits, config.websocket) if role != "ingest" else None
    pipeline = publisher = follower = recorder = None
    sources: list[Source] = []
    if role != "gateway":
        if source is None:
            sources = make_sources(config)
        elif isinstance(source, Sequence):
            sources = [_as_source(item) for item in source]
        else:
            sources = [_as_source(source)]
        if hub is None:
            publisher = BusSink(config.bus, market)
        sink = hub if hub is not None else publisher
        assert sink is not None
        pipeline = Pipeline(sources, market, sink, max_symbols=config.limits.max_symbols)
        if config.record.file:
            recorder = Recorder(config.record.file, market.symbols, config.record.flush_interval)
            pipeline.taps.append(recorder.write)
    else:
        assert hub is not None
        follower = Follower(config.bus, market, hub)
    node = Node(
        role,
        config,
        market,
        hub,
        pipeline,
        publisher,
        follower,
        recorder,
        auth=auth.Authenticator(config.auth),
        intake=Intake(
            config.limits.opens_per_turn,
            config.limits.reads_per_turn,
            config.limits.closes_per_turn,
        ),
    )
    if hub is not None:
        closes = node.intake.closes
        hub.lost = lambda: closes.queued
    app[NODE] = node
    app[CONFIG] = config
    app[MARKET] = market
    app[metrics.METRICS] = metrics.FeedMetrics(node)  # reads the node when scraped
    # Every role; 404 when metrics.enabled = false.
    app.router.add_get("/metrics", _authorized(metrics.handler))
    if hub is not None:
        app[HUB] = hub
        app.router.add_get("/ws", websocket)
        app.router.add_get("/symbols", symbols)
        app.router.add_get("/snapshot", snapshot)
    if pipeline is not None:
        app[PIPELINE] = pipeline
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", _authorized(stats))
    if hub is not None:
        app.router.add_routes(static.routes())  # the dashboard: /, /feed-client.js, /web/*
    for item in sources:
        routes = getattr(item, "routes", None)
        if callable(routes):
            app.router.add_routes(routes())
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_connections)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Run the pipeline (or the follower), the bus and the hub's sweeper for the application's
    lifetime."""
    node = app[NODE]
    if node.recorder is not None:
        node.recorder.open()
    tasks = []
    if node.follower is not None:
        tasks.append(asyncio.create_task(node.follower.run(), name="feed-follower"))
    if node.pipeline is not None:
        tasks.append(asyncio.create_task(_run_pipeline(node), name="feed-pipeline"))
    if node.hub is not None:
        tasks.append(asyncio.create_task(Sweeper(node.hub).run(), name="feed-sweeper"))
    if node.recorder is not None:
        tasks.append(asyncio.create_task(node.recorder.run(), name="feed-recorder"))
    if node.hub is not None:
        hub, intake = node.hub, node.intake
        node.loop.context = lambda: (
            hub.activity()
            | {
                "opens_deferred": intake.opens.deferred,
                "reads_deferred": intake.reads.deferred,
                "closes_deferred": intake.closes.deferred,
            }
        )
    tasks.append(asyncio.create_task(node.loop.run(), name="feed-loopwatch"))
    node.gc.install()
    if node.config.gc.freeze and node.hub is not None:
        counters, live = node.hub.counters, node.hub.connections

        def connections() -> tuple[int, int]:
            return counters["accepted"], counters["accepted"] - len(live)

        tasks.append(
            asyncio.create_task(
                node.gc.tend(
                    connections,
                    settle=node.config.gc.settle,
                    compact_after=node.config.gc.compact_after,
                ),
                name="feed-gc",
            )
        )
    yield
    node.gc.uninstall()  # an embedding program (a test) goes on with its collector as it was
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if node.publisher is not None:
        await node.publisher.close()
    if node.recorder is not None:
        node.recorder.close()


async def _run_pipeline(node: Node) -> None:
    """The pipeline; in ingest, once the bus is connected and this node's state restored (so
    `seq` carries on), with the publisher beside it."""
    assert node.pipeline is not None
    if node.publisher is None:
        await node.pipeline.run()
        return
    await node.publisher.start()
    publishing = asyncio.create_task(node.publisher.run(), name="feed-bus-publish")
    try:
        await node.pipeline.run()
        await publishing  # the sources ended: their last state stays published
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing


async def _close_connections(app: web.Application) -> None:
    """Close every subscriber, and every source's own connections (producers), with 1001."""
    node = app[NODE]
    closing = []
    if node.hub is not None:
        closing.append(node.hub.close_all(CloseCode.GOING_AWAY, "server shutting down"))
    for source in node.pipeline.sources if node.pipeline is not None else ():
        shutdown = getattr(source, "shutdown", None)  # a source with connections of its own
        if callable(shutdown):
            closing.append(shutdown(CloseCode.GOING_AWAY, "server shutting down"))
    await asyncio.gather(*closing)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def principal_of(request: web.Request) -> auth.Principal | web.Response:
    """The one resolve-and-authorize path: who this request is, or the answer refusing it."""
    authenticator = request.app[NODE].auth
    assert authenticator is not None
    return authenticator.authorize(request)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authorized(handler: Handler) -> Handler:
    """`handler` behind the token check (when auth.required): /stats, /metrics."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        if isinstance(principal, web.Response):
            return principal
        return await handler(request)

    return guarded


async def websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    config = request.app[CONFIG]
    principal = principal_of(request)
    if isinstance(principal, web.Response):
        return principal  # 401 (or 403 for an Origin not allowed), before any upgrade
    follower = request.app[NODE].follower
    if follower is not None and not follower.ready.is_set():
        # A gateway answers subscriptions only once it holds the newest snapshot of every symbol.
        try:
            await asyncio.wait_for(follower.ready.wait(), config.bus.read_timeout)
        except TimeoutError:
            response = _json(
                {"error": "not_ready", "message": "the gateway is still reading the snapshots"},
                status=503,
            )
            response.headers["Retry-After"] = "1"
            return response
    await hub.handshakes.admit()  # a storm's upgrades a few per turn of the loop, in order
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
        # aiohttp refuses a message of max_msg_size bytes or more; ours may have max bytes.
        max_msg_size=config.limits.max_message_size + 1,
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
    conn = hub.connect(ws, transport, None if principal.reads_all else principal.may_read)
    try:
        requests = hub.requests
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                served = conn.requests > 0
                if not requests.enter(served):
                    # A burst of requests: a few per turn, in order; those of connections
                    # already served in a line of their own.
                    await requests.admit(ahead=served)
                hub.receive(conn, message.data)
            elif message.type is WSMsgType.BINARY:
                hub.reject_binary(conn)
            elif message.type is WSMsgType.ERROR:
                if getattr(message.data, "code", None) == CloseCode.MESSAGE_TOO_BIG:
                    hub.counters["closed_too_big"] += 1  # aiohttp closed it with 1009
                break
    finally:
        hub.disconnect(conn)
        release_websocket(request, ws)
    return ws


async def symbols(request: web.Request) -> web.Response:
    """Every symbol this request's token may read."""
    principal = principal_of(request)
    if isinstance(principal, web.Response):
        return principal
    names = request.app[MARKET].symbols
    if principal.reads_all:
        return _json(list(names))
    return _json([name for name in names if principal.may_read(name)])


async def snapshot(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if isinstance(principal, web.Response):
        return principal
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
    refused = [name for name in names if not principal.may_read(name)]
    if refused:
        return _json(
            {
                "error": "not_entitled",
                "message": f"not entitled to read: {', '.join(refused[:10])}",
            },
            403,
        )
    body = b"[" + b",".join(market.payload(index[name]) for name in names) + b"]"
    return web.Response(body=body, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """200 while no source has failed (an ended source still serves its last state), 503 once
    one has; each source with its state, and how many symbols are stale."""
    node = request.app[NODE]
    pipeline = node.pipeline
    body: dict[str, object] = {"role": node.role}
    healthy = True
    if pipeline is not None:
        healthy = not pipeline.failed
        body["pipeline"] = pipeline.state
    body["symbols"] = len(node.market.symbols)
    if node.hub is not None:
        body["stale_symbols"] = len(node.hub.stale)
        body["connections"] = len(node.hub.connections)
    elif pipeline is not None:
        body["stale_symbols"] = len(pipeline.stale_symbols)
    if pipeline is not None:
        body["ticks"] = node.market.ticks
        body["sources"] = [
            {key: status[key] for key in _HEALTH_KEYS} for status in pipeline.source_status()
        ]
    for part in (node.publisher, node.follower):
        if part is not None:
            body["bus"] = part.state
            # A node cut off from NATS still serves (stale), but a balancer should prefer others.
            healthy = healthy and part.state in ("connected", "live")
    body = {"status": "ok" if healthy else "failed"} | body
    return _json(body, 200 if healthy else 503)


_HEALTH_KEYS = ("name", "kind", "state", "reason", "ticks_in", "ticks_rejected", "last_tick_ns")


async def stats(request: web.Request) -> web.Response:
    """Counters for operators: market, fan-out and source; `?connections=1` adds each
    connection's own (pending, conflated, frames and bytes sent, bytes buffered, stalled)."""
    app = request.app
    node = app[NODE]
    market = node.market
    body: dict[str, object] = {
        "role": node.role,
        "market": {
            "symbols": len(market.symbols),
            "ticks": market.ticks,
            "batches": market.batches,
        },
    }
    if node.pipeline is not None:
        body["market"]["epoch"] = market.epoch  # type: ignore[index]
    if node.pipeline is not None:
        body["pipeline"] = {
            "state": node.pipeline.state,
            "rejected_batches": node.pipeline.rejected_batches,
            "stale_symbols": len(node.pipeline.stale_symbols),
        }
        body["sources"] = node.pipeline.source_status()
    for part in (node.publisher, node.follower):
        if part is not None:
            body["bus"] = part.stats()
    body["gc"] = node.gc.stats()
    body["memory"] = {"allocator": allocator()}
    body["loop"] = node.loop.stats()
    body["intake"] = node.intake.stats()
    body["pid"] = os.getpid()  # which process answered (feed gateway --workers N)
    if node.hub is not None:
        body["hub"] = node.hub.stats(per_connection=request.query.get("connections") == "1")
    return _json(body)
