"""The gateway's way in: the newest snapshots from the bus into the market, the hub told.

A gateway never folds a tick. It keeps the newest snapshot of every symbol it receives, by
(`epoch`, `seq`), and hands each change to the hub, which fans it out with the same conflation as
`feed serve`. On start-up, and after every reconnection or slow-consumer drop, it reads the
newest stored snapshot of every symbol (an ordered consumer, last per subject) while following
the live subjects; since nothing older than what is held is ever taken, the order in which the
two arrive does not matter.

With `bus.subscribe = "held"` a gateway follows live only the symbols its clients hold: one NATS
subscription per held symbol, made when its first client subscribes (and the newest stored
snapshot fetched at once, so that client's next update is the newest even if the one it was
answered with is older) and dropped when its last client goes; new symbols are learnt from
`<prefix>.new.>`. It still reads every symbol's newest snapshot on start-up and reconnection.

What clients are told, per symbol: `stale` while NATS is away or being re-read ("bus ..."), while
the ingest node that owns the symbol sends no heartbeat for `bus.stale_after` ("ingest node ...
silent"), or when that node says the symbol is stale (its source's own reason); `live` again as
soon as none of these holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from feed import bus
from feed.config import BusConfig
from feed.hub import Hub
from feed.market import Market

log = logging.getLogger(__name__)

WATCH_PERIOD = 0.25
"""Seconds between checks of the ingest nodes' heartbeats."""


@dataclass
class NodeState:
    last_seen: float
    epoch: int = 0
    stale: dict[str, str] = field(default_factory=dict)
    symbols: set[int] = field(default_factory=set)
    silent: bool = False
    heartbeats: int = 0


