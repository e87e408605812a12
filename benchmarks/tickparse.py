"""Tick parsing: producer messages to batches, in each form and message size, on one core.

`.venv/bin/python -m benchmarks.tickparse` prints the ticks per second of `parse_message` (JSON
decoding included) for single tick objects, arrays and columnar batches of simulated ticks, and
of `parse_objects` alone on already decoded objects, each the best of a few runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from feed import ticks
from feed.symbols import SymbolTable
from feed.tickparse import parse_message, parse_objects
from simulators import SimulatorSettings, TickSimulator

NOW_NS = 1_764_300_000_000_000_000


def market(count: int, symbols: int, seed: int = 42) -> tuple[np.ndarray, list[str]]:
    simulator = TickSimulator(
        SimulatorSettings(symbols=symbols, rate=1_000_000, step=0.01, seed=seed, paced=False)
    )
    batches = []
    total = 0
    while total < count:
        batch = simulator.next_batch()
        batches.append(batch)
        total += len(batch)
    data = np.concatenate(batches)[:count]
    data["ts"] = NOW_NS + np.arange(len(data))  # next_batch leaves ts 0, which is no tick time
    return data, list(simulator.symbols)


def objects(batch: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in ticks.to_ndjson(batch, names).splitlines()]


def columnar(batch: np.ndarray, names: list[str]) -> bytes:
    """The columnar message of `batch`: cells of the unused kind hold 0."""
    used = np.unique(batch["sym"])
    trade = batch["kind"] == ticks.TRADE
    message = {
        "type": "batch",
        "symbols": [names[s] for s in used.tolist()],
        "sym": np.searchsorted(used, batch["sym"]).tolist(),
        "kind": batch["kind"].tolist(),
        "ts": batch["ts"].tolist(),
        "price": np.where(trade, batch["price"], 0).tolist(),
        "size": batch["size"].tolist(),
        "bid": np.where(trade, 0, batch["bid"]).tolist(),
        "ask": np.where(trade, 0, batch["ask"]).tolist(),
        "bid_size": batch["bid_size"].tolist(),
        "ask_size": batch["ask_size"].tolist(),
    }
    return orjson.dumps(message)


def rate(
    messages: Sequence[Any], parse: Callable[[Any], int], ticks: int, good: int, repeat: int
) -> float:
    """Best ticks per second (good and bad) over `repeat` runs of `parse` over `messages`,
    which hold `ticks` ticks, `good` of them good; `parse` returns the good ticks of one."""
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        parsed = sum(parse(message) for message in messages)
        elapsed = time.perf_counter() - started
        if parsed != good:
            raise RuntimeError(f"parsed {parsed} good ticks, expected {good}")
        best = max(best, ticks / elapsed)
    return best


def run(
    count: int = 100_000,
    symbols: int = 500,
    sizes: tuple[int, ...] = (1_000, 10_000),
    repeat: int = 5,
) -> dict[str, float]:
    """Ticks per second of each form and size (all ticks good unless the name says not)."""
    data, names = market(count, symbols)
    intern = SymbolTable(names).add
    decoded = objects(data, names)

    def message(data: bytes) -> int:
        return len(parse_message(data, intern, NOW_NS).batch)

    def decoded_objects(objs: list[dict[str, Any]]) -> int:
        return len(parse_objects(objs, intern, NOW_NS)[0])

    singles = [orjson.dumps(obj) for obj in decoded[:20_000]]
    one = len(singles)
    rates = {"object, one tick per message": rate(singles, message, one, one, repeat)}
    spoilt = data.copy()
    spoilt["price"][::100] = -1.0  # 1% bad: a trade's price, or a cell a quote ignores
    spoilt["bid"][::100] = -1.0
    bad = int(((spoilt["price"] < 0) & (spoilt["kind"] == ticks.TRADE)).sum())
    bad += int(((spoilt["bid"] < 0) & (spoilt["kind"] == ticks.QUOTE)).sum())
    for size in sizes:
        chunks = [decoded[i : i + size] for i in range(0, count, size)]
        arrays = [orjson.dumps(chunk) for chunk in chunks]
        batches = [columnar(data[i : i + size], names) for i in range(0, count, size)]
        rates[f"array of {size:,}"] = rate(arrays, message, count, count, repeat)
        rates[f"parse_objects of {size:,} (decoded)"] = rate(
            chunks, decoded_objects, count, count, repeat
        )
        rates[f"columnar of {size:,}"] = rate(batches, message, count, count, repeat)
    size = sizes[0]
    spoilt_objects = objects(spoilt, names)
    arrays = [orjson.dumps(spoilt_objects[i : i + size]) for i in range(0, count, size)]
    batches = [columnar(spoilt[i : i + size], names) for i in range(0, count, size)]
    rates[f"array of {size:,}, 1% rejected"] = rate(arrays, message, count, count - bad, repeat)
    rates[f"columnar of {size:,}, 1% rejected"] = rate(batches, message, count, count - bad, repeat)
    return rates


def main() -> None:
    count = 100_000
    print(f"tickparse: {count:,} simulated ticks, 500 symbols, best of 5, one core")
    print(f"{'form':<36}{'ticks/s':>14}{'ns/tick':>10}")
    for name, value in run(count).items():
        print(f"{name:<36}{value:>14,.0f}{1e9 / value:>10,.0f}")


if __name__ == "__main__":
    main()
