"""The servers a benchmark can run: ours and the peers, each started the same way.

Every server gets the same market, listens on a free port, prints `listening on ws://HOST:PORT/ws`
when ready, answers `GET /stats` with its tick count, and stops on SIGTERM. The market is either
external (the ticks as NDJSON on the server's stdin: ours `--source stdin`, the peers `--stdin`)
or internal (the same simulator, seed and rate, run by each server itself), as the scenario says.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.scenarios import Scenario

PEERS_DIR = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    description: str
    build: Callable[[Scenario], list[str]]
    exclude: tuple[str, ...] = ()
    """Command-line fragments of helper processes whose CPU and memory are not the server's."""
    requires: Callable[[], str | None] = lambda: None
    """Why the server cannot run here, or None."""

    def command(self, scenario: Scenario) -> list[str]:
        return self.build(scenario)

    def unavailable(self) -> str | None:
        return self.requires()


def _market(scenario: Scenario) -> list[str]:
    return [
        "--symbols", str(scenario.symbols),
        "--rate", str(scenario.rate),
        "--seed", str(scenario.seed),
        "--burst-factor", str(scenario.burst_factor),
        "--burst-every", str(scenario.burst_every),
        "--burst-length", str(scenario.burst_length),
    ]  # fmt: skip


def _feed(scenario: Scenario) -> list[str]:
    grace = max(60.0, scenario.duration + scenario.warmup + 30)
    settings: dict[str, object] = {}
    if scenario.market == "internal":
        settings = {
            "simulator.seed": scenario.seed,
            "simulator.burst_factor": scenario.burst_factor,
            "simulator.burst_every": scenario.burst_every,
            "simulator.burst_length": scenario.burst_length,
        }
    settings |= {
        "limits.max_connections": scenario.clients + scenario.slow + 100,
        "limits.max_symbols_per_connection": max(1000, scenario.symbols),
        # The slow clients are to stay connected through the window: a grace longer than it.
        "limits.slow_consumer_timeout": grace,
        "websocket.ping_interval": grace,
        # LAN mode serves on a veth address: open on purpose (the benchmarks measure the feed).
        "auth.allow_open": "true",
    }
    command = [sys.executable, "-m", "feed", "serve", "--host", "127.0.0.1", "--port", "0"]
    if scenario.market == "internal":
        command += ["--symbols", str(scenario.symbols), "--rate", str(scenario.rate)]
    else:
        command += ["--source", "stdin"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    for assignment in scenario.feed_settings:
        command += ["--set", assignment]
    return command


def _peer(module: str) -> Callable[[Scenario], list[str]]:
    def build(scenario: Scenario) -> list[str]:
        market = (
            _market(scenario)
            if scenario.market == "internal"
            else ["--symbols", str(scenario.symbols), "--stdin"]
        )
        return [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *market]

    return build


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PEERS_DIR / "node" / "node_modules" / "ws").is_dir():
        return "the ws package is not installed: run `npm ci` in benchmarks/peers/node"
    return None


def _websockets_missing() -> str | None:
    try:
        import websockets  # noqa: F401
    except ImportError:
        return "the websockets package is not installed (pip install -e '.[bench]')"
    return None


SERVERS: dict[str, ServerSpec] = {
    "feed": ServerSpec("feed", "this project: conflating mailbox per connection", _feed),
    "naive": ServerSpec(
        "naive",
        "aiohttp hub: asyncio.Queue(256) per client, one frame per tick, full queue = dropped",
        _peer("benchmarks.peers.naive_hub"),
    ),
    "websockets": ServerSpec(
        "websockets",
        "websockets library, broadcast() per tick (no backpressure)",
        _peer("benchmarks.peers.broadcast"),
        requires=_websockets_missing,
    ),
    "node": ServerSpec(
        "node",
        "Node ws, send per tick, skipped above 1 MiB buffered",
        _peer("benchmarks.peers.node_peer"),
        # Internal market: its simulator is a `feed simulate` process piped into node, which
        # counts as the server's, as the other servers pay for the same simulator inside their
        # process. Only the idle wrapper is left out.
        exclude=("benchmarks.peers.node_peer",),
        requires=_node_missing,
    ),
}