class Follower:
    def __init__(
        self,
        config: BusConfig,
        market: Market,
        hub: Hub,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.market = market
        self.hub = hub
        self.subjects = bus.Subjects(config.prefix)
        self._clock = clock
        self.state = "connecting"
        """connecting, reading (the stored snapshots), live, or disconnected."""
        self.ready = asyncio.Event()
        """Set when the first read of the stored snapshots is done: subscriptions are answered."""
        self.nodes: dict[str, NodeState] = {}
        self.counters = {
            "received": 0,
            "applied": 0,
            "older": 0,
            "unparsed": 0,
            "reads": 0,
            "read_failures": 0,
            "read_snapshots": 0,
            "slow_consumer": 0,
            "disconnects": 0,
            "reconnects": 0,
            "fetched": 0,
            "owner_conflicts": 0,
        }
        self.last_read_seconds = 0.0
        self.held = config.subscribe == "held"
        self._subscriptions: dict[int, Subscription] = {}
        """Held mode: the live subscription of each held symbol."""
        self._holds: list[tuple[list[int], list[int]]] = []
        self._holds_changed = asyncio.Event()
        if self.held:
            hub.registry.on_hold = self._on_hold
        self._owner: dict[int, str] = {}
        self._pending: dict[int, None] = {}
        self._flush_scheduled = False
        self._reread = asyncio.Event()
        self._nc: NATS | None = None

    # -- taking snapshots ---------------------------------------------------------------------

    def _take(self, msg: Msg) -> None:
        self._take_parts(msg.subject, msg.data, msg.headers)

    def _take_parts(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        self.counters["received"] += 1
        version = bus.version(payload)
        if version is None:
            self.counters["unparsed"] += 1
            return
        sym = self.market.put(self.subjects.symbol_of(subject), payload, *version)
        if sym is None:
            self.counters["older"] += 1
            return
        self.counters["applied"] += 1
        node = headers.get(bus.NODE_HEADER, "") if headers else ""
        if self._owner.get(sym) != node:
            self._own(sym, node)
        self._pending[sym] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _on_live(self, msg: Msg) -> None:
        self._take(msg)

    def _flush(self) -> None:
        """Fan out every snapshot taken since the last turn of the loop, in one go."""
        self._flush_scheduled = False
        if self._pending:
            syms = list(self._pending)
            self._pending.clear()
            self.hub.publish(syms)

    def _own(self, sym: int, node: str) -> None:
        previous = self._owner.get(sym)
        if previous is not None and previous in self.nodes:
            if not self.nodes[previous].silent:
                # Two live nodes publishing one symbol: a configuration error (docs/scaling.md).
                self.counters["owner_conflicts"] += 1
                if self.counters["owner_conflicts"] <= 10:
                    log.warning(
                        "symbol %r published by ingest node %r and by %r: each symbol needs "
                        "one owner",
                        self.market.symbols[sym],
                        previous,
                        node,
                    )
            self.nodes[previous].symbols.discard(sym)
        self._owner[sym] = node
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = NodeState(last_seen=self._clock())
        state.symbols.add(sym)
        self._reconcile([sym])

    # -- held mode ----------------------------------------------------------------------------

    def _on_hold(self, held: list[int], released: list[int]) -> None:
        self._holds.append((held, released))
        self._holds_changed.set()

    async def _follow_holds(self, nc: NATS, js: Any) -> None:
        """Held mode: subscribe to each symbol as it gains its first client, unsubscribe as it
        loses its last (in order, one change at a time)."""
        registry, names = self.hub.registry, self.market.symbols
        stream = bus.stream_name(self.config)
        while True:
            await self._holds_changed.wait()
            self._holds_changed.clear()
            changes, self._holds = self._holds, []
            for held, released in changes:
                for sym in released:
                    subscription = self._subscriptions.get(sym)
                    if subscription is not None and not any(registry.subscribers(sym)):
                        del self._subscriptions[sym]
                        with contextlib.suppress(Exception):
                            await subscription.unsubscribe()
                for sym in held:
                    if sym in self._subscriptions or not any(registry.subscribers(sym)):
                        continue
                    subject = self.subjects.snap(names[sym])
                    self._subscriptions[sym] = await nc.subscribe(
                        subject,
                        cb=self._on_live,
                        pending_msgs_limit=self.config.pending_messages,
                        pending_bytes_limit=self.config.pending_bytes,
                    )
                    try:
                        stored = await js.get_last_msg(stream, subject, direct=True)
                    except Exception:  # none stored yet, or NATS away: the live one follows
                        continue
                    if stored.data is not None and stored.subject is not None:
                        self.counters["fetched"] += 1
                        self._take_parts(stored.subject, stored.data, stored.headers)

    # -- staleness ----------------------------------------------------------------------------

    def _reason(self, sym: int) -> str | None:
        if self.state != "live":
            return f"bus {self.state}: NATS is away or being read again"
        node = self._owner.get(sym)
        state = self.nodes.get(node) if node is not None else None
        if state is None:
            return None
        if state.silent:
            return f"ingest node {node} silent for over {self.config.stale_after:g} s"
        return state.stale.get(self.market.symbols[sym])

    def _reconcile(self, syms: Iterable[int]) -> None:
        """Tell subscribers of `syms` whatever changed in their stale or live state."""
        held = self.hub.stale
        live: list[int] = []
        stale: dict[str, list[int]] = {}
        for sym in syms:
            want = self._reason(sym)
            if want == held.get(sym):
                continue
            if want is None:
                live.append(sym)
            else:
                stale.setdefault(want, []).append(sym)
        if live:
            self.hub.status("live", live, None)
        for reason, group in stale.items():
            self.hub.status("stale", group, reason)

    def _reconcile_all(self) -> None:
        self._reconcile(range(len(self.market.symbols)))

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = orjson.loads(msg.data)
            name = str(beat["node"])
            stale = bus.names_of(beat.get("stale") or {})
            epoch = int(beat.get("epoch") or 0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self.counters["unparsed"] += 1
            return
        state = self.nodes.get(name)
        if state is None:
            state = self.nodes[name] = NodeState(last_seen=self._clock())
        state.last_seen = self._clock()
        state.heartbeats += 1
        state.epoch = epoch
        if state.silent or stale != state.stale:
            state.silent = False
            state.stale = stale
            self._reconcile(list(state.symbols))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_PERIOD)
            now = self._clock()
            for name, state in self.nodes.items():
                silent = now - state.last_seen > self.config.stale_after
                if silent != state.silent:
                    state.silent = silent
                    if silent:
                        log.warning("ingest node %s silent; its symbols are stale", name)
                    self._reconcile(list(state.symbols))

    # -- connection events --------------------------------------------------------------------

    async def _disconnected(self) -> None:
        if self.state in ("live", "reading"):
            self.counters["disconnects"] += 1
            self.state = "disconnected"
            log.warning("NATS connection lost; serving the last snapshots, marked stale")
            self._reconcile_all()

    async def _reconnected(self) -> None:
        self.counters["reconnects"] += 1
        self.state = "reading"
        self._reread.set()
        log.info("NATS connection back; reading the newest snapshots again")

    async def _error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.counters["slow_consumer"] += 1
            if not self._reread.is_set():
                log.warning("fell behind NATS (slow consumer); reading the newest snapshots again")
                self._reread.set()

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the bus until cancelled."""
        self._nc = nc = await bus.connect(
            self.config,
            "feed-gateway",
            disconnected=self._disconnected,
            reconnected=self._reconnected,
            error=self._error,
        )
        js = nc.jetstream()
        helpers = [asyncio.create_task(self._watch(), name="feed-bus-watch")]
        try:
            await nc.subscribe(
                self.subjects.news if self.held else self.subjects.snaps,
                cb=self._on_live,
                pending_msgs_limit=self.config.pending_messages,
                pending_bytes_limit=self.config.pending_bytes,
            )
            await nc.subscribe(self.subjects.heartbeats, cb=self._on_heartbeat)
            if self.held:
                helpers.append(
                    asyncio.create_task(self._follow_holds(nc, js), name="feed-bus-holds")
                )
            self._reread.set()
            while True:
                await self._reread.wait()
                self._reread.clear()
                await self._read(js)
        finally:
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            with contextlib.suppress(Exception):
                await nc.close()

    async def _read(self, js: Any) -> None:
        if self._nc is None or not self._nc.is_connected:
            return  # reconnected() asks again
        self.state = "reading"
        self._reconcile_all()
        self.counters["reads"] += 1
        started = time.perf_counter()
        try:
            count = await bus.read_newest(js, self.config, self._take)
        except Exception as exc:  # TimeoutError, or NATS errors while it restarts
            self.counters["read_failures"] += 1
            log.warning("reading the newest snapshots failed (%r); retrying", exc)
            await asyncio.sleep(self.config.reconnect_wait)
            self._reread.set()
            return
        self.last_read_seconds = time.perf_counter() - started
        self.counters["read_snapshots"] += count
        self._flush()
        self.state = "live"
        first = not self.ready.is_set()
        self.ready.set()
        self._reconcile_all()
        log.info(
            "read the newest snapshots of %d symbol(s) in %.3f s%s",
            count,
            self.last_read_seconds,
            "" if first else " (again)",
        )

    def stats(self) -> dict[str, Any]:
        nc = self._nc
        return {
            "role": "gateway",
            "state": self.state,
            "server": nc.connected_url.netloc if nc is not None and nc.connected_url else None,
            "subscribe": self.config.subscribe,
            "symbol_subscriptions": len(self._subscriptions),
            "last_read_seconds": round(self.last_read_seconds, 4),
            "nodes": {
                name: {
                    "symbols": len(state.symbols),
                    "silent": state.silent,
                    "stale": len(state.stale),
                    "epoch": state.epoch,
                    "heartbeats": state.heartbeats,
                }
                for name, state in self.nodes.items()
            },
            **self.counters,
        }
