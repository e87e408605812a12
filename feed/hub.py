"""The hub: live connections, what each subscribes to, and the fan-out of snapshots to them.

The hub never awaits a client. `publish` puts each changed snapshot (encoded once) into the
mailbox of every subscriber and flushes those whose sockets can take more; the rest stay
conflated until their socket drains. A sweeper sends heartbeats to idle connections, retries
stalled ones and closes those that stayed full past the slow-consumer timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from feed import protocol
from feed.config import LimitsConfig, WebSocketConfig
from feed.connection import Connection, State
from feed.market import Market
from feed.protocol import CloseCode, ErrorCode, Ping, ProtocolError, Subscribe, Unsubscribe
from feed.ratelimit import TokenBucket
from feed.registry import SubscriptionRegistry

log = logging.getLogger(__name__)

SWEEP_BUDGET = 0.0003
"""Seconds of sweeping (heartbeats, mostly) per turn of the event loop."""
STALLED_RETRY = 0.005
"""Seconds between retries of connections whose sockets were full, when no tick comes first."""


class Hub:
    def __init__(
        self,
        market: Market,
        limits: LimitsConfig,
        websocket: WebSocketConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.market = market
        self.limits = limits
        self.websocket = websocket
        self._clock = clock
        self.registry: SubscriptionRegistry[Connection] = SubscriptionRegistry()
        self.connections: dict[int, Connection] = {}
        self.stale: dict[int, str] = {}
        """Symbols whose source went quiet or away, and why (what `status` said last)."""
        self._stalled: set[Connection] = set()
        """Connections with pending snapshots whose sockets were full at the last try."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_period = min(
            0.5, websocket.heartbeat_interval / 4, limits.slow_consumer_timeout / 4
        )
        self.counters = {
            "accepted": 0,
            "rejected_full": 0,
            "closed_slow": 0,
            "closed_rate_limited": 0,
            "conflated_closed": 0,
        }

    # -- connections --------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.limits.max_connections

    def connect(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> Connection:
        now = self._clock()
        bucket = TokenBucket(self.limits.control_rate, self.limits.control_burst, now)
        conn = Connection(
            ws, transport, write_limit=self.websocket.write_buffer_limit, bucket=bucket, now=now
        )
        self.connections[conn.id] = conn
        self.counters["accepted"] += 1
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection whose receive loop ended, however it ended."""
        if self.connections.pop(conn.id, None) is None:
            return
        conn.state = State.CLOSED
        self.registry.remove(conn)
        self._stalled.discard(conn)
        self.counters["conflated_closed"] += conn.mailbox.conflated

    def close(self, conn: Connection, code: CloseCode, reason: str) -> None:
        """Start closing a connection; it stops receiving updates at once."""
        if conn.state is not State.OPEN:
            return
        log.info("closing connection %d (%s): %d %s", conn.id, conn.peer, code, reason)
        conn.state = State.CLOSING
        conn.close_code = code
        self.registry.remove(conn)
        self._stalled.discard(conn)
        task = asyncio.get_running_loop().create_task(self._close(conn, code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, conn: Connection, code: CloseCode, reason: str) -> None:
        try:
            await asyncio.wait_for(
                conn.ws.close(code=code, message=reason.encode()[:123]),
                self.websocket.close_timeout,
            )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            conn.abort()

    async def close_all(self, code: CloseCode, reason: str) -> None:
        """Close every connection (shutdown) and wait until each has gone."""
        for conn in list(self.connections.values()):
            self.close(conn, code, reason)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.websocket.close_timeout * 2)

    # -- requests -----------------------------------------------------------------------------

    def receive(self, conn: Connection, data: str | bytes) -> None:
        """Handle one text frame from a client; answers are written before this returns."""
        if conn.state is not State.OPEN:
            return
        now = self._clock()
        if not conn.bucket.take(now):
            self.counters["closed_rate_limited"] += 1
            self.close(
                conn,
                CloseCode.POLICY_VIOLATION,
                f"more than {self.limits.control_rate:g} messages per second",
            )
            return
        try:
            request = protocol.parse_request(data)
            if isinstance(request, Subscribe):
                self._subscribe(conn, request, now)
            elif isinstance(request, Unsubscribe):
                self._unsubscribe(conn, request, now)
            elif isinstance(request, Ping):
                conn.send(protocol.pong(request.id, time.time_ns()), now)
        except ProtocolError as exc:
            conn.send(protocol.error(exc.code, exc.message, exc.request_id), now)

    def reject_binary(self, conn: Connection) -> None:
        conn.send(
            protocol.error(
                ErrorCode.BINARY_NOT_SUPPORTED, "binary frames are not supported; send JSON text"
            ),
            self._clock(),
        )

    def _resolve(self, names: Iterable[str], request_id: protocol.RequestId) -> list[int]:
        index = self.market.symbols.lookup
        unknown = [name for name in names if name not in index]
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            shown = ", ".join(unknown[:10]) + more
            raise ProtocolError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol(s): {shown}", request_id)
        return [index[name] for name in names]

    def _subscribe(self, conn: Connection, request: Subscribe, now: float) -> None:
        syms = self._resolve(request.symbols, request.id)
        held = self.registry.count(conn)
        after = held + sum(1 for sym in syms if not self.registry.holds(conn, sym))
        limit = self.limits.max_symbols_per_connection
        if after > limit:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SYMBOLS,
                f"this would hold {after} symbols; the limit is {limit} per connection",
                request.id,
            )
        self.registry.subscribe(conn, syms)
        conn.mailbox.discard(syms)
        conn.send(protocol.subscribed(request.id, request.symbols), now)
        if conn.writable:
            payloads = [self.market.payload(sym) for sym in syms]
            conn.send(protocol.snapshot_frame(payloads), now)
        else:
            # The socket is full: the current state waits, conflated, like any update would.
            for sym in syms:
                conn.mailbox.put(sym)
            self._stalled.add(conn)
        if self.stale:
            stale = self.stale
            by_reason: dict[str, list[str]] = {}
            names = self.market.symbols
            for sym in syms:
                reason = stale.get(sym)
                if reason is not None:
                    by_reason.setdefault(reason, []).append(names[sym])
            for reason, stale_names in by_reason.items():
                conn.send(protocol.status("stale", stale_names, reason), now)

    def _unsubscribe(self, conn: Connection, request: Unsubscribe, now: float) -> None:
        syms = self._resolve(request.symbols, request.id)
        removed = self.registry.unsubscribe(conn, syms)
        conn.mailbox.discard(removed)
        names = self.market.symbols
        conn.send(protocol.unsubscribed(request.id, [names[sym] for sym in removed]), now)

    # -- fan-out ------------------------------------------------------------------------------

    def publish(self, syms: list[int]) -> None:
        """Offer each changed symbol to its subscribers and flush every socket that can take
        more. Never waits: a full socket keeps its symbols conflated in its mailbox."""
        now = self._clock()
        dirty: dict[Connection, None] = {}
        subscribers = self.registry.subscribers
        for sym in syms:
            for conn in subscribers(sym):
                mailbox = conn.mailbox
                # Mailbox.put, inlined: this runs once per subscriber per changed symbol.
                if sym in mailbox:
                    mailbox.conflated += 1
                else:
                    mailbox[sym] = None
                dirty[conn] = None
        if self._stalled:
            dirty.update(dict.fromkeys(self._stalled))
        market = self.market
        self._stalled = {conn for conn in dirty if not conn.flush(now, market)}

    def status(self, state: str, syms: list[int], reason: str | None) -> None:
        """Tell each subscriber of `syms` that those it holds turned `stale` or `live`. What
        is pending for them is flushed first (if the socket takes it), so the status follows
        the data it speaks of."""
        if state == "stale":
            self.stale.update(dict.fromkeys(syms, reason or "stale"))
        else:
            for sym in syms:
                self.stale.pop(sym, None)
        held: dict[Connection, list[int]] = {}
        subscribers = self.registry.subscribers
        for sym in syms:
            for conn in subscribers(sym):
                held.setdefault(conn, []).append(sym)
        if not held:
            return
        now, market, names = self._clock(), self.market, self.market.symbols
        for conn, mine in held.items():
            if conn.mailbox and not conn.flush(now, market):
                self._stalled.add(conn)
            conn.send(protocol.status(state, [names[sym] for sym in mine], reason), now)

    def retry_stalled(self) -> None:
        if self._stalled:
            now, market = self._clock(), self.market
            self._stalled = {conn for conn in self._stalled if not conn.flush(now, market)}

    def sweep(self, conns: Sequence[Connection], start: int = 0, budget: float = math.inf) -> int:
        """Heartbeats for idle connections from `conns[start]` on; close those stalled past the
        timeout. Stops once `budget` seconds are spent; returns where to go on from."""
        now = self._clock()
        deadline = now + budget
        timeout = self.limits.slow_consumer_timeout
        idle = self.websocket.heartbeat_interval
        index = start
        while index < len(conns):
            conn = conns[index]
            index += 1
            if conn.state is not State.OPEN:
                continue
            stalled_for = conn.check_stall(now)
            if stalled_for > timeout:
                self.counters["closed_slow"] += 1
                self.close(
                    conn,
                    CloseCode.SLOW_CONSUMER,
                    f"slow consumer: socket full for {stalled_for:.1f} s",
                )
            elif not stalled_for and now - conn.last_write >= idle:
                conn.send(protocol.heartbeat(time.time_ns()), now)
            if self._clock() >= deadline:
                break
        return index

    async def run_sweeper(self) -> None:
        """Runs until cancelled: retries stalled sockets often, sweeps every connection less."""
        next_sweep = self._clock() + self._sweep_period
        while True:
            await asyncio.sleep(STALLED_RETRY if self._stalled else self._sweep_period)
            self.retry_stalled()
            if self._clock() >= next_sweep:
                # In slices of at most SWEEP_BUDGET, with the event loop in between: sweeping
                # 10,000 connections (and heartbeating the idle ones) at once would hold up
                # every update for milliseconds.
                conns = list(self.connections.values())
                start = 0
                while start < len(conns):
                    start = self.sweep(conns, start, SWEEP_BUDGET)
                    await asyncio.sleep(0)
                next_sweep = self._clock() + self._sweep_period

    # -- reading ------------------------------------------------------------------------------

    def stats(self, per_connection: bool = False) -> dict[str, Any]:
        """Totals over live connections (and conflation over closed ones too), summed in C: an
        operator polling /stats must not hold up 10,000 clients' updates. Each connection's own
        counters only when asked, since 10,000 of them make a large answer."""
        conns = self.connections.values()
        result = {
            "connections": len(conns),
            "stalled": len(self._stalled),
            "conflated": self.counters["conflated_closed"] + sum(map(_conflated, conns)),
            "frames_sent": sum(map(_frames_sent, conns)),
            "bytes_sent": sum(map(_bytes_sent, conns)),
            **self.counters,
        }
        if per_connection:
            now = self._clock()
            result["per_connection"] = [conn.stats(now) for conn in conns]
        return result


_conflated = operator.attrgetter("mailbox.conflated")
_frames_sent = operator.attrgetter("frames_sent")
_bytes_sent = operator.attrgetter("bytes_sent")
