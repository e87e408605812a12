"""Synthetic tick sources for demos, tests and benchmarks."""

from simulators.tick_simulator import (
    DEFAULT_TICKERS,
    TICK_SIZE,
    TIME_COMPRESSION,
    SimulatorSettings,
    SimulatorStats,
    TickSimulator,
    generated_symbol,
    symbol_names,
)

__all__ = [
    "DEFAULT_TICKERS",
    "TICK_SIZE",
    "TIME_COMPRESSION",
    "SimulatorSettings",
    "SimulatorStats",
    "TickSimulator",
    "generated_symbol",
    "symbol_names",
]
