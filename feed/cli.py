"""The command line: `feed serve` runs the feed, `feed ingest` and `feed gateway` run it split
over NATS (docs/scaling.md), `feed simulate` prints simulated ticks, `feed publish` sends ticks
from stdin to a feed's producer endpoint, `feed watch` shows symbols as a live table.

Every config key can be set from here: the common ones have their own flags, any other goes
through `--set section.key=value`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feed import config as config_module
from feed import gcwatch, logs, publish, watch
from feed.config import Config, ConfigError

log = logging.getLogger("feed")

DEFAULT_CONFIG = Path("config.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feed", description="Live market-data feed over WebSockets."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the feed (embedded: no broker)")
    _add_sources(serve)
    ingest = commands.add_parser(
        "ingest",
        help="run the sources and publish every changed snapshot on NATS ([bus])",
        description="Run the sources and the coalescer, and publish each changed snapshot on "
        "NATS (<prefix>.snap.<SYMBOL>, kept per symbol by a JetStream stream), with a "
        "heartbeat. Serves /healthz, /stats and the producer endpoint /ingest on server.port.",
    )
    _add_sources(ingest)
    gateway = commands.add_parser(
        "gateway",
        help="serve /ws, the dashboard and HTTP from the snapshots on NATS ([bus])",
        description="Serve clients exactly as `feed serve` does, from the snapshots the ingest "
        "nodes publish on NATS: reads the newest of every symbol, then follows them live.",
    )
    _add_common(gateway)
    gateway.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port with SO_REUSEPORT, e.g. one per core (server.workers)",
    )
    simulate = commands.add_parser(
        "simulate",
        help="write simulated ticks to stdout as NDJSON",
        description="Write simulated ticks to stdout as NDJSON, one batch per step of market "
        "time, written and flushed at once. Each batch's `ts` is the wall clock right before it "
        "is formatted and written: a reader's latency counts from the moment a tick left here. "
        "Apart from `ts` the output is the same for the same flags. On SIGUSR1 one JSON line "
        "goes to stderr: ticks written so far (the batch being written included), seconds since "
        "the stream began, the rate asked "
        "for and how far the paced schedule lags.",
    )
    simulate.add_argument("--symbols", type=int, default=10, help="symbol count (default 10)")
    simulate.add_argument("--rate", type=float, default=100.0, help="ticks per second (100)")
    simulate.add_argument("--seed", type=int, default=42, help="random seed (42)")
    simulate.add_argument(
        "--duration", type=float, default=None, help="seconds of market time (default: forever)"
    )
    simulate.add_argument(
        "--fast", action="store_true", help="as fast as possible instead of wall-clock pace"
    )
    simulate.add_argument("--step", type=float, default=0.001, help="seconds per batch (0.001)")
    simulate.add_argument("--trade-ratio", type=float, default=0.3, help="share of trades (0.3)")
    simulate.add_argument(
        "--burst-factor", type=float, default=1.0, help="rate multiplier in bursts (1: none)"
    )
    simulate.add_argument("--burst-every", type=float, default=5.0, help="seconds (5)")
    simulate.add_argument("--burst-length", type=float, default=1.0, help="seconds (1)")
    simulate.add_argument(
        "--prime",
        action="store_true",
        help="first write, at once, the market from its start until every symbol has ticked, "
        "grouped by symbol in symbol order (like an opening snapshot: a reader knows every "
        "symbol, in order, before the stream); a JSON line on stderr says how many ticks",
    )
    publish.add_parser(commands)
    watch.add_parser(commands)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML config file (default: {DEFAULT_CONFIG} if it exists, else built-in defaults)",
    )
    parser.add_argument("--host", help="address to listen on (server.host)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any (server.port)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key (repeatable), e.g. --set limits.max_connections=500 "
        "or --set bus.url=nats://10.0.0.5:4222",
    )


def _add_sources(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--symbols", type=int, help="simulated symbol count (simulator.symbols)")
    parser.add_argument("--rate", type=float, help="simulated ticks per second (simulator.rate)")
    parser.add_argument(
        "--source",
        metavar="KIND[,KIND...]",
        help="the source kinds to run, e.g. stdin or simulator,binance (source.kinds)",
    )
    parser.add_argument(
        "--record", metavar="FILE", help="record every accepted tick as NDJSON (record.file)"
    )
    parser.add_argument(
        "--replay", metavar="FILE", help="play a recorded NDJSON or CSV tick file (replay.file)"
    )
    parser.add_argument(
        "--speed", type=float, help="replay speed: 1 real time, N times faster, 0 unpaced"
    )
    parser.add_argument("--loop", action="store_true", default=None, help="replay in a loop")


def _serve_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        overrides.setdefault(section, {})[key] = value

    for assignment in args.overrides:
        put(*config_module.parse_override(assignment))
    for flag, section, key in (
        ("host", "server", "host"),
        ("port", "server", "port"),
        ("workers", "server", "workers"),
        ("symbols", "simulator", "symbols"),
        ("rate", "simulator", "rate"),
        ("record", "record", "file"),
        ("replay", "replay", "file"),
        ("speed", "replay", "speed"),
        ("loop", "replay", "loop"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            put(section, key, value)
    if getattr(args, "source", None) is not None:
        put("source", "kinds", args.source)
    elif getattr(args, "replay", None) is not None:
        put("source", "kinds", "replay")
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    return config_module.load(path, overrides)


def _run(main: Any) -> None:
    """Run a coroutine on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def serve(config: Config, role: str = "serve", reuse_port: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then close every client with 1001 and stop cleanly."""
    from aiohttp import web

    from feed.server import NODE, create_app

    app = create_app(config, role=role)
    node = app[NODE]
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
        timeout_ceil_threshold=TIMER_CEIL,
    )
    await runner.setup()  # starts the background: pipeline or follower, sweeper
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if node.follower is not None:
        log.info("reading the newest snapshots from NATS (%s)", ", ".join(config.bus.url))
        ready = asyncio.ensure_future(node.follower.ready.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopping.cancel()
    listener: asyncio.Server | None = None
    if not stop.is_set():
        if node.hub is not None:
            from feed.auth import check_bind

            check_bind(config.auth, config.server.host)  # before listening: ConfigError, exit 2
        assert runner.server is not None
        listener = await node.intake.listen(
            runner.server, config.server.host, config.server.port, reuse_port=reuse_port
        )
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            if node.hub is not None:
                log.info(
                    "listening on ws://%s:%d/ws (dashboard: http://%s:%d/; HTTP: /symbols "
                    "/snapshot /healthz /stats)",
                    host,
                    port,
                    host,
                    port,
                )
            else:
                log.info("listening on http://%s:%d/ (/healthz /stats)", host, port)
        if node.pipeline is not None:
            log.info("source: %s", "; ".join(source.describe() for source in node.pipeline.sources))
        log.info("memory: Python's allocator is %s (memory.allocator)", gcwatch.allocator())
        await stop.wait()
    connections = len(node.hub.connections) if node.hub is not None else 0
    log.info("shutting down: closing %d connection(s)", connections)
    if listener is not None:
        listener.close()  # no new connections; runner.cleanup closes those open
    await runner.cleanup()
    log.info("stopped")


TIMER_CEIL = 3600.0
"""aiohttp rounds each timeout longer than this up to the next whole second, so that timers
coalesce. For the WebSocket heartbeat (`websocket.ping_interval`, 20 s) that made the pings of
every connection opened within the same second fire in one turn: 10,000 reconnected clients'
pings and pong deadlines 20 s after a storm held the loop 150-190 ms (docs/performance.md, step
23). Not rounded, each connection's timer keeps its own phase."""


def workers_child() -> bool:
    """Whether this process is one of `feed gateway --workers N` (it binds with SO_REUSEPORT)."""
    import os

    return bool(os.environ.get("FEED_WORKER"))


PRIME_MOST = 1_000_000
"""Ticks `feed simulate --prime` writes at most before the stream, every symbol seen or not."""


async def simulate(args: argparse.Namespace) -> None:
    """Write the market to stdout, each batch stamped with `time.time_ns()` right before it is
    formatted and written; on SIGUSR1, a JSON line of what was written on stderr."""
    from feed.ticks import to_ndjson
    from simulators import SimulatorSettings, TickSimulator

    sim = TickSimulator(
        SimulatorSettings(
            symbols=args.symbols,
            rate=args.rate,
            seed=args.seed,
            duration=args.duration,
            paced=not args.fast,
            step=args.step,
            trade_ratio=args.trade_ratio,
            burst_factor=args.burst_factor,
            burst_every=args.burst_every,
            burst_length=args.burst_length,
        )
    )
    out = sys.stdout.buffer
    written = [0]

    def report() -> None:
        stats = sim.stats()
        line = {
            "ticks": written[0],
            "seconds": stats.wall_seconds,
            "requested_rate": stats.requested_rate,
            "behind": stats.behind,
        }
        _say(line)

    # A plain handler, not the loop's: it also runs while a write blocks on a full pipe (the
    # write is interrupted, the handler runs, the write resumes), which is when it matters.
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: report())
    if args.prime:
        opening, seen = _opening(sim, PRIME_MOST)
        opening["ts"] = time.time_ns()
        out.write(to_ndjson(opening, sim.symbols))
        out.flush()
        _say({"primed": len(opening), "symbols": seen, "of": len(sim.symbols)})
    async for batch in sim.stream():
        batch["ts"] = time.time_ns()
        # Counted as it goes out: a report that comes while the write blocks on a full pipe
        # counts this batch, part of which a reader may already hold.
        written[0] += len(batch)
        out.write(to_ndjson(batch, sim.symbols))
        out.flush()


