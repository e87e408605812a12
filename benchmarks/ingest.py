"""Ingest: how fast the coalescer folds ticks, through its batch path and one tick at a time."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from feed.coalescer import Coalescer
from feed.symbols import SymbolTable
from simulators import SimulatorSettings, TickSimulator


def market(ticks: int, symbols: int, seed: int) -> tuple[np.ndarray, list[str]]:
    simulator = TickSimulator(
        SimulatorSettings(symbols=symbols, rate=1_000_000, step=0.01, seed=seed, paced=False)
    )
    batches = []
    total = 0
    while total < ticks:
        batch = simulator.next_batch()
        batches.append(batch)
        total += len(batch)
    return np.concatenate(batches)[:ticks], list(simulator.symbols)


def batch_rate(ticks: np.ndarray, symbols: list[str], size: int) -> float:
    coalescer = Coalescer(SymbolTable(symbols))
    started = time.perf_counter()
    for start in range(0, len(ticks), size):
        coalescer.apply(ticks[start : start + size])
    return len(ticks) / (time.perf_counter() - started)


def one_at_a_time_rate(ticks: np.ndarray, symbols: list[str]) -> float:
    coalescer = Coalescer(SymbolTable(symbols))
    rows = ticks.tolist()
    started = time.perf_counter()
    for row in rows:
        coalescer.apply_one(*row)
    return len(rows) / (time.perf_counter() - started)


def run(
    ticks: int = 2_000_000,
    symbols: int = 500,
    repeat: int = 3,
    seed: int = 42,
    sizes: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000),
) -> dict[str, Any]:
    """Median ticks per second of each path over `repeat` runs."""
    data, names = market(ticks, symbols, seed)
    single = data[: min(len(data), 200_000)]
    result: dict[str, Any] = {"ticks": len(data), "symbols": symbols, "repeat": repeat}
    rates: dict[str, float] = {}
    for size in sizes:
        rates[f"batch_{size}"] = statistics.median(
            batch_rate(data, names, size) for _ in range(repeat)
        )
    rates["one_at_a_time"] = statistics.median(
        one_at_a_time_rate(single, names) for _ in range(repeat)
    )
    result["ticks_per_s"] = rates
    best = max(value for key, value in rates.items() if key.startswith("batch_"))
    result["best_batch_vs_one_at_a_time"] = best / rates["one_at_a_time"]
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"ingest: coalescer over {result['ticks']:,} simulated ticks, {result['symbols']} "
        f"symbols, median of {result['repeat']}",
        f"{'path':<18}{'ticks/s':>14}{'vs one at a time':>18}",
    ]
    single = result["ticks_per_s"]["one_at_a_time"]
    for key, value in result["ticks_per_s"].items():
        name = key.replace("batch_", "batch of ") if key.startswith("batch_") else key
        lines.append(f"{name:<18}{value:>14,.0f}{value / single:>17.1f}x")
    return "\n".join(lines)
