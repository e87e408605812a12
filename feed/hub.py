"""The hub: live connections, the fan-out of snapshots to them, and their requests carried out.

The hub never awaits a client. `publish` puts each changed snapshot (encoded once) into the
mailbox of every subscriber's writer and flushes those whose sockets can take more; the rest stay
conflated until their socket drains. What a request means is the session's business
(`feed.session`, sans I/O): the hub carries out the actions it returns, in order. What each
connection is sent, and when, is its writer's (`feed.writer`); heartbeats, slow-consumer closes
and retries are the sweeper's (`feed.sweeper`).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from feed import protocol
from feed.config import LimitsConfig, WebSocketConfig
from feed.market import Market
from feed.protocol import CloseCode, ErrorCode
from feed.ratelimit import TokenBucket
from feed.registry import SubscriptionRegistry
from feed.session import Close, Hold, Release, Send, SendSnapshot, Session, TellStale
from feed.turns import PerTurn
from feed.views import Frames
from feed.writer import DEFAULT, State, Writer

log = logging.getLogger(__name__)

FLUSH_SLICE = 0.005
"""Seconds of flushing sockets before the event loop gets a turn (pings, requests, handshakes);
the writers left wait in the backlog, in order, for the next turn."""
FLUSH_CHECK = 32
"""Writers flushed between two readings of the clock."""

Connection = Writer
"""What the hub calls a connection: its writer, which knows its session."""


class Hub:
    def __init__(
        self,
        market: Market,
        limits: LimitsConfig,
        websocket: WebSocketConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.market = market
        self.frames = market.views = Frames(market)
        self.limits = limits
        self.websocket = websocket
        self._clock = clock
        self.registry: SubscriptionRegistry[Writer] = SubscriptionRegistry()
        self.connections: dict[int, Writer] = {}
        self.stale: dict[int, str] = {}
        """Symbols whose source went quiet or away, and why (what `status` said last)."""
        self.stalled: set[Writer] = set()
        """Writers with pending snapshots whose sockets were full at the last try."""
        self.backlog: deque[Writer] = deque()
        """Writers with mail that a fan-out left for the loop's next turn (FLUSH_SLICE)."""
        self._waiting: set[Writer] = set()
        """The writers in `backlog`."""
        self._draining = False
        self.handshakes = PerTurn(limits.handshakes_per_turn)
        """WebSocket upgrades admitted per turn of the loop (a reconnection storm's thousands
        would otherwise run back to back while everyone else waits)."""
        self.requests = PerTurn(limits.requests_per_turn)
        """Client requests carried out per turn of the loop (10,000 subscribes at once)."""
        self.lost: Callable[[], int] = lambda: 0
        """Connections lost whose teardown waits for a later turn (set by the node)."""
        self._patterned: dict[Writer, None] = {}
        """Writers whose sessions hold patterns (symbols that appear later may match)."""
        self._known = len(market.symbols)
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = {
            "accepted": 0,
            "rejected_full": 0,
            "closed_slow": 0,
            "closed_rate_limited": 0,
            "conflated_closed": 0,
            "frames_closed": 0,
            "bytes_closed": 0,
            "closed_too_big": 0,
        }

    # -- connections --------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """At `limits.max_connections` live connections; those already lost and waiting for
        their teardown (feed.intake) do not count."""
        return len(self.connections) - self.lost() >= self.limits.max_connections

    def connect(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        entitled: Callable[[str], bool] | None = None,
    ) -> Writer:
        now = self._clock()
        bucket = TokenBucket(self.limits.control_rate, self.limits.control_burst, now)
        writer = Writer(
            ws,
            transport,
            write_limit=self.websocket.write_buffer_limit,
            bucket=bucket,
            now=now,
            wake=self._wake,
        )
        symbols = self.market.symbols
        writer.session = Session(symbols.lookup, symbols, self.limits, bucket, entitled=entitled)
        self.connections[writer.id] = writer
        self.counters["accepted"] += 1
        return writer

    def disconnect(self, writer: Writer) -> None:
        """Forget a connection whose receive loop ended, however it ended."""
        if self.connections.pop(writer.id, None) is None:
            return
        writer.state = State.CLOSED
        self._forget(writer)
        self.counters["conflated_closed"] += writer.mailbox.conflated + writer.throttled
        self.counters["frames_closed"] += writer.frames_sent
        self.counters["bytes_closed"] += writer.bytes_sent

    def _forget(self, writer: Writer) -> None:
        self.registry.remove(writer)
        self.stalled.discard(writer)
        self._patterned.pop(writer, None)

    def close(self, writer: Writer, code: CloseCode, reason: str) -> None:
        """Start closing a connection; it stops receiving updates at once."""
        if writer.state is not State.OPEN:
            return
        log.info("closing connection %d (%s): %d %s", writer.id, writer.peer, code, reason)
        writer.state = State.CLOSING
        writer.close_code = code
        self._forget(writer)
        task = asyncio.get_running_loop().create_task(self._close(writer, code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, writer: Writer, code: CloseCode, reason: str) -> None:
        try:
            await asyncio.wait_for(
                writer.ws.close(code=code, message=reason.encode()[:123]),
                self.websocket.close_timeout,
            )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.abort()

    async def close_all(self, code: CloseCode, reason: str) -> None:
        """Close every connection (shutdown) and wait until each has gone."""
        for writer in list(self.connections.values()):
            self.close(writer, code, reason)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.websocket.close_timeout * 2)

    # -- requests -----------------------------------------------------------------------------

    def receive(self, writer: Writer, data: str | bytes) -> None:
        """Handle one text frame from a client; answers are written before this returns."""
        if writer.state is not State.OPEN:
            return
        writer.requests += 1
        now = self._clock()
        session: Session = writer.session
        self._known_symbols()  # a pattern sees every symbol the market holds by now
        for action in session.receive(data, now):
            if isinstance(action, Send):
                if action.error is not None:
                    key = f"error_{action.error}"
                    self.counters[key] = self.counters.get(key, 0) + 1
                writer.send(action.message, now)
            elif isinstance(action, Hold):
                self.registry.subscribe(writer, action.syms)
                writer.forget_pending(action.syms)
                writer.set_options(action.syms, action.options)
                if session.patterns:
                    self._patterned[writer] = None
            elif isinstance(action, SendSnapshot):
                self._snapshot(writer, action.syms, action.options.view, now)
            elif isinstance(action, TellStale):
                self._tell_stale(writer, action.syms, now)
            elif isinstance(action, Release):
                self.registry.unsubscribe(writer, action.syms)
                writer.forget(action.syms)
                if not session.patterns:
                    self._patterned.pop(writer, None)
            elif isinstance(action, Close):
                if action.code is CloseCode.POLICY_VIOLATION:
                    self.counters["closed_rate_limited"] += 1
                self.close(writer, action.code, action.reason)
                return

    def _snapshot(self, writer: Writer, syms: list[int], view: Any, now: float) -> None:
        if not syms:
            writer.send(protocol.snapshot_frame([]), now)
        elif writer.writable:
            writer.send(self.frames.snapshot([(sym, view) for sym in syms]), now)
        else:
            # The socket is full: the current state waits, conflated, like any update would.
            for sym in syms:
                writer.mailbox.put(sym)
            self.stalled.add(writer)

    def _tell_stale(self, writer: Writer, syms: list[int], now: float) -> None:
        if not self.stale:
            return
        stale = self.stale
        by_reason: dict[str, list[str]] = {}
        names = self.market.symbols
        for sym in syms:
            reason = stale.get(sym)
            if reason is not None:
                by_reason.setdefault(reason, []).append(names[sym])
        for reason, stale_names in by_reason.items():
            writer.send(protocol.status("stale", stale_names, reason), now)

    def reject_binary(self, writer: Writer) -> None:
        key = f"error_{ErrorCode.BINARY_NOT_SUPPORTED}"
        self.counters[key] = self.counters.get(key, 0) + 1
        writer.send(
            protocol.error(
                ErrorCode.BINARY_NOT_SUPPORTED, "binary frames are not supported; send JSON text"
            ),
            self._clock(),
        )

    def _known_symbols(self) -> None:
        """Symbols new to the market since the last look: held by every session whose patterns
        match them."""
        count = len(self.market.symbols)
        if count == self._known:
            return
        new = range(self._known, count)
        self._known = count
        for writer in list(self._patterned):
            session: Session = writer.session
            for sym in new:
                options = session.match_new(sym)
                if options is not None:
                    self.registry.subscribe(writer, [sym])
                    if options != DEFAULT:
                        writer.set_options([sym], options)

    # -- fan-out ------------------------------------------------------------------------------

    def publish(self, syms: list[int]) -> None:
        """Offer each changed symbol to its subscribers and flush every socket that can take
        more. Never waits: a full socket keeps its symbols conflated in its mailbox. Never
        holds the loop for long either: after FLUSH_SLICE of flushing, the writers left are
        flushed on the loop's next turns (their mailboxes conflate what comes meanwhile), so a
        fan-out to 10,000 connections does not keep pings, requests and handshakes waiting."""
        if self._patterned and len(self.market.symbols) != self._known:
            self._known_symbols()
        now = self._clock()
        dirty: dict[Writer, None] = {}
        subscribers = self.registry.subscribers
        for sym in syms:
            for writer in subscribers(sym):
                mailbox = writer.mailbox
                # Mailbox.put, inlined: this runs once per subscriber per changed symbol.
                if sym in mailbox:
                    mailbox.conflated += 1
                else:
                    mailbox[sym] = None
                dirty[writer] = None
        if self.stalled:
            dirty.update(dict.fromkeys(self.stalled))
            self.stalled = set()
        if self.backlog:  # a fan-out is still under way: those waiting keep their places
            self._enqueue(dirty)
            self._schedule_drain()  # (already is, unless the last drain failed)
            return
        writers = list(dirty)
        market, stalled = self.market, self.stalled
        deadline = time.perf_counter() + FLUSH_SLICE
        for start in range(0, len(writers), FLUSH_CHECK):
            for writer in writers[start : start + FLUSH_CHECK]:
                if not writer.flush(now, market):
                    stalled.add(writer)
            if time.perf_counter() > deadline and start + FLUSH_CHECK < len(writers):
                self._enqueue(writers[start + FLUSH_CHECK :])
                self._schedule_drain()
                return

    def _enqueue(self, writers: Iterable[Writer]) -> None:
        """Put `writers` at the end of the backlog, but for those already waiting in it."""
        waiting, backlog = self._waiting, self.backlog
        for writer in writers:
            if writer not in waiting:
                waiting.add(writer)
                backlog.append(writer)

    def _schedule_drain(self) -> None:
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Flush the backlog for another FLUSH_SLICE; again on the next turn if some are left."""
        self._draining = False
        backlog, waiting, stalled = self.backlog, self._waiting, self.stalled
        now, market = self._clock(), self.market
        deadline = time.perf_counter() + FLUSH_SLICE
        try:
            while backlog:
                for _ in range(min(FLUSH_CHECK, len(backlog))):
                    writer = backlog.popleft()
                    waiting.discard(writer)
                    if not writer.flush(now, market):
                        stalled.add(writer)
                if time.perf_counter() > deadline:
                    break
        finally:
            if backlog:
                self._schedule_drain()

    def status(self, state: str, syms: list[int], reason: str | None) -> None:
        """Tell each subscriber of `syms` that those it holds turned `stale` or `live`. What
        is pending for them is flushed first (if the socket takes it), so the status follows
        the data it speaks of."""
        if state == "stale":
            self.stale.update(dict.fromkeys(syms, reason or "stale"))
        else:
            for sym in syms:
                self.stale.pop(sym, None)
        held: dict[Writer, list[int]] = {}
        subscribers = self.registry.subscribers
        for sym in syms:
            for writer in subscribers(sym):
                held.setdefault(writer, []).append(sym)
        if not held:
            return
        now, market, names = self._clock(), self.market, self.market.symbols
        for writer, mine in held.items():
            if writer.mailbox and not writer.flush(now, market):
                self.stalled.add(writer)
            writer.send(protocol.status(state, [names[sym] for sym in mine], reason), now)

    def retry_stalled(self) -> None:
        """Flush again the writers whose sockets were full, through the backlog: a storm can
        leave thousands of them, and they too are flushed a slice at a time."""
        if self.stalled:
            stalled, self.stalled = self.stalled, set()
            self._enqueue(stalled)
            if not self._draining:
                self._drain()

    def _wake(self, writer: Writer, delay: float) -> None:
        """A writer's throttle ends in `delay` seconds: send what it held then."""
        asyncio.get_running_loop().call_later(delay, self._release, writer)

    def _release(self, writer: Writer) -> None:
        if writer.state is not State.OPEN:
            return
        now = self._clock()
        writer.release(now)
        if writer.mailbox and not writer.flush(now, self.market):
            self.stalled.add(writer)

    # -- reading ------------------------------------------------------------------------------

    def activity(self) -> dict[str, int]:
        """Running counts of what the loop does for connections, cheap to read (no sums over
        connections): logged beside a stall as changes (feed.loopwatch)."""
        return {
            "accepted": self.counters["accepted"],
            "closed": self.counters["accepted"] - len(self.connections),
            "handshakes_deferred": self.handshakes.deferred,
            "requests": self.requests.taken,
            "backlog": len(self.backlog),
        }

    def stats(self, per_connection: bool = False) -> dict[str, Any]:
        """Totals over live connections (and conflation over closed ones too), summed in C: an
        operator polling /stats must not hold up 10,000 clients' updates. Each connection's own
        counters only when asked, since 10,000 of them make a large answer."""
        conns = self.connections.values()
        result = {
            "connections": len(conns),
            "stalled": len(self.stalled),
            "conflated": self.counters["conflated_closed"]
            + sum(map(_conflated, conns))
            + sum(map(_throttled, conns)),
            "frames_sent": sum(map(_frames_sent, conns)),
            "bytes_sent": sum(map(_bytes_sent, conns)),
            "frames_sent_total": self.counters["frames_closed"] + sum(map(_frames_sent, conns)),
            "bytes_sent_total": self.counters["bytes_closed"] + sum(map(_bytes_sent, conns)),
            "view_payloads": self.frames.encoded,
            "backlog": len(self.backlog),
            "handshakes_deferred": self.handshakes.deferred,
            "handshakes_waiting": len(self.handshakes.waiting),
            "requests_deferred": self.requests.deferred,
            **self.counters,
        }
        if per_connection:
            now = self._clock()
            result["per_connection"] = [conn.stats(now) for conn in conns]
        return result


_conflated = operator.attrgetter("mailbox.conflated")
_throttled = operator.attrgetter("throttled")
_frames_sent = operator.attrgetter("frames_sent")
_bytes_sent = operator.attrgetter("bytes_sent")
