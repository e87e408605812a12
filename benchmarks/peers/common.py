"""What the peers share besides the fold: command line, market, subscriptions and the control
protocol.

The market is either simulated in process (`Simulated`, the default) or read from standard input
as NDJSON ticks (`--stdin`, `StdinTicks`: what `feed simulate` writes, each tick with its own
`ts`); a peer folds and fans out its batches one tick at a time either way. The control part is
pure (no I/O): a peer hands `answer()` a client message and sends the frames it returns, so the
Python peers speak exactly the same subset of docs/protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterable, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

import orjson

from benchmarks.peers.fold import Book
from feed.ticks import QUOTE, TRADE
from simulators import SimulatorSettings, TickSimulator, symbol_names

C = TypeVar("C", bound=Hashable)

MAX_ID_LENGTH = 64
READ_CHUNK: Final = 64 * 1024
"""Bytes asked of standard input per read (`--stdin`): what node reads from a pipe at once."""

Tick = tuple[int, int, int, float, int, float, float, int, int]
"""One tick as `Book.fold` takes it: the fields of `feed.ticks.TICK_DTYPE`, in order."""


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every peer takes (defaults as in `feed simulate`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port, 0 for any free one (8080)")
    p.add_argument("--symbols", type=int, default=10, help="symbol count (10)")
    p.add_argument("--rate", type=float, default=100.0, help="ticks per second (100)")
    p.add_argument("--seed", type=int, default=42, help="random seed (42)")
    p.add_argument("--step", type=float, default=0.001, help="seconds per batch (0.001)")
    p.add_argument("--trade-ratio", type=float, default=0.3, help="share of trades (0.3)")
    p.add_argument(
        "--burst-factor", type=float, default=1.0, help="rate multiplier in bursts (1: none)"
    )
    p.add_argument("--burst-every", type=float, default=5.0, help="seconds (5)")
    p.add_argument("--burst-length", type=float, default=1.0, help="seconds (1)")
    p.add_argument(
        "--stdin",
        action="store_true",
        help="read the ticks as NDJSON from stdin (what `feed simulate` writes) instead of "
        "simulating them; the symbols are the simulator's first --symbols names",
    )
    return p


def market_args(args: argparse.Namespace) -> list[str]:
    """The market flags of `args` as `feed simulate` takes them."""
    return [
        f"--symbols={args.symbols}",
        f"--rate={args.rate!r}",
        f"--seed={args.seed}",
        f"--step={args.step!r}",
        f"--trade-ratio={args.trade_ratio!r}",
        f"--burst-factor={args.burst_factor!r}",
        f"--burst-every={args.burst_every!r}",
        f"--burst-length={args.burst_length!r}",
    ]


def settings(args: argparse.Namespace) -> SimulatorSettings:
    """The paced simulator the command line asks for (raises ValueError on bad values)."""
    return SimulatorSettings(
        symbols=args.symbols,
        rate=args.rate,
        seed=args.seed,
        step=args.step,
        trade_ratio=args.trade_ratio,
        burst_factor=args.burst_factor,
        burst_every=args.burst_every,
        burst_length=args.burst_length,
        paced=True,
    )


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed, like `feed.cli`."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


class Market(Protocol):
    """Where a peer's ticks come from: its symbols, and batches of ticks to fold one at a time."""

    symbols: tuple[str, ...]

    def batches(self, book: Book) -> AsyncIterator[Iterable[Tick]]:
        """Batches of ticks as they come; ends at the end of the market (end of input)."""
        ...


class Simulated:
    """The simulator in process, paced: each batch is stamped when the simulator yields it."""

    def __init__(self, sim: TickSimulator) -> None:
        self.sim = sim
        self.symbols = tuple(sim.symbols)

    async def batches(self, book: Book) -> AsyncIterator[Iterable[Tick]]:
        async for batch in self.sim.stream():
            yield batch.tolist()


