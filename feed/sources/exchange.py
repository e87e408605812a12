"""What the exchange adapters (`binance`, `coinbase`) share: the reconnecting WebSocket client.

An adapter is two parts. Its mapping (`feed.sources.mapping`) is a pure function from one
upstream message to a `Mapped`: ticks, drops and connection signals; it never raises. Its source
is an `ExchangeSource` subclass that names the URL, the messages to send once connected, and the
mapping.

`ExchangeSource.run` keeps one connection up for as long as the feed runs:
- connect (aiohttp's `ClientSession.ws_connect`), send the subscription messages, then read;
  every connection subscribes again from scratch;
- a connection that is lost (closed by the upstream, reset, silent past `ping_interval` and
  then deaf to our ping for half of it) makes the symbols stale (state `reconnecting`, with the
  cause in the reason) and the adapter connects again after a `Backoff` delay (exponential,
  full jitter, between 0 and `reconnect_max`): a failing upstream is never hammered. The backoff
  is reset only when a connection delivered data, so an upstream that accepts and then drops or
  refuses every connection keeps the delays growing;
- a planned reconnect (the connection reached `max_connection_age`, or the upstream announced
  its shutdown) is made before the old connection is broken: the new one is opened while the
  old one still delivers, then the old one is closed. Symbols do not go stale. A tick both
  connections deliver is applied once: a trade or a quote whose upstream id is not above the
  last one applied for its symbol is a duplicate, dropped and counted. The ids are forgotten
  whenever a connection is lost (a fresh connection overlaps nothing), so ids that an exchange
  restarts, which it does only with a restart that ends its connections, are trusted anew. If
  the new connection cannot be opened, the old one goes on serving and the replacement is
  tried again after a backoff delay;
- state: `connecting`, then `live` on the first message that carries data or a heartbeat,
  `reconnecting` when a connection is lost (or cannot be opened), `live` again with the next
  data, `stale` when connected but silent past `stale_after` (`BaseSource.check`).

Counters (in `/stats`, per source): connects, reconnects, disconnects, planned_reconnects,
connect_failures, messages, dropped (a tick that failed a check), unparseable (a message that
is not JSON or not a shape the adapter knows), duplicates, errors (the upstream said so),
ignored (messages of no use to the feed, such as subscription acknowledgements).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import numpy as np

from feed.sources.base import Backoff, BaseSource, Ingest, SourceState
from feed.sources.mapping import (
    Mapped,
    Signal,
    Tick,
    short,
)
from feed.ticks import TICK_DTYPE

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 10.0
"""Seconds a connection attempt (TCP, TLS, WebSocket handshake) may take."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds the upstream has to answer our close frame."""


