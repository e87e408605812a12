"""The pipeline's sink in `feed ingest`: each changed snapshot published on the bus.

Publishing never holds up the fold: `publish` only notes which symbols changed (at most one entry
per symbol, so nothing grows without bound while NATS is away), and one task sends the newest
snapshot of each, all those of a fold in one go. After a reconnection every symbol is sent again,
since core NATS drops what is published while it is away. A heartbeat on `<prefix>.hb.<NODE>`
tells gateways the node is alive, and which of its symbols are stale, every
`bus.heartbeat_interval` and at once when that changes.

At start-up (`start`), before any source runs, the node reads the newest stored snapshot of every
symbol it published last and carries its state on from there: `seq`, volume, VWAP and high/low,
and its epoch. A symbol with nothing stored (a new stream, a purged one, a new symbol) begins a
new epoch, when it joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from feed import bus
from feed.config import BusConfig
from feed.market import Market

log = logging.getLogger(__name__)


class BusSink:
    def __init__(self, config: BusConfig, market: Market) -> None:
        self.config = config
        self.market = market
        self.node = bus.node_name(config)
        self.subjects = bus.Subjects(config.prefix)
        self.state = "connecting"
        """connecting, restoring, connected or disconnected."""
        self.ready = asyncio.Event()
        """Set once connected and restored: the sources may start."""
        self.counters = {
            "published": 0,
            "publish_rounds": 0,
            "heartbeats": 0,
            "restored": 0,
            "disconnects": 0,
            "reconnects": 0,
        }
        self._pending: dict[int, None] = {}
        self._wake = asyncio.Event()
        self._stale: dict[str, str] = {}
        self._stale_changed = False
        self._subjects: list[str] = []
        self._announced = bytearray()
        """Per symbol, 1 once its first snapshot was announced on <prefix>.new (or restored)."""
        self._headers = {bus.NODE_HEADER: self.node}
        self._nc: NATS | None = None

    # -- the Sink protocol (called by the pipeline, never waits) ------------------------------

    def publish(self, syms: list[int]) -> None:
        self._pending.update(dict.fromkeys(syms))
        self._wake.set()

    def status(self, state: str, syms: list[int], reason: str | None) -> None:
        names = self.market.symbols
        if state == "stale":
            for sym in syms:
                self._stale[names[sym]] = reason or "stale"
        else:
            for sym in syms:
                self._stale.pop(names[sym], None)
        self._stale_changed = True
        self._wake.set()

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying until NATS answers), make sure the stream exists, restore this
        node's symbols from it."""
        self._nc = await bus.connect(
            self.config,
            f"feed-ingest {self.node}",
            disconnected=self._disconnected,
            reconnected=self._reconnected,
        )
        js = self._nc.jetstream()
        await bus.ensure_stream(js, self.config)
        self.state = "restoring"
        mine: list[dict[str, Any]] = []

        def take(msg: Msg) -> None:
            headers = msg.headers or {}
            if headers.get(bus.NODE_HEADER) == self.node:
                mine.append(orjson.loads(msg.data))

        while True:
            try:
                await bus.read_newest(js, self.config, take)
                break
            except (TimeoutError, Exception) as exc:  # retried: starting without it loses seq
                log.warning("reading the stored snapshots failed (%r); retrying", exc)
                mine.clear()
                await asyncio.sleep(self.config.reconnect_wait)
        if mine:
            restored = self.market.restore(mine)
            self.counters["restored"] = len(mine)
            self._announced = bytearray(len(self.market.symbols))
            for sym in restored:
                self._announced[sym] = 1
            log.info(
                "node %s restored %d symbol(s) from stream %s",
                self.node,
                len(mine),
                bus.stream_name(self.config),
            )
        else:
            log.info("node %s: nothing stored; every symbol's state begins now", self.node)
        self.state = "connected"
        self.ready.set()

    async def run(self) -> None:
        """Send what changed, and heartbeats, until cancelled (after `start`)."""
        heartbeats = asyncio.create_task(self._heartbeats(), name="feed-bus-heartbeat")
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.state != "connected":
                    continue
                await self._send_pending()
                if self._stale_changed:
                    await self._heartbeat()
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._heartbeat()
                await self._nc.flush(timeout=1)
            await self._nc.close()

    async def _send_pending(self) -> None:
        nc = self._nc
        assert nc is not None
        market, subjects, headers = self.market, self._subjects, self._headers
        while self._pending and self.state == "connected":
            syms = list(self._pending)
            self._pending.clear()
            if len(subjects) < len(market.symbols):
                names = market.symbols
                subjects.extend(
                    self.subjects.snap(names[i]) for i in range(len(subjects), len(names))
                )
            payload, announced = market.payload, self._announced
            if len(announced) < len(subjects):
                announced.extend(bytes(len(subjects) - len(announced)))
            for sym in syms:
                data = payload(sym)
                await nc.publish(subjects[sym], data, headers=headers)
                if not announced[sym]:
                    announced[sym] = 1
                    await nc.publish(self.subjects.new(market.symbols[sym]), data, headers=headers)
            self.counters["published"] += len(syms)
            self.counters["publish_rounds"] += 1

    async def _heartbeats(self) -> None:
        while True:
            if self.state == "connected":
                with contextlib.suppress(Exception):
                    await self._heartbeat()
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _heartbeat(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return
        self._stale_changed = False
        message = bus.heartbeat_message(
            self.node,
            self.market.epoch,
            len(self.market.symbols),
            bus.group_by_reason(self._stale),
            self.config.heartbeat_interval,
        )
        await nc.publish(self.subjects.heartbeat(self.node), message)
        self.counters["heartbeats"] += 1

    async def _disconnected(self) -> None:
        if self.state == "connected":
            self.state = "disconnected"
            self.counters["disconnects"] += 1
            log.warning("NATS connection lost; snapshots wait, conflated, until it is back")

    async def _reconnected(self) -> None:
        self.counters["reconnects"] += 1
        self.state = "connected"
        # Core NATS dropped whatever was published while away: send every symbol again.
        self._pending.update(dict.fromkeys(range(len(self.market.symbols))))
        self._stale_changed = True
        self._wake.set()
        log.info("NATS connection back; sending every symbol's newest snapshot")

    def stats(self) -> dict[str, Any]:
        nc = self._nc
        return {
            "role": "ingest",
            "node": self.node,
            "state": self.state,
            "epoch": self.market.epoch,
            "server": nc.connected_url.netloc if nc is not None and nc.connected_url else None,
            "pending": len(self._pending),
            **self.counters,
        }