class StdinTicks:
    """NDJSON ticks from a file descriptor (standard input), each with its own `ts`.

    Whatever has arrived is handed on as soon as it arrives (no timer), as a batch of its
    complete lines, each parsed with orjson only when the fold takes it, so the first tick of a
    chunk is fanned out before the next line is parsed. A line that is not a trade or a quote of
    a known symbol is skipped (the first few are named on stderr, the count at the end); values
    are not validated (the producer is `feed simulate`). A tick without `ts` is stamped when
    parsed. A pipe or socket is read by the event loop, anything else (a file, /dev/null, a
    terminal) by a helper thread: uvloop's pipe transport refuses those.
    """

    SHOWN: Final = 5

    def __init__(self, symbols: Sequence[str], fd: int = 0) -> None:
        self.symbols = tuple(symbols)
        self.fd = fd
        self.lines = 0
        self.skipped = 0

    async def batches(self, book: Book) -> AsyncIterator[Iterable[Tick]]:
        index = book.index
        tail = b""
        async for data in _chunks(self.fd):
            lines = (tail + data).split(b"\n") if tail else data.split(b"\n")
            tail = lines.pop()
            yield self._ticks(lines, index)
        if tail.strip():
            yield self._ticks([tail], index)
        print(
            f"end of ticks on stdin: {self.lines:,} lines, {self.skipped:,} skipped",
            file=sys.stderr,
            flush=True,
        )

    def _ticks(self, lines: list[bytes], index: dict[str, int]) -> Iterable[Tick]:
        loads, nan, kinds = orjson.loads, math.nan, _KINDS
        for line in lines:
            self.lines += 1
            if not line.strip():
                continue
            try:
                obj = loads(line)
                sym = index[obj["symbol"]]
                kind = kinds[obj["type"]]
                ts = obj.get("ts")
                if ts is None:
                    ts = time.time_ns()
                if kind == QUOTE:
                    tick = (
                        sym,
                        kind,
                        ts,
                        nan,
                        0,
                        obj["bid"],
                        obj["ask"],
                        obj["bid_size"],
                        obj["ask_size"],
                    )
                else:
                    tick = (sym, kind, ts, obj["price"], obj["size"], nan, nan, 0, 0)
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                self._skip(exc)
                continue
            yield tick

    def _skip(self, exc: Exception) -> None:
        self.skipped += 1
        if self.skipped <= self.SHOWN:
            what = f"no field or unknown value {exc}" if isinstance(exc, KeyError) else str(exc)
            print(
                f"stdin line {self.lines} skipped: not a tick of a known symbol ({what})",
                file=sys.stderr,
                flush=True,
            )


_KINDS: Final = {"trade": TRADE, "quote": QUOTE}


async def _chunks(fd: int) -> AsyncIterator[bytes]:
    """The bytes of `fd` as they arrive, until the end of input."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK)
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)  # the transport closes the duplicate
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while data := await reader.read(READ_CHUNK):
                yield data
        finally:
            transport.close()
        return
    async for data in _threaded_chunks(fd):
        yield data


async def _threaded_chunks(fd: int) -> AsyncIterator[bytes]:
    """`fd` read by a daemon thread, at most two chunks ahead of us."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=2)

    def pump() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
            while True:
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError as exc:
                    print(f"stdin: {exc}", file=sys.stderr, flush=True)
                    data = b""
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
                if not data:
                    return

    threading.Thread(target=pump, name="peer-stdin", daemon=True).start()
    while data := await queue.get():
        yield data


