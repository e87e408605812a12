"""`feed watch SYMBOL... [--url URL] [--count N]`: a feed's symbols as a live table in the terminal.

    feed watch AAPL MSFT NVDA

One row per symbol: last, change since the open, bid, ask, spread, volume, VWAP, the latency of
its newest update (clock offset corrected), the updates conflated (seq jumps), the age of its
newest tick, and whether it is live, stale or refused (with the feed's reason: refused is a
symbol a reconnected feed no longer carries, set aside and asked for again at the next
connection, see `feed.client`); a header line says the connection state, which `feed.client`
keeps up by itself (reconnecting, resubscribing).

Contract:
- redrawn every `--refresh` seconds (0.25); Ctrl-C (SIGINT) or SIGTERM exits 0, leaving the last
  table on the screen;
- `--count N`: nothing drawn live, the table printed once N snapshots have arrived (the first
  snapshot of each symbol counts), then exit 0: for scripts and tests;
- exit 2 with a message on stderr: a symbol the feed does not carry (`unknown symbol(s): NOPE`),
  a feed that cannot be reached on the first try (`cannot connect to ws://...`), bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from typing import IO, TYPE_CHECKING, Any, Final

from feed import client
from feed.client import Feed, State

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

DEFAULT_URL: Final = client.DEFAULT_URL
DEFAULT_REFRESH: Final = 0.25
STATE_STYLES: Final = {
    State.CONNECTING: "yellow",
    State.CONNECTED: "green",
    State.DISCONNECTED: "bold yellow",
    State.CLOSED: "red",
}
COLUMNS: Final = (
    "symbol", "last", "change", "bid", "ask", "spread", "volume", "VWAP",
    "latency", "conflated", "age", "status",
)  # fmt: skip


def add_parser(commands: Any) -> None:
    """The `watch` subcommand, on the CLI's subparsers."""
    parser = commands.add_parser(
        "watch",
        help="a live table of some symbols in the terminal",
        description="A live table of the symbols' snapshots: last, change, bid, ask, spread, "
        "volume, VWAP, latency, updates conflated, age, stale or live. Ctrl-C exits.",
    )
    parser.add_argument("symbols", nargs="+", metavar="SYMBOL", help="the symbols to watch")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the feed (default {DEFAULT_URL})")
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="print the table once N snapshots have arrived, then exit (no live display)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=DEFAULT_REFRESH,
        metavar="SECONDS",
        help=f"seconds between redraws ({DEFAULT_REFRESH})",
    )


def main(args: argparse.Namespace, err: IO[str] = sys.stderr) -> int:
    """Run `feed watch`; the exit code."""
    if args.count is not None and args.count < 0:
        print(f"feed watch: --count must be >= 0, got {args.count}", file=err)
        return 2
    if not args.refresh > 0:
        print(f"feed watch: --refresh must be > 0, got {args.refresh}", file=err)
        return 2
    try:
        return asyncio.run(watch(args.url, args.symbols, args.count, args.refresh, err=err))
    except KeyboardInterrupt:  # before the signal handlers are in place
        return 0


async def watch(
    url: str,
    symbols: Sequence[str],
    count: int | None = None,
    refresh: float = DEFAULT_REFRESH,
    out: IO[str] | None = None,
    err: IO[str] = sys.stderr,
) -> int:
    """Watch `symbols` at `url` until a signal (or `count` snapshots); the exit code."""
    console = _console(out or sys.stdout)  # rich loaded before the first pongs time the clock
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with client.connect(url) as feed:
            try:
                names = await feed.subscribe(symbols)
            except client.FeedError as exc:
                print(f"feed watch: {exc.message}", file=err)
                return 2
            board = Board(feed, names)
            await _show(board, feed, count, refresh, stop, console)
            return 0
    except client.FeedError as exc:  # the first connection failed
        print(f"feed watch: {exc.message}", file=err)
        return 2
    except TimeoutError:
        print(f"feed watch: no answer from {url}", file=err)
        return 2
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _console(out: IO[str]) -> Console:
    from rich import live, table, text  # noqa: F401 (loaded now, used once connected)
    from rich.console import Console

    width = None if out.isatty() or "COLUMNS" in os.environ else 200
    return Console(file=out, width=width)


