"""The `simulator` kind: the built-in synthetic market (`simulators.TickSimulator`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feed.config import Config, at_least_one, fraction, key, non_negative, positive
from feed.sources.registry import SourceKind, register
from feed.sources.stream import StreamSource


@dataclass(frozen=True)
class SimulatorConfig:
    symbols: int = key(100, at_least_one)
    rate: float = key(2000.0, positive)
    seed: int = key(42, non_negative)
    step: float = key(0.001, positive)
    trade_ratio: float = key(0.3, fraction)
    burst_factor: float = key(1.0, positive)
    burst_every: float = key(5.0, positive)
    burst_length: float = key(1.0, non_negative)
    paced: bool = key(True)


def create(section: Any, config: Config) -> StreamSource:
    from simulators import SimulatorSettings, TickSimulator

    sim: SimulatorConfig = section
    simulator = TickSimulator(
        SimulatorSettings(
            symbols=sim.symbols,
            rate=sim.rate,
            seed=sim.seed,
            step=sim.step,
            trade_ratio=sim.trade_ratio,
            burst_factor=sim.burst_factor,
            burst_every=sim.burst_every,
            burst_length=sim.burst_length,
            paced=sim.paced,
        )
    )
    names = list(simulator.symbols)
    preview = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return StreamSource(
        simulator,
        kind="simulator",
        describe=f"simulator: {len(names)} symbols ({preview}), {sim.rate:g} ticks/s"
        f"{'' if sim.paced else ' unpaced'}, seed {sim.seed}",
    )


KIND = register(SourceKind("simulator", SimulatorConfig, create))