def main(
    prog: str,
    description: str,
    serve: Callable[[argparse.Namespace, Market], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line every Python peer shares: 2 for a bad setting, 1 if it cannot listen."""
    args = parser(prog, description).parse_args(argv)
    market: Market
    try:
        sim = TickSimulator(settings(args))
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    market = StdinTicks(symbol_names(args.symbols)) if args.stdin else Simulated(sim)
    try:
        run(serve(args, market))
    except OSError as exc:  # cannot listen
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


async def until_stopped(producer: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Wait for `stop`; a market that ends (end of input) leaves the peer serving its last
    state, a market that fails stops it (the failure is raised)."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((producer, stopping), return_when=asyncio.FIRST_COMPLETED)
        if producer.done() and not producer.cancelled() and producer.exception() is None:
            await stopping
    finally:
        stopping.cancel()
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer  # re-raises the producer's failure, if that is why we stopped


def announce(host: str, port: int) -> None:
    """The readiness line the runner waits for, on stderr."""
    where = f"[{host}]" if ":" in host else host
    print(f"listening on ws://{where}:{port}/ws", file=sys.stderr, flush=True)


class Registry(Generic[C]):
    """Who is subscribed to what: `subscribers[sym]` is the set the producer sends to."""

    def __init__(self, symbols: int) -> None:
        self.subscribers: list[set[C]] = [set() for _ in range(symbols)]
        self._held: dict[C, set[int]] = {}

    def subscribe(self, client: C, syms: Sequence[int]) -> None:
        held = self._held.setdefault(client, set())
        for sym in syms:
            held.add(sym)
            self.subscribers[sym].add(client)

    def unsubscribe(self, client: C, syms: Sequence[int]) -> list[int]:
        """Drop `syms` from `client`; return those it actually held, in the order asked."""
        held = self._held.get(client, set())
        dropped = []
        for sym in syms:
            if sym in held:
                held.discard(sym)
                self.subscribers[sym].discard(client)
                dropped.append(sym)
        return dropped

    def remove(self, client: C) -> None:
        """Forget `client` entirely (it disconnected or was dropped)."""
        for sym in self._held.pop(client, ()):
            self.subscribers[sym].discard(client)


def update_frame(snapshot: dict[str, Any]) -> bytes:
    """One tick's frame: that symbol's snapshot alone."""
    return orjson.dumps({"type": "update", "data": [snapshot]})


def _error(code: str, message: str, request_id: object = None) -> bytes:
    body: dict[str, Any] = {"type": "error"}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body | {"code": code, "message": message})


def answer(data: str | bytes, book: Book, registry: Registry[C], client: C) -> list[bytes]:
    """Apply one client message to `registry` and return the frames to send back, in order.

    subscribe -> subscribed + snapshot, unsubscribe -> unsubscribed, ping -> pong
    (`time.time_ns()`). Unknown symbols are ignored; malformed requests get an `error` frame.
    """
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [_error("bad_json", "not valid JSON")]
    if not isinstance(request, dict):
        return [_error("bad_request", "a request must be a JSON object")]
    request_id = request.get("id")
    if not (
        request_id is None
        or (isinstance(request_id, int) and not isinstance(request_id, bool))
        or (isinstance(request_id, str) and len(request_id) <= MAX_ID_LENGTH)
    ):
        return [_error("bad_request", "id must be an integer or a short string")]
    head: dict[str, Any] = {} if request_id is None else {"id": request_id}
    op = request.get("op")
    if op == "ping":
        return [orjson.dumps({"type": "pong"} | head | {"ts": time.time_ns()})]
    if op not in ("subscribe", "unsubscribe"):
        return [_error("unknown_op", f"unknown op {op!r}", request_id)]
    names = request.get("symbols")
    if not isinstance(names, list) or not names:
        return [_error("bad_symbols", "symbols must be a non-empty list", request_id)]
    index = book.index
    syms = list(dict.fromkeys(index[n] for n in names if isinstance(n, str) and n in index))
    if op == "unsubscribe":
        gone = [book.symbols[sym] for sym in registry.unsubscribe(client, syms)]
        return [orjson.dumps({"type": "unsubscribed"} | head | {"symbols": gone})]
    registry.subscribe(client, syms)
    taken = [book.symbols[sym] for sym in syms]
    states = [book.snapshots[sym] for sym in syms]
    return [
        orjson.dumps({"type": "subscribed"} | head | {"symbols": taken}),
        orjson.dumps({"type": "snapshot", "data": states}),
    ]


def stats(book: Book, connections: int, dropped: int) -> bytes:
    """The body of `GET /stats`."""
    return orjson.dumps({"ticks": book.ticks, "connections": connections, "dropped": dropped})
