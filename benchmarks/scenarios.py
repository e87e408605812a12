"""The named benchmark scenarios: what market runs, where it comes from, and who listens to it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

MarketMode = Literal["external", "internal"]
MARKETS: tuple[MarketMode, ...] = ("external", "internal")
"""external: one `feed simulate` process writes the ticks, each stamped (`ts`) as it is
written, into a pipe that is every server's stdin; internal: each server runs the simulator in
its own process and stamps each batch when the simulator yields it."""


@dataclass(frozen=True)
class Scenario:
    name: str
    symbols: int
    rate: float
    """Total ticks per second asked of the simulator."""
    clients: int
    per_client: int
    """Symbols each client subscribes to (a seeded random sample)."""
    slow: int = 0
    """Extra clients that subscribe to every symbol and never read."""
    burst_factor: float = 1.0
    burst_every: float = 5.0
    burst_length: float = 1.0
    duration: float = 10.0
    """Seconds measured."""
    warmup: float = 2.0
    """Seconds between all clients being subscribed and the measured window."""
    seed: int = 42
    market: MarketMode = "external"
    """Where the ticks come from (see MARKETS)."""
    idle: float = 1.5
    """Seconds the server runs with no client before the load generator starts, to measure its
    idle CPU (the market alone)."""
    feed_settings: tuple[str, ...] = ()
    """Extra `section.key=value` settings for our server (`--feed-set`), to measure a choice."""
    scrape_metrics: float = 0.0
    """Seconds between GETs of our server's /metrics in the measured window
    (`--scrape-metrics [SECONDS]`, 1 if no value; 0: none), as Prometheus would: what the
    metrics cost, and how long each scrape takes."""

    def with_overrides(self, **values: object) -> Scenario:
        given = {key: value for key, value in values.items() if value is not None}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]

    @property
    def requested_rate(self) -> float:
        """The long-run tick rate, bursts included."""
        share = min(self.burst_length, self.burst_every) / self.burst_every
        return self.rate * (1 + (self.burst_factor - 1) * share)


LIGHT = Scenario("light", symbols=100, rate=2_000, clients=100, per_client=10)

SCENARIOS: dict[str, Scenario] = {
    "light": LIGHT,
    "fanout": Scenario("fanout", symbols=500, rate=1_000, clients=1_000, per_client=20),
    "overload": Scenario("overload", symbols=500, rate=10_000, clients=1_000, per_client=20),
    "slow": dataclasses.replace(LIGHT, name="slow", slow=5, duration=40.0),
    "burst": dataclasses.replace(LIGHT, name="burst", burst_factor=10.0, duration=15.0),
    "connections": Scenario(
        "connections", symbols=1_000, rate=1_000, clients=10_000, per_client=3, warmup=3.0
    ),
}