# -- the reconnecting client ------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    """One connection to the upstream."""

    ws: aiohttp.ClientWebSocketResponse
    opened_at: float
    due: float | None
    """Monotonic time of the next planned reconnect (age limit, retry of a failed one)."""
    reader: asyncio.Task[str] | None = None
    delivered: bool = False
    """It delivered data or a heartbeat: the backoff is reset when it ends."""
    subscribed: bool = False
    replace: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the upstream announced the end of this connection."""
    replace_reason: str = ""
    drop_reason: str | None = None
    """Set when the adapter itself ends this connection (a refused subscription, replaced)."""


class ExchangeSource(BaseSource):
    """A source reading one exchange's public WebSocket stream (see the module docstring).

    A subclass sets `kind` and writes `url`, `map` and, when the exchange wants a subscription
    message, `subscribe_messages`. The configured symbols are claimed at `attach`, so they are
    listed before the first tick; a tick of any other symbol is dropped.
    """

    kind = "exchange"

    def __init__(
        self,
        *,
        symbols: Sequence[str],
        stale_after: float,
        reconnect_min: float,
        reconnect_max: float,
        ping_interval: float,
        max_connection_age: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(stale_after=stale_after, name=name)
        self.names = list(symbols)
        self.ping_interval = ping_interval
        self.max_connection_age = max_connection_age
        self.backoff = Backoff(reconnect_min, reconnect_max)
        self._syms: dict[str, int] = {}
        self._links: set[_Link] = set()
        """Every open connection (two during a planned reconnect), closed when the feed stops."""
        self._last_id: dict[tuple[int, int], int] = {}
        self.last_problem: str | None = None
        """The newest reason a message or a tick was not applied, for `/stats`."""
        for counter in (
            "connects",
            "reconnects",
            "disconnects",
            "planned_reconnects",
            "connect_failures",
            "messages",
            "dropped",
            "unparseable",
            "duplicates",
            "errors",
            "ignored",
        ):
            self.counters[counter] = 0

    # -- what a kind writes -------------------------------------------------------------------

    def url(self) -> str:
        """The URL to connect to (with the streams in it, when the exchange does it so)."""
        raise NotImplementedError

    def subscribe_messages(self) -> list[str]:
        """Text messages to send right after connecting, on every connection."""
        return []

    def map(self, data: str, now_ns: int) -> Mapped:
        """One text message, mapped; `now_ns` stamps ticks the upstream does not time."""
        raise NotImplementedError

    # -- the pipeline's side ------------------------------------------------------------------

    def attach(self, ingest: Ingest) -> None:
        super().attach(ingest)
        self._syms = dict(zip(self.names, self.symbols(self.names), strict=True))

    def status(self) -> dict[str, Any]:
        result = super().status()
        result["last_problem"] = self.last_problem
        return result

    async def run(self, ingest: Ingest) -> None:
        if self._ingest is not ingest:
            self.attach(ingest)
        async with aiohttp.ClientSession() as session:
            link: _Link | None = None
            try:
                while True:
                    link = await self._serve(session, link)
            finally:
                for open_link in list(self._links):
                    await self._close(open_link, "the feed is stopping")

    # -- the connection loop ------------------------------------------------------------------

    async def _serve(self, session: aiohttp.ClientSession, link: _Link | None) -> _Link | None:
        """One turn of the loop: connect if need be, then serve `link` until it is lost (None
        is returned, after the backoff delay) or replaced (the new link is returned)."""
        if link is None:
            try:
                return await self._open(session)
            except _ConnectFailed as exc:
                self.count("connect_failures")
                self.set_state(SourceState.RECONNECTING, f"{self.name}: {exc}; retrying")
                await asyncio.sleep(self.backoff.next_delay())
                return None
        lost = await self._wait(link)
        if lost is not None:
            await self._close(link, lost)
            self._last_id.clear()  # nothing can overlap a fresh connection: trust its ids anew
            if link.delivered:
                self.backoff.reset()
            self.count("disconnects")
            log.warning("source %s: disconnected (%s)", self.name, lost)
            self.set_state(
                SourceState.RECONNECTING, f"{self.name}: disconnected ({lost}); reconnecting"
            )
            await asyncio.sleep(self.backoff.next_delay())
            return None
        why = link.replace_reason
        log.info("source %s: reconnecting (%s)", self.name, why)
        try:
            new = await self._open(session)
        except _ConnectFailed as exc:
            self.count("connect_failures")
            delay = self.backoff.next_delay()
            log.warning(
                "source %s: planned reconnect failed (%s); keeping the current connection, "
                "trying again in %.2f s",
                self.name,
                exc,
                delay,
            )
            link.replace.clear()
            link.due = time.monotonic() + delay
            return link
        self.count("planned_reconnects")
        await self._close(link, f"replaced ({why})")
        return new

    async def _open(self, session: aiohttp.ClientSession) -> _Link:
        url = self.url()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                ws = await session.ws_connect(
                    url,
                    autoping=True,  # answers the upstream's pings with its payload
                    heartbeat=self.ping_interval,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise _ConnectFailed(f"connection refused: HTTP {exc.status} {exc.message}") from None
        except aiohttp.ClientConnectorError as exc:
            raise _ConnectFailed(f"cannot connect ({_os_error(exc.os_error)})") from None
        except TimeoutError:
            raise _ConnectFailed(
                f"cannot connect (timed out after {CONNECT_TIMEOUT:g} s)"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _ConnectFailed(f"cannot connect ({type(exc).__name__}: {exc})") from None
        now = time.monotonic()
        due = None if self.max_connection_age is None else now + self.max_connection_age
        link = _Link(ws, now, due)
        try:
            for message in self.subscribe_messages():
                await ws.send_str(message)
        except (aiohttp.ClientError, OSError) as exc:
            await ws.close()
            raise _ConnectFailed(f"subscription not sent ({type(exc).__name__}: {exc})") from None
        self.count("connects")
        if self.counters["connects"] > 1:
            self.count("reconnects")
        log.info("source %s: connected to %s", self.name, _shorten_url(url))
        link.reader = asyncio.create_task(self._read(link), name=f"feed-{self.name}-reader")
        self._links.add(link)
        return link

    async def _wait(self, link: _Link) -> str | None:
        """Until `link` is lost (its cause is returned) or a planned reconnect is due (None,
        with `link.replace_reason` set)."""
        assert link.reader is not None
        announced = asyncio.ensure_future(link.replace.wait())
        try:
            timeout = None if link.due is None else max(0.0, link.due - time.monotonic())
            done, _ = await asyncio.wait(
                {link.reader, announced}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            announced.cancel()
        if link.reader in done:
            return link.reader.result()
        if not link.replace.is_set():
            age = time.monotonic() - link.opened_at
            link.replace_reason = f"connection open for {age:.4g} s"
            if self.max_connection_age is not None and age >= self.max_connection_age:
                link.replace_reason += f" (max_connection_age {self.max_connection_age:g} s)"
        return None

    async def _close(self, link: _Link, reason: str) -> None:
        self._links.discard(link)
        link.drop_reason = reason
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await link.ws.close()
        if link.reader is not None:
            link.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.reader

    async def _read(self, link: _Link) -> str:
        """Read `link` until it ends; returns why it ended."""
        ws = link.ws
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                self._on_text(link, message.data)
                if link.drop_reason is not None:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        await ws.close()
                    return link.drop_reason
            elif message.type is aiohttp.WSMsgType.BINARY:
                self.count("messages")
                self._problem("unparseable", "a binary frame (text JSON expected)")
            elif message.type is aiohttp.WSMsgType.ERROR:
                return link.drop_reason or _error_text(message.data)
            else:  # CLOSE, CLOSING, CLOSED
                if link.drop_reason is not None:
                    return link.drop_reason
                return _close_text(ws.close_code, ws.exception())

    # -- one message --------------------------------------------------------------------------

    def _on_text(self, link: _Link, data: str) -> None:
        self.count("messages")
        try:
            mapped = self.map(data, time.time_ns())
        except Exception:  # a mapping never raises (tested); a bug must not end the stream
            log.exception("source %s: mapping failed on %.200s", self.name, data)
            self._problem("unparseable", "the adapter failed on this message")
            return
        if mapped.unparseable is not None:
            self._problem("unparseable", f"{mapped.unparseable}: {data[:80]}")
            return
        for reason in mapped.drops:
            self._problem("dropped", reason)
        if mapped.ticks:
            self._emit(link, mapped.ticks)
        signal = mapped.signal
        if signal is None:
            return
        if signal is Signal.ALIVE:
            link.delivered = True
            self.heard()
        elif signal is Signal.SHUTDOWN:
            link.replace_reason = f"the upstream announced its shutdown ({mapped.detail})"
            link.replace.set()
        elif signal is Signal.SUBSCRIBED:
            link.subscribed = True
            log.info("source %s: subscribed (%s)", self.name, mapped.detail)
        elif signal is Signal.ERROR:
            self.count("errors")
            self.last_problem = f"upstream error: {mapped.detail}"
            log.warning("source %s: upstream error: %s", self.name, mapped.detail)
            if not link.subscribed and self.subscribe_messages():
                link.drop_reason = f"subscription refused: {mapped.detail}"
        else:
            self.count("ignored")

    def _emit(self, link: _Link, mapped: Sequence[Tick]) -> None:
        rows = []
        duplicates = 0
        syms = self._syms
        last_id = self._last_id
        for tick in mapped:
            sym = syms.get(tick.symbol)
            if sym is None:
                self._problem("dropped", f"symbol {short(tick.symbol)} is not subscribed")
                continue
            if tick.id is not None:
                key = (sym, tick.kind)
                previous = last_id.get(key)
                if previous is not None and tick.id <= previous:
                    duplicates += 1
                    continue
                last_id[key] = tick.id
            rows.append((sym, tick.kind, *tick[2:9]))
        if duplicates:
            self.count("duplicates", duplicates)
            link.delivered = True
            self.heard()  # delivered twice, but delivered: the upstream is there
        if rows:
            link.delivered = True
            self.emit(np.array(rows, dtype=TICK_DTYPE))

    def _problem(self, counter: str, reason: str) -> None:
        self.count(counter)
        if counter == "dropped":
            self.rejected()
        self.last_problem = reason
        n = self.counters[counter]
        if n == 1 or n % 1000 == 0:
            log.warning("source %s: %s message #%d: %s", self.name, counter, n, reason)


class _ConnectFailed(Exception):
    """A connection attempt failed; str() is the cause, for the stale reason."""


def _os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _error_text(error: Any) -> str:
    if isinstance(error, aiohttp.ServerTimeoutError):
        return f"no answer to our ping: {error}"
    if isinstance(error, ConnectionError | aiohttp.ClientConnectionResetError):
        return "connection lost"
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)


def _close_text(code: int | None, exc: BaseException | None) -> str:
    if exc is not None:
        return _error_text(exc)
    if code is None or code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
        return "connection lost"
    return f"closed by the upstream, code {code}"


def _shorten_url(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