async def _show(
    board: Board,
    feed: Feed,
    count: int | None,
    refresh: float,
    stop: asyncio.Event,
    console: Console,
) -> None:
    from rich.live import Live

    if count is not None:
        await _first(feed.wait_until(lambda: board.received() >= count), stop.wait())
        console.print(board.render())
        return
    with Live(board.render(), console=console, auto_refresh=False) as live:
        while not stop.is_set() and feed.state.state is not State.CLOSED:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), refresh)
            live.update(board.render(), refresh=True)


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait for the first of these to finish; cancel the others."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Board:
    """The table of `symbols` as `feed` knows them now, rendered with rich."""

    def __init__(self, feed: Feed, symbols: Sequence[str]) -> None:
        self.feed = feed
        self.symbols = list(symbols)

    def received(self) -> int:
        """Snapshots received so far, all symbols together."""
        total = 0
        for symbol in self.symbols:
            stats = self.feed.stats(symbol)
            total += stats.received if stats is not None else 0
        return total

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table

        table = Table(*COLUMNS, header_style="bold", expand=False)
        for column in table.columns[1:-1]:
            column.justify = "right"
        now = time.time_ns()
        for symbol in self.symbols:
            table.add_row(*self._row(symbol, now))
        return Group(self.header(), table)

    def header(self) -> Text:
        """The connection line: URL, state (why, and the next attempt), clock, stale count."""
        from rich.text import Text

        feed, state = self.feed, self.feed.state
        line = Text.assemble(("feed watch ", "bold"), state.url, "  ")
        line.append(f"● {state.state.value}", style=STATE_STYLES[state.state])
        if state.state is not State.CONNECTED and state.reason:
            line.append(f": {state.reason}")
        if state.error:
            line.append(f"; last attempt: {state.error}")
        if state.retry_in is not None:
            line.append(f"; retrying in {state.retry_in:.1f} s")
        if state.connects > 1:
            line.append(f"  reconnects: {state.connects - 1}")
        clock = feed.clock
        if clock is not None:
            offset, rtt = clock.offset * 1e3, clock.rtt * 1e3
            line.append(f"  clock offset {offset:+.2f} ms, rtt {rtt:.2f} ms", style="dim")
        stale = [symbol for symbol in self.symbols if symbol in feed.stale]
        if stale:
            line.append(f"  {len(stale)} stale", style="bold red")
        refused = [symbol for symbol in self.symbols if symbol in feed.refused]
        if refused:
            line.append(f"  {len(refused)} refused", style="bold red")
        return line

    def _row(self, symbol: str, now: int) -> list[str | Text]:
        from rich.text import Text

        feed = self.feed
        snap, stats = feed.latest(symbol), feed.stats(symbol)
        refused, stale = feed.refused.get(symbol), feed.stale.get(symbol)
        name = Text(symbol, style="bold" if refused is None and stale is None else "bold red")
        if refused is not None:
            status = Text(f"refused: {refused}", style="red")
        elif stale is not None:
            status = Text(f"stale: {stale}", style="red")
        else:
            status = Text("live", style="green")
        if snap is None:
            return [name, *["-"] * (len(COLUMNS) - 2), status]
        change = snap.change
        moved = Text(
            _signed(change),
            style="" if not change else "green" if change > 0 else "red",
        )
        offset = feed.clock.offset if feed.clock is not None else 0.0
        age = (now - snap.ts) / 1e9 + offset if snap.ts else None
        latency = stats.latency if stats is not None else None
        return [
            name,
            _price(snap.last),
            moved,
            _price(snap.bid),
            _price(snap.ask),
            _price(snap.spread),
            f"{snap.volume:,}",
            _price(snap.vwap),
            "-" if latency is None else f"{latency * 1e3:.2f} ms",
            f"{stats.conflated:,}" if stats is not None else "-",
            _age(age),
            status,
        ]


def _price(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 0.01:
        return f"{value:,.2f}"
    return f"{value:.4g}"


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    text = _price(value)
    return text if text.startswith("-") else "+" + text


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"
