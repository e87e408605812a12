"""What the peers share besides the fold: command line, subscriptions and the control protocol.

The control part is pure (no I/O): a peer hands `answer()` a client message and sends the
frames it returns, so the Python peers speak exactly the same subset of docs/protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Generic, TypeVar

import orjson

from benchmarks.peers.fold import Book
from simulators import SimulatorSettings, TickSimulator

C = TypeVar("C", bound=Hashable)

MAX_ID_LENGTH = 64


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


def main(
    prog: str,
    description: str,
    serve: Callable[[argparse.Namespace, TickSimulator], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line every Python peer shares: 2 for a bad setting, 1 if it cannot listen."""
    args = parser(prog, description).parse_args(argv)
    try:
        sim = TickSimulator(settings(args))
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        run(serve(args, sim))
    except OSError as exc:  # cannot listen
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


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
