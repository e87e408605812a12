"""Sources as one family: kinds by name, several at once, symbols owned and growing, and the
stale/live status subscribers see when a source goes quiet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from feed import config, ticks
from feed.config import Config, ConfigError
from feed.source import PushSource
from feed.sources import BaseSource, Ingest, SourceState, SymbolRejected, registry
from feed.sources.registry import SourceKind
from tests.conftest import StartFeed, recv, recv_until, subscribe


class Tape(BaseSource):
    """A source the test drives by hand, through the public extension interface."""

    kind = "tape"
    stale_on_end = True

    def __init__(self, names: list[str], stale_after: float | None = None) -> None:
        super().__init__(stale_after=stale_after)
        self.names = names
        self.syms: dict[str, int] = {}
        self.finish = asyncio.Event()

    def attach(self, ingest: Ingest) -> None:
        super().attach(ingest)
        self.syms = dict(zip(self.names, self.symbols(self.names), strict=True))

    async def run(self, ingest: Ingest) -> None:
        self.set_state(SourceState.LIVE)
        await self.finish.wait()
        self.set_state(SourceState.ENDED, "tape ended")

    def trade(self, name: str, price: float, size: int = 1) -> None:
        if name not in self.syms:
            self.syms[name] = self.symbols([name])[0]
        self.emit(ticks.trades([self.syms[name]], [price], [size], ts=time.time_ns()))


@dataclass(frozen=True)
class TapeConfig:
    names: tuple[str, ...] = config.key(("TAPE1", "TAPE2"))
    stale_after: float = config.key(0.0, config.non_negative)


@pytest.fixture
def tape_kind() -> Iterator[SourceKind]:
    """A kind registered by a test, as a plug-in would: no edit to the server or the CLI."""

    def create(section: Any, whole: Config) -> Tape:
        settings: TapeConfig = section
        return Tape(list(settings.names), stale_after=settings.stale_after or None)

    kind = registry.register(SourceKind("tape", TapeConfig, create))
    yield kind
    del registry.KINDS["tape"]


async def test_a_kind_registered_by_name_runs_from_the_config_beside_the_simulator(
    start_feed: StartFeed, tape_kind: SourceKind
) -> None:
    from feed.server import NODE, create_app

    cfg = config.build(
        {
            "source": {"kinds": ["simulator", "tape"]},
            "simulator": {"symbols": 3, "rate": 200},
            "tape": {"names": ["ZED"]},
        }
    )
    app = create_app(cfg)
    sources = app[NODE].pipeline.sources
    assert [source.kind for source in sources] == ["simulator", "tape"]
    assert list(app[NODE].market.symbols) == ["AAPL", "MSFT", "NVDA", "ZED"]
    with pytest.raises(ConfigError, match=r"'tape\.stale_after' must be >= 0"):
        config.build({"tape": {"stale_after": -1}})


async def test_several_sources_at_once_each_owning_its_symbols(start_feed: StartFeed) -> None:
    tape = Tape(["BTC", "ETH"])
    push = PushSource(["AAPL", "MSFT"])
    feed = await start_feed(source=[push, tape])
    async with feed.client.get("/symbols") as response:
        assert await response.json() == ["AAPL", "MSFT", "BTC", "ETH"]
    ws = await feed.ws()
    await subscribe(ws, ["AAPL", "BTC"])
    push.push(ticks.trades([0], [190.0], [5], ts=time.time_ns()))
    tape.trade("BTC", 60_000.0)
    seen: dict[str, float] = {}
    while len(seen) < 2:
        frame = await recv_until(ws, lambda f: f["type"] == "update")
        seen.update({s["symbol"]: s["last"] for s in frame["data"]})
    assert seen == {"AAPL": 190.0, "BTC": 60_000.0}
    with pytest.raises(SymbolRejected, match="'AAPL' is ticked by source 'push'"):
        tape.trade("AAPL", 1.0)
    async with feed.client.get("/healthz") as response:
        health = await response.json()
    states = {s["name"]: (s["state"], s["ticks_in"]) for s in health["sources"]}
    assert states == {"push": ("live", 1), "tape": ("live", 1)}


async def test_symbols_appear_while_running_up_to_the_limit(start_feed: StartFeed) -> None:
    tape = Tape(["A"])
    feed = await start_feed(source=tape, limits={"max_symbols": 3})
    tape.trade("NEW1", 10.0)
    async with feed.client.get("/symbols") as response:
        assert await response.json() == ["A", "NEW1"]
    ws = await feed.ws()
    _, snapshot = await subscribe(ws, ["NEW1"])
    assert snapshot["data"][0]["last"] == 10.0
    tape.trade("NEW2", 11.0)
    with pytest.raises(SymbolRejected, match=r"limit of 3 symbols \(limits.max_symbols\)"):
        tape.trade("NEW3", 12.0)
    async with feed.client.get("/symbols") as response:
        assert await response.json() == ["A", "NEW1", "NEW2"]


async def test_stale_then_live_as_subscribers_see_it(start_feed: StartFeed) -> None:
    tape = Tape(["X", "Y", "Z"])
    feed = await start_feed(source=tape)
    both = await feed.ws()
    await subscribe(both, ["X", "Y"])
    other = await feed.ws()
    await subscribe(other, ["Z"])

    tape.set_state(SourceState.RECONNECTING, "upstream lost")
    status = await recv(both)
    assert status == {
        "type": "status",
        "state": "stale",
        "symbols": ["X", "Y"],
        "reason": "upstream lost",
    }
    assert (await recv(other))["symbols"] == ["Z"]  # each connection hears of its own only

    # A newcomer gets the last state, then the stale status at once.
    late = await feed.ws()
    await late.send_json({"op": "subscribe", "symbols": ["Y", "Z"], "id": 9})
    assert (await recv(late))["type"] == "subscribed"
    assert (await recv(late))["type"] == "snapshot"
    assert await recv(late) == {
        "type": "status",
        "state": "stale",
        "symbols": ["Y", "Z"],
        "reason": "upstream lost",
    }
    async with feed.client.get("/healthz") as response:
        health = await response.json()
    assert health["stale_symbols"] == 3
    assert health["sources"][0]["state"] == "reconnecting"

    # The source's next tick: its upstream is back, all its symbols are live, before the update.
    tape.trade("X", 5.0)
    assert await recv(both) == {"type": "status", "state": "live", "symbols": ["X", "Y"]}
    update = await recv(both)
    assert update["type"] == "update" and update["data"][0]["last"] == 5.0
    assert await recv(late) == {"type": "status", "state": "live", "symbols": ["Y", "Z"]}


async def test_a_silent_source_goes_stale_after_stale_after(start_feed: StartFeed) -> None:
    tape = Tape(["Q"], stale_after=0.3)
    feed = await start_feed(source=tape)
    ws = await feed.ws()
    await subscribe(ws, ["Q"])
    tape.trade("Q", 1.0)
    assert (await recv(ws))["type"] == "update"
    status = await recv(ws, timeout=5)
    assert status["state"] == "stale" and "no data from tape for 0.3 s" in status["reason"]
    tape.trade("Q", 2.0)
    assert (await recv(ws))["state"] == "live"


async def test_the_end_of_a_source_is_stale_the_simulator_never(start_feed: StartFeed) -> None:
    tape = Tape(["E"])
    push = PushSource(["P"])
    feed = await start_feed(source=[tape, push])
    ws = await feed.ws()
    await subscribe(ws, ["E", "P"])
    tape.finish.set()
    assert await recv(ws) == {
        "type": "status",
        "state": "stale",
        "symbols": ["E"],
        "reason": "tape ended",
    }
    push.end()  # a batch stream (the simulator's kind of source) ends live
    async with asyncio.timeout(5):
        while True:
            async with feed.client.get("/healthz") as response:
                health = await response.json()
            if health["pipeline"] == "ended":
                break
            await asyncio.sleep(0.02)
    assert health["status"] == "ok" and health["stale_symbols"] == 1
    assert {s["name"]: s["state"] for s in health["sources"]} == {"tape": "ended", "push": "ended"}