def _say(line: dict[str, Any]) -> None:
    import orjson

    sys.stderr.buffer.write(orjson.dumps(line) + b"\n")
    sys.stderr.flush()


def _opening(sim: Any, most: int) -> tuple[Any, int]:
    """The market from its start (`sim.next_batch()` steps) until every symbol has ticked, or
    `most` ticks, sorted by symbol keeping each symbol's ticks in order (the fold of each
    symbol is unchanged and the symbols first appear in symbol order); and how many symbols
    it holds."""
    import numpy as np

    from feed.ticks import empty

    count = len(sim.symbols)
    seen = np.zeros(count, dtype=bool)
    left, ticks = count, 0
    parts = []
    while left and ticks < most:
        batch = sim.next_batch()
        if len(batch):
            parts.append(batch)
            ticks += len(batch)
            syms = batch["sym"]
            if not seen[syms].all():
                seen[syms] = True
                left = count - int(seen.sum())
    if not parts:
        return empty(0), 0
    opening = np.concatenate(parts)
    return opening[np.argsort(opening["sym"], kind="stable")], count - left


def start_under_allocator(allocator: str) -> None:
    """Start this process again, the same command, under `allocator` (`memory.allocator`) if
    it runs under the other one. Python's own allocator (pymalloc) gives an arena of 1 MiB
    back only once every block in it is free: after a storm of 10,000 connections the steady
    state's objects pin the storm's arenas and RSS stays 110-140 MiB over its baseline for
    minutes. Under the C library's malloc (with `malloc_trim` at each compaction) it comes
    back within 25 MiB, but storms take longer and the fan-out costs 4% more instructions per
    frame (docs/performance.md, step 25). `PYTHONMALLOC` is read only when the interpreter
    starts, hence a new start (the same process id, descriptors and arguments; half a second
    of imports). A `PYTHONMALLOC` of another kind (`debug`, `malloc_debug`) is the
    operator's and is left as it is."""
    current = gcwatch.allocator()
    if current == allocator or current not in ("malloc", "pymalloc"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, PYTHONMALLOC=allocator)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("serve", "ingest", "gateway"):
        try:
            config = _serve_config(args)
        except ConfigError as exc:
            print(f"feed: {exc}", file=sys.stderr)
            return 2
        if argv is None:  # a process of its own (not a call from a program): its allocator
            start_under_allocator(config.memory.allocator)
        logs.configure(config.log)  # log.level, log.format (text or json)
        if args.command == "gateway" and config.server.workers > 1:
            from feed import workers

            try:
                return workers.supervise(config, list(argv if argv is not None else sys.argv[1:]))
            except ConfigError as exc:
                print(f"feed: {exc}", file=sys.stderr)
                return 2
        try:
            _run(serve(config, args.command, reuse_port=workers_child()))
        except ConfigError as exc:  # a value only wrong in context, found building the sources
            print(f"feed: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "simulate":
        try:
            _run(simulate(args))
        except ValueError as exc:
            print(f"feed: {exc}", file=sys.stderr)
            return 2
        except (BrokenPipeError, KeyboardInterrupt):
            with contextlib.suppress(OSError):
                sys.stdout.close()
        return 0
    if args.command == "publish":
        return publish.main(args)
    if args.command == "watch":
        return watch.main(args)
    return 2
