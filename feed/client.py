"""A Python client for the feed (docs/protocol.md): typed snapshots, reconnects by itself.

    async with feed.client.connect("ws://127.0.0.1:8080/ws") as feed:
        await feed.subscribe(["AAPL", "MSFT"])  # raises FeedError(code, message) when refused
        async for snap in feed:                   # Snapshot objects, the newest per symbol
            print(snap.symbol, snap.seq, snap.bid, snap.ask, snap.last)

What reaches the consumer, and how:
- `async for snap in feed` yields `Snapshot`s only (from `snapshot` and `update` frames alike).
  `async for event in feed.events()` yields every event in the order it happened: a
  `Snapshot`, a `Status` (symbols turned `stale`, with a reason, or `live` again), a
  `ConnectionState` (connecting, connected, disconnected with the reason and the delay before
  the next attempt, closed) or a `Refused` (symbols held that a new connection's feed refused,
  set aside: see below). Both draw from one inbox, so use one consumer at a time; the
  snapshot iterator drops the other events it passes over, whose current values stay readable:
  `feed.state`, `feed.stale`, `feed.refused`. Either iteration ends when the feed is closed.
- The inbox is bounded by the symbols held, whatever the consumer does: it holds at most one
  snapshot per symbol (a newer one replaces the waiting one, counted in
  `SymbolStats.superseded`), the newest status of each symbol, the newest refusal and the
  newest connection state, each placed by its newest change. A consumer slower than the feed
  gets the newest state of every symbol, never a backlog (`feed.pending` counts what waits).
- Within one connection a symbol's `seq` never goes backwards: an older or repeated snapshot is
  dropped. A new connection may start lower (a restarted feed counts from its own start).
- `feed.latest(symbol)` is the newest snapshot received, whether or not it was consumed.

Reconnecting: when the connection is lost, or when neither data, a heartbeat nor a pong arrives
for `idle_timeout` seconds (the watchdog), the client reconnects, attempt n waiting a random
delay in [0, min(backoff_max, backoff_min * 2**n)] (exponential backoff, full jitter; n starts
again at 0 once a connection's subscriptions are accepted). On each new connection it
subscribes again to every symbol held, then resends the requests not yet answered; symbols
marked stale are taken as live again (a `Status` says so) until the feed says otherwise, which
it does right after the snapshot. Only the first connection may fail for good:
`FeedError("cannot_connect", ...)` from `async with` (or `start()`).

Symbols the feed no longer has: when the feed refuses that resubscribe with `unknown_symbol` (a
restarted feed whose symbols come from producers and some have not ticked yet, or a symbol gone for
good; the feed refuses a request whole), the client reads `/symbols` beside the WebSocket URL
(`ws://H/ws?Q` -> `http://H/symbols?Q`) and subscribes to the symbols held that it lists. The
others are set aside and the connection stays up: `feed.refused` maps each to the feed's error, a
`Refused` event lists them all, they stay in `feed.symbols` and are asked for again on every later
connection and by `subscribe` (which raises the feed's `FeedError` while it still refuses them);
`unsubscribe` lets go of them without asking the feed, which does not know them. Any other refusal
of the resubscribe (`too_many_symbols`, ...), a `/symbols` that cannot be read, or a refusal still
after a few rounds, drops the connection and retries with backoff.

Figures (`feed.stats(symbol)`, `feed.clock`): the latency of each update is its receipt time
minus its `ts`, converted to this host's clock with the offset estimated from `ping`/`pong`
(the sample with the smallest round trip among the recent ones; uncorrected until the first
pong); `conflated` counts the ticks folded by the feed that never arrived as a snapshot of
their own, from the jumps of `seq` within a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Final

import aiohttp
import orjson
import yarl

from feed.client_inbox import Inbox
from feed.client_values import (
    Clock,
    ConnectionState,
    Event,
    FeedError,
    Refused,
    Snapshot,
    State,
    Status,
    SymbolState,
    SymbolStats,
)
from feed.protocol import CloseCode

__all__ = [
    "Clock",
    "ConnectionState",
    "Event",
    "Feed",
    "FeedError",
    "Refused",
    "Snapshot",
    "State",
    "Status",
    "SymbolState",
    "SymbolStats",
    "connect",
]

log = logging.getLogger("feed.client")

DEFAULT_URL: Final = "ws://127.0.0.1:8080/ws"
PING_SAMPLES: Final = 8
"""Recent ping round trips the clock estimate picks its best sample from."""
PINGS_IN_FLIGHT: Final = 16
EARLY_PINGS: Final = 4
EARLY_PING_GAP: Final = 0.05
"""Pings sent this many seconds apart on connecting, before one every `ping_interval`."""
SET_ASIDE_ROUNDS: Final = 3
"""Refusals of the resubscribe (`unknown_symbol`) a connection takes, each answered by setting
aside the symbols `/symbols` does not list, before it is dropped."""
_FAILURES = (OSError, aiohttp.ClientError, TimeoutError)
"""What opening a connection, or closing one, or reading `/symbols`, may raise."""
_CLOSING: Final = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


@dataclass(slots=True)
class _Figures:
    received: int = 0
    conflated: int = 0
    superseded: int = 0
    latency_ns: int | None = None
    latency_sum: int = 0
    latency_count: int = 0
    latency_max: int | None = None

    def latency(self, ns: int) -> None:
        self.latency_ns = ns
        self.latency_sum += ns
        self.latency_count += 1
        if self.latency_max is None or ns > self.latency_max:
            self.latency_max = ns

    def public(self, offset_ns: int) -> SymbolStats:
        """The figures, latencies corrected with the clock offset estimated so far."""

        def seconds(ns: float | None) -> float | None:
            return None if ns is None else (ns + offset_ns) / 1e9

        mean = self.latency_sum / self.latency_count if self.latency_count else None
        return SymbolStats(
            self.received, self.conflated, self.superseded,
            seconds(self.latency_ns), seconds(mean), seconds(self.latency_max),
        )  # fmt: skip


@dataclass(slots=True)
class _Request:
    op: str
    symbols: tuple[str, ...]
    future: asyncio.Future[list[str]]
    internal: bool = False
    """The resubscribe of a new connection (answered by the client itself)."""
    frame: str = ""


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status} {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _symbols_url(url: str) -> yarl.URL:
    """`GET /symbols` beside the WebSocket URL `url`: http(s), the same host, path and query."""
    ws = yarl.URL(url)
    http = ws.join(yarl.URL("symbols")).with_query(ws.query)
    return http.with_scheme("https" if ws.scheme in ("wss", "https") else "http")


def _closed_reason(code: int | None) -> str:
    if code is None:
        return "connection lost"
    try:
        name = CloseCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"closed by the feed: {code}"
    return f"closed by the feed: {code} ({name})"


class Feed:
    """A connection to the feed that stays connected: see the module docstring.

    Options: `idle_timeout` seconds without any frame before the watchdog reconnects (the feed
    sends a heartbeat after 5 idle seconds by default, and answers our pings);
    `connect_timeout` for each attempt; `backoff_min`/`backoff_max` seconds for the delays
    between attempts; `ping_interval` seconds between the pings that estimate the clock offset.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        idle_timeout: float = 15.0,
        connect_timeout: float = 5.0,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        ping_interval: float = 5.0,
        token: str | None = None,
    ) -> None:
        self.url = url
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        """Sent with the WebSocket upgrade and with `GET /symbols` (a feed with auth.required)."""
        self._idle_timeout = _positive("idle_timeout", idle_timeout)
        self._connect_timeout = _positive("connect_timeout", connect_timeout)
        self._backoff_min = _positive("backoff_min", backoff_min)
        self._backoff_max = _positive("backoff_max", backoff_max)
        self._ping_interval = _positive("ping_interval", ping_interval)
        self._ids = itertools.count(1)
        self._held: dict[str, None] = {}
        self._requests: dict[int, _Request] = {}
        self._pings: dict[int, int] = {}
        self._samples: deque[tuple[int, int]] = deque(maxlen=PING_SAMPLES)
        self._offset_ns = 0
        self._clock: Clock | None = None
        self._latest: dict[str, Snapshot] = {}
        self._figures: dict[str, _Figures] = {}
        self._stale: dict[str, str] = {}
        self._refused: dict[str, str] = {}
        self._refusal: tuple[tuple[str, ...], FeedError] | None = None
        self._rounds = 0
        self._seqs: dict[str, tuple[int, int]] = {}
        self._inbox = Inbox()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._state = ConnectionState(State.CONNECTING, url, 0)
        self._connects = 0
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ready = False
        self._healthy = False
        self._drop: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # The consumer's side.

    def __aiter__(self) -> AsyncIterator[Snapshot]:
        return self._snapshots()

    async def _snapshots(self) -> AsyncIterator[Snapshot]:
        while (event := await self._inbox.get()) is not None:
            if isinstance(event, Snapshot):
                yield event

    async def events(self) -> AsyncIterator[Event]:
        """Every event, snapshots, statuses and connection states, in order (conflated)."""
        while (event := await self._inbox.get()) is not None:
            yield event

    def latest(self, symbol: str) -> Snapshot | None:
        """The newest snapshot of `symbol` received, or None."""
        return self._latest.get(symbol)

    def stats(self, symbol: str) -> SymbolStats | None:
        """What this client saw of `symbol` (None before its first snapshot)."""
        figures = self._figures.get(symbol)
        return None if figures is None else figures.public(self._offset_ns)

    @property
    def symbols(self) -> list[str]:
        """The symbols held (subscribed and not unsubscribed), in the order subscribed."""
        return list(self._held)

    @property
    def stale(self) -> Mapping[str, str]:
        """The symbols held that the feed says are stale, each with its reason."""
        return MappingProxyType(self._stale)

    @property
    def refused(self) -> Mapping[str, str]:
        """The symbols held that the feed refused on the latest connection, set aside (asked for
        again on the next one), each with the feed's error (`"unknown_symbol: ..."`)."""
        return MappingProxyType(self._refused)

    @property
    def state(self) -> ConnectionState:
        """The connection's newest state (the last `ConnectionState` event)."""
        return self._state

    @property
    def clock(self) -> Clock | None:
        """The clock offset estimate of this connection, once a pong came back."""
        return self._clock

    @property
    def pending(self) -> int:
        """Events waiting for the consumer (at most one per symbol, plus a few)."""
        return len(self._inbox)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once `predicate()` is true, tried now and after each frame or state change;
        TimeoutError after `timeout` seconds."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._waiters.remove(entry)

    # Requests.

    async def subscribe(self, symbols: Iterable[str], timeout: float | None = 10.0) -> list[str]:
        """Subscribe; returns the symbols as the feed confirmed them. Raises `FeedError` when
        refused (`unknown_symbol`, ...), TimeoutError without an answer in `timeout` seconds
        (a request sent while disconnected waits for the next connection). Symbols set aside
        (`refused`) stay held when refused again and are no longer set aside once accepted."""
        return await self._request("subscribe", symbols, timeout)

    async def unsubscribe(self, symbols: Iterable[str], timeout: float | None = 10.0) -> list[str]:
        """Unsubscribe; returns the symbols that were held. Their waiting snapshots are dropped.
        Symbols set aside (`refused`) are let go of here, without asking the feed."""
        if isinstance(symbols, str) or self._closed:
            return await self._request("unsubscribe", symbols, timeout)  # its error
        names = list(dict.fromkeys(symbols))
        aside = {name for name in names if name in self._refused}
        for name in aside:
            self._let_go(name)
        rest = [name for name in names if name not in aside]
        if aside and not rest:
            return names
        held = set(await self._request("unsubscribe", rest, timeout)) | aside
        return [name for name in names if name in held]

    async def _request(self, op: str, symbols: Iterable[str], timeout: float | None) -> list[str]:
        if isinstance(symbols, str):
            raise TypeError(f"symbols must be a list of names, not the string {symbols!r}")
        if self._closed:
            raise FeedError("closed", "the client is closed")
        request_id = next(self._ids)
        names = tuple(symbols)
        request = _Request(op, names, asyncio.get_running_loop().create_future())
        request.frame = orjson.dumps({"op": op, "symbols": names, "id": request_id}).decode()
        self._requests[request_id] = request
        try:
            if self._ready and self._ws is not None:
                await self._send(self._ws, request.frame)
            async with asyncio.timeout(timeout):
                return await request.future
        finally:
            self._requests.pop(request_id, None)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, frame: str) -> bool:
        """Send one frame; False when the connection is going (it is sent again on the next)."""
        try:
            await ws.send_str(frame)
        except (ConnectionError, aiohttp.ClientError):
            return False
        return True

    # The connection.

    async def __aenter__(self) -> Feed:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the first connection (FeedError `cannot_connect` if it fails), then keep one."""
        self._session = aiohttp.ClientSession(headers=self._headers)
        try:
            ws = await self._open()
        except _FAILURES as exc:
            await self._session.close()
            self._closed = True
            self._set_state(State.CLOSED, error=_describe(exc))
            self._inbox.close()
            raise FeedError(
                "cannot_connect", f"cannot connect to {self.url}: {_describe(exc)}"
            ) from None
        self._task = asyncio.create_task(self._run(ws))
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The connection task ended without close(): a bug, not a network fault (those it
        survives); the iterations end rather than wait forever."""
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        log.error("%s: the client stopped: %r", self.url, exc, exc_info=exc)
        self._closed = True
        self._set_state(State.CLOSED, reason=f"the client stopped: {exc!r}")
        self._inbox.close()

    async def close(self) -> None:
        """Close the connection and end the iterations; unanswered requests get FeedError."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for request in self._requests.values():
            if not request.future.done():
                request.future.set_exception(FeedError("closed", "the client was closed"))
        if self._session is not None:
            await self._session.close()
        self._set_state(State.CLOSED)
        self._inbox.close()

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        async with asyncio.timeout(self._connect_timeout):
            return await self._session.ws_connect(
                self.url,
                timeout=aiohttp.ClientWSTimeout(ws_close=self._connect_timeout),
                max_msg_size=1 << 26,
            )

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        attempt = 0
        while True:
            reason = await self._serve(ws)
            error = None
            if self._healthy:
                attempt = 0
            while True:
                ceiling = min(self._backoff_max, self._backoff_min * 2 ** min(attempt, 60))
                delay = random.uniform(0, ceiling)
                attempt += 1
                log.info("%s: %s; reconnecting in %.2f s", self.url, error or reason, delay)
                self._set_state(State.DISCONNECTED, reason, error, delay)
                await asyncio.sleep(delay)
                self._set_state(State.CONNECTING, reason, error)
                try:
                    ws = await self._open()
                    break
                except _FAILURES as exc:
                    error = _describe(exc)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Use one connection until it ends; the reason it ended."""
        self._ws, self._ready, self._healthy, self._drop = ws, False, False, None
        self._refusal, self._rounds = None, 0
        self._seqs.clear()
        self._pings.clear()
        self._samples.clear()
        self._connects += 1
        self._set_state(State.CONNECTED)
        pinger = asyncio.create_task(self._ping_loop(ws))
        try:
            await self._resume(ws)
            return await self._receive(ws)
        finally:
            pinger.cancel()
            self._ws, self._ready = None, False
            with contextlib.suppress(*_FAILURES):
                await ws.close()

    async def _resume(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Subscribe again to every symbol held, then resend the requests not answered."""
        for request_id in [k for k, request in self._requests.items() if request.internal]:
            del self._requests[request_id]
        if self._held:
            await self._resubscribe(ws, tuple(self._held))
        else:
            self._healthy = True
        waiting = [request for request in self._requests.values() if not request.internal]
        self._ready = True  # from here on a new request is sent by its caller
        for request in waiting:
            await self._send(ws, request.frame)

    async def _resubscribe(
        self, ws: aiohttp.ClientWebSocketResponse, names: tuple[str, ...]
    ) -> None:
        """Send the subscribe of a new connection (answered by the client itself)."""
        request_id = next(self._ids)
        frame = orjson.dumps({"op": "subscribe", "symbols": names, "id": request_id}).decode()
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = _Request("subscribe", names, future, True, frame)
        await self._send(ws, frame)

    async def _set_aside(
        self, ws: aiohttp.ClientWebSocketResponse, names: tuple[str, ...], error: FeedError
    ) -> None:
        """The feed refused the resubscribe of `names` (`unknown_symbol`): subscribe to those
        `/symbols` lists, set the others aside (`refused`, a `Refused` event), or give up on
        this connection (`_drop`) when `/symbols` cannot be read or the rounds are spent."""
        self._refusal = None
        self._rounds += 1
        refused = f"subscribing again was refused: {error}"
        if self._rounds > SET_ASIDE_ROUNDS:
            self._drop = f"{refused} ({SET_ASIDE_ROUNDS} times)"
            return
        try:
            known = await self._feed_symbols()
        except (*_FAILURES, ValueError) as exc:
            self._drop = f"{refused}; GET /symbols: {_describe(exc)}"
            return
        rest: list[str] = []
        for name in names:
            if name not in self._held:
                continue  # unsubscribed meanwhile
            if name in known:
                self._refused.pop(name, None)
                rest.append(name)
            else:
                self._refused[name] = str(error)
        if self._refused:
            aside = tuple(self._refused)
            log.warning("%s: %s; set aside: %s", self.url, refused, ", ".join(aside))
            self._inbox.put(("refused", None), Refused(aside, error.code, error.message))
        if rest:
            await self._resubscribe(ws, tuple(rest))
        else:
            self._healthy = True

    async def _feed_symbols(self) -> set[str]:
        """Every symbol of the feed: `GET /symbols` beside the WebSocket URL."""
        assert self._session is not None
        async with (
            asyncio.timeout(self._connect_timeout),
            self._session.get(_symbols_url(self.url)) as answer,
        ):
            answer.raise_for_status()
            body = orjson.loads(await answer.read())
        if not isinstance(body, list):
            raise ValueError(f"not a list of symbols: {str(body)[:80]}")
        return {str(name) for name in body}

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # A few pings soon after connecting (a moment apart, so that they do not queue behind
        # one another or the first snapshot): the quickest answer makes the first estimate.
        for count in itertools.count():
            if len(self._pings) >= PINGS_IN_FLIGHT:
                del self._pings[next(iter(self._pings))]
            request_id = next(self._ids)
            self._pings[request_id] = time.time_ns()
            if not await self._send(ws, f'{{"op":"ping","id":{request_id}}}'):
                return
            await asyncio.sleep(EARLY_PING_GAP if count < EARLY_PINGS else self._ping_interval)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        idle = self._idle_timeout
        while True:
            try:
                message = await ws.receive(timeout=idle)
            except TimeoutError:
                return f"no data or heartbeat for {idle:g} s"
            kind = message.type
            if kind is aiohttp.WSMsgType.TEXT:
                self._frame(message.data, time.time_ns())
                if self._refusal is not None:
                    await self._set_aside(ws, *self._refusal)
                if self._drop is not None:
                    return self._drop
            elif kind is aiohttp.WSMsgType.ERROR:
                return f"connection lost: {_describe(message.data)}"
            elif kind in _CLOSING:
                return _closed_reason(ws.close_code)

    # Frames from the feed.

    def _frame(self, data: str | bytes, now: int) -> None:
        try:
            frame = orjson.loads(data)
            kind = frame.get("type")
            if kind == "update":
                self._snapshots_in(frame["data"], now, True)
            elif kind == "snapshot":
                self._snapshots_in(frame["data"], now, False)
            elif kind == "pong":
                self._pong(frame, now)
            elif kind == "status":
                self._status(frame)
            elif kind in ("subscribed", "unsubscribed"):
                self._answer(frame)
            elif kind == "error":
                self._error(frame)
        except (ValueError, KeyError, TypeError, AttributeError):  # not the protocol: skipped
            log.warning("%s: a frame this client cannot read: %.120r", self.url, data)
        if self._waiters:
            self._notify()

    def _snapshots_in(self, items: list[dict[str, Any]], now: int, update: bool) -> None:
        seqs, figures, latest, inbox = self._seqs, self._figures, self._latest, self._inbox
        for item in items:
            snap = Snapshot.from_wire(item)
            symbol = snap.symbol
            held = seqs.get(symbol)
            previous = None
            if held is not None and held[0] == snap.epoch:  # a new epoch starts seq again
                previous = held[1]
                if snap.seq <= previous:
                    continue
            seqs[symbol] = (snap.epoch, snap.seq)
            figure = figures.get(symbol)
            if figure is None:
                figure = figures[symbol] = _Figures()
            figure.received += 1
            if previous is not None:
                figure.conflated += snap.seq - previous - 1
            if update and snap.ts:
                figure.latency(now - snap.ts)  # corrected when read, with the best estimate
            latest[symbol] = snap
            if inbox.put(("snapshot", symbol), snap):
                figure.superseded += 1

    def _pong(self, frame: dict[str, Any], now: int) -> None:
        request_id, ts = frame.get("id"), frame.get("ts")
        sent = self._pings.pop(request_id, None) if isinstance(request_id, int) else None
        if sent is None or not isinstance(ts, int):
            return
        self._samples.append((now - sent, ts - (sent + now) // 2))
        rtt, offset = min(self._samples)
        self._offset_ns = offset
        self._clock = Clock(offset / 1e9, rtt / 1e9)

    def _status(self, frame: dict[str, Any]) -> None:
        try:
            state = SymbolState(str(frame.get("state")))
        except ValueError:
            return
        names = tuple(frame.get("symbols", ()))
        reason = frame.get("reason")
        for name in names:
            if state is SymbolState.STALE:
                self._stale[name] = reason or "stale"
            else:
                self._stale.pop(name, None)
        self._inbox.put_status(Status(state, names, reason))

    def _answer(self, frame: dict[str, Any]) -> None:
        request = self._pop_request(frame)
        if request is None:
            return
        names = list(frame.get("symbols", ()))
        if request.op == "subscribe":
            for name in names:
                self._held[name] = None
                self._refused.pop(name, None)
        else:
            for name in names:
                self._let_go(name)
        if request.internal:
            self._healthy = True
            back = tuple(name for name in names if name in self._stale)
            if back:
                for name in back:
                    del self._stale[name]
                self._inbox.put_status(Status(SymbolState.LIVE, back))
        if not request.future.done():
            request.future.set_result(names)

    def _let_go(self, name: str) -> None:
        """`name` is no longer held: forget its state, drop its waiting snapshot."""
        self._held.pop(name, None)
        self._refused.pop(name, None)
        self._seqs.pop(name, None)
        self._stale.pop(name, None)
        self._inbox.discard(("snapshot", name))

    def _error(self, frame: dict[str, Any]) -> None:
        error = FeedError(str(frame.get("code")), str(frame.get("message")))
        request = self._pop_request(frame)
        if request is None:
            log.warning("%s: %s", self.url, error)
        elif request.internal and error.code == "unknown_symbol":
            self._refusal = (request.symbols, error)  # handled by _receive, which can wait
        elif request.internal:
            self._drop = f"subscribing again was refused: {error}"
        elif not request.future.done():
            request.future.set_exception(error)

    def _pop_request(self, frame: dict[str, Any]) -> _Request | None:
        request_id = frame.get("id")
        return self._requests.pop(request_id, None) if isinstance(request_id, int) else None

    def _set_state(
        self,
        state: State,
        reason: str | None = None,
        error: str | None = None,
        retry_in: float | None = None,
    ) -> None:
        self._state = ConnectionState(state, self.url, self._connects, reason, error, retry_in)
        self._inbox.put(("connection", None), self._state)
        if self._waiters:
            self._notify()

    def _notify(self) -> None:
        for predicate, future in list(self._waiters):
            if future.done():
                continue
            try:
                if predicate():
                    future.set_result(None)
            except Exception as exc:  # the waiter's own predicate: its error is the waiter's
                future.set_exception(exc)


def connect(
    url: str = DEFAULT_URL,
    *,
    idle_timeout: float = 15.0,
    connect_timeout: float = 5.0,
    backoff_min: float = 0.1,
    backoff_max: float = 10.0,
    ping_interval: float = 5.0,
    token: str | None = None,
) -> Feed:
    """A client for the feed at `url`, connected by `async with connect(url) as feed:` (the
    options are `Feed`'s; `token` is sent as `Authorization: Bearer`)."""
    return Feed(
        url,
        idle_timeout=idle_timeout,
        connect_timeout=connect_timeout,
        backoff_min=backoff_min,
        backoff_max=backoff_max,
        ping_interval=ping_interval,
        token=token,
    )
