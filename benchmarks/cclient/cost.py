"""The Python load generator's own cost per frame, without sockets or a server.

Feeds `benchmarks.loadgen.FeedClient.data_received` a stream of `update` frames (the feed's
snapshot shape) and prints the CPU per frame for a client that only counts and one that times,
with one and three snapshots a frame and four frames per read. The kernel's share of a received
frame (the read, the wake-up) is not in these figures: the socket benchmarks' `client µs/frame`
holds both.

python -m benchmarks.cclient.cost
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from benchmarks.loadgen import FeedClient, Totals


class _Nowhere:
    """A transport that takes no write (a timed client writes nothing in the window)."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    header = bytes([0x81, n]) if n < 126 else bytes([0x81, 126, n >> 8, n & 0xFF])
    return header + payload


def _snapshot(symbol: str, seq: int) -> dict[str, Any]:
    return {
        "symbol": symbol, "seq": seq, "ts": time.time_ns(), "last": 101.25, "last_size": 300,
        "bid": 101.2, "ask": 101.3, "bid_size": 100, "ask_size": 200, "open": 100.0,
        "high": 102.0, "low": 99.0, "volume": 12345, "vwap": 100.5, "trades": 77,
    }  # fmt: skip


async def measure(
    snapshots: int, frames_per_read: int, reads: int = 2000, repeat: int = 25
) -> dict[str, float]:
    """µs of CPU per frame, counted and timed (the best of two passes each)."""
    reads_data = []
    seq = 0
    for _ in range(reads):
        chunk = b""
        for _ in range(frames_per_read):
            seq += 1
            data = [_snapshot(f"S{(seq + k) % 20:03d}", seq) for k in range(snapshots)]
            chunk += _frame(orjson.dumps({"type": "update", "data": data}))
        reads_data.append(chunk)
    totals = Totals()
    best = {"counted": float("inf"), "timed": float("inf")}
    for timed in (False, True, False, True):
        client = FeedClient(totals, "host", "/ws", [], timed=timed)
        client.transport = _Nowhere()  # type: ignore[assignment]
        client.open = True
        started = time.process_time()
        for _ in range(repeat):
            for chunk in reads_data:
                client.data_received(chunk)
            totals.flush()
        per_frame = (time.process_time() - started) / (repeat * reads * frames_per_read) * 1e6
        key = "timed" if timed else "counted"
        best[key] = min(best[key], per_frame)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cclient.cost", description=__doc__)
    parser.parse_args(argv)
    print("Python load generator, CPU per frame (no sockets), µs")
    print(f"{'shape':<42}{'counted':>9}{'timed':>9}")
    for snapshots, frames in ((1, 1), (3, 1), (1, 4)):
        best = asyncio.run(measure(snapshots, frames))
        shape = f"{snapshots} snapshot(s) a frame, {frames} frame(s) a read"
        print(f"{shape:<42}{best['counted']:>9.2f}{best['timed']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
