"""Publish: the fan-out's own cost per frame, with the kernel left out.

`Hub.publish` over 1,000 connections of 20 of 500 symbols each (the `fanout` scenario's shape),
whose transports are C callables that drop what they are given: what remains is our Python per
frame (mailbox, checks, framing), which the socket benchmarks cannot separate from the ~10 µs of
kernel time each write() costs on loopback. Time is noisy on a shared VM; `--instructions` counts
instructions per frame under callgrind instead, which repeats exactly.

python -m benchmarks.publish                  µs per frame, median of 5
python -m benchmarks.publish --instructions   instructions per frame (needs valgrind)
"""

from __future__ import annotations

import argparse
import collections
import gc
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from feed import hub as hub_module
from feed import ticks
from feed.config import LimitsConfig, WebSocketConfig
from feed.hub import Hub
from feed.market import Market
from simulators import symbol_names

SYMBOLS = 500
CONNECTIONS = 1_000
PER_CONNECTION = 20


class _Transport:
    """The transport calls the fan-out makes, each a C callable: no Python frame is added."""

    def __init__(self) -> None:
        self.write: Callable[[bytes], None] = collections.deque[bytes](maxlen=0).append
        self.is_closing = (0).__bool__
        self.get_write_buffer_size = (0).__int__
        self.get_extra_info = {"peername": ("127.0.0.1", 0)}.get
        self.abort = (0).__bool__


class _WebSocket:
    closed = False


def _setup(batches: int, ticks_per_batch: int) -> tuple[Hub, list[list[int]]]:
    # Every publish flushes every writer: there is no loop here to leave some for (under
    # callgrind, fifty times slower, a fan-out would pass FLUSH_SLICE and ask for one).
    hub_module.FLUSH_SLICE = float("inf")
    market = Market(symbol_names(SYMBOLS))
    hub = Hub(market, LimitsConfig(), WebSocketConfig())
    rng = random.Random(1)
    for _ in range(CONNECTIONS):
        conn = hub.connect(_WebSocket(), _Transport())  # type: ignore[arg-type]
        hub.registry.subscribe(conn, rng.sample(range(SYMBOLS), PER_CONNECTION))
    changed = []
    for i in range(batches):
        syms = np.array([rng.randrange(SYMBOLS) for _ in range(ticks_per_batch)])
        prices = np.full(ticks_per_batch, 100.0 + i % 7)
        changed.append(market.apply(ticks.trades(syms, prices, np.ones(ticks_per_batch), ts=1)))
    return hub, changed


def _frames(hub: Hub) -> int:
    return sum(conn.frames_sent for conn in hub.connections.values())


def measure(batches: int, ticks_per_batch: int, publish: bool = True) -> tuple[int, float]:
    """Frames written and seconds spent publishing `batches` batches."""
    hub, changed = _setup(batches, ticks_per_batch)
    gc.collect()
    started = time.perf_counter()
    if publish:
        for syms in changed:
            hub.publish(syms)
    return _frames(hub), time.perf_counter() - started


def run(repeat: int = 5, batches: int = 20_000) -> dict[str, Any]:
    result: dict[str, Any] = {"repeat": repeat, "batches": batches, "us_per_frame": {}}
    for size in (1, 10):
        count = batches if size == 1 else batches // 10
        runs = [measure(count, size) for _ in range(repeat)]
        result["us_per_frame"][f"batch_{size}"] = statistics.median(
            seconds * 1e6 / frames for frames, seconds in runs
        )
    return result


def instructions(batches: int = 1_000) -> dict[str, float]:
    """Instructions per frame: a callgrind run that publishes minus one that only sets up."""
    counts: dict[str, float] = {}
    for size in (1, 10):
        totals = {}
        for mode in ("count", "skip"):
            command = [sys.executable, "-m", "benchmarks.publish", f"--{mode}", str(size)]
            command += ["--batches", str(batches)]
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                capture_output=True,
                text=True,
                check=True,
            )
            collected = [line for line in done.stderr.splitlines() if "Collected" in line]
            totals[mode] = int(collected[-1].split()[-1])
            if mode == "count":
                frames = int(done.stdout.split()[0])
        counts[f"batch_{size}"] = (totals["count"] - totals["skip"]) / frames
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)  # one callgrind run
    parser.add_argument("--skip", type=int, help=argparse.SUPPRESS)  # its baseline
    args = parser.parse_args(argv)
    if args.count or args.skip:
        size = args.count or args.skip
        frames, _ = measure(args.batches, size, publish=bool(args.count))
        print(frames)
        return 0
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
            return 1
        for key, value in instructions(min(args.batches, 1_000)).items():
            print(f"{key.replace('_', ' of '):<12} {value:8,.0f} instructions per frame")
        return 0
    result = run(args.repeat, args.batches)
    print(
        f"publish: {CONNECTIONS:,} connections x {PER_CONNECTION} of {SYMBOLS} symbols, "
        f"no kernel; median of {args.repeat}"
    )
    for key, value in result["us_per_frame"].items():
        print(f"{key.replace('_', ' of '):<12} {value:6.2f} µs per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
