"""Fuzz a live `feed serve`: `python -m benchmarks.fuzz [--cases N] [--seconds S]`.

Starts `feed serve` (the simulator at its default rate, 100 symbols, pinned to core 0; this
process on core 1), keeps a bystander subscribed throughout, and draws cases of every category
of benchmarks/fuzzcases.py in rounds until `--seconds` have passed or each category has had
`--cases`. Prints the cases tried per category, every failure, the known deviations seen, the
bystander's figures and the server's descriptors, RSS and connections before and after.
Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks import fuzzcases as fc
from benchmarks.runner import cores

ROUND = 50
"""Cases per category per round."""
FD_TOLERANCE = 0
RSS_TOLERANCE = 16 << 20
"""Bytes of RSS growth allowed: pymalloc keeps arenas it once used (a 1 MiB case buffers its
message and aiohttp's reader copies), so the heap settles a few MiB above the start; a leak of a
few hundred bytes per case over the ~20,000 cases of two minutes would pass it."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=0, help="cases per category (0: no cap)")
    parser.add_argument("--seconds", type=float, default=120.0, help="time budget")
    args = parser.parse_args(argv)
    server_cpus, client_cpus = cores()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    served = fc.start_serve(
        cpus=server_cpus, log_path=Path("/tmp") / f"fuzz-serve-{os.getpid()}.log"
    )
    target = served.target
    tally = fc.Tally()
    try:
        bystander = fc.Bystander(target, ["AAPL", "MSFT", "NVDA"])
        bystander.start()
        if not bystander.ready.wait(10):
            raise RuntimeError("the bystander got no snapshot")
        for name in fc.CATEGORIES:  # warm up: first routes, first allocations
            fc.run_category(target, name, 5, fc.Tally())
        baseline = fc.settle(target, fc.resources(target), 15)
        print(
            f"baseline: {baseline.fds} fds, RSS {baseline.rss / 2**20:.1f} MiB, "
            f"{baseline.connections} connection(s)"
        )
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            progressed = False
            for name in fc.CATEGORIES:
                done = tally.cases.get(name, 0)
                if args.cases and done >= args.cases:
                    continue
                count = ROUND if not args.cases else min(ROUND, args.cases - done)
                fc.run_category(target, name, count, tally)
                progressed = True
                if time.monotonic() - start >= args.seconds:
                    break
            fc.run_rate(target, tally)
            if not progressed:
                break
            if served.process.poll() is not None:
                tally.failures.append(("server", "-", f"exited with {served.process.returncode}"))
                break
        elapsed = time.monotonic() - start
        after = fc.settle(target, baseline, 15)
        bystander.stop.set()
        bystander.join(5)
        total = sum(tally.cases.values())
        print(f"{total} cases in {elapsed:.0f} s ({total / elapsed:.0f}/s):")
        for name, count in tally.cases.items():
            failed = sum(1 for f in tally.failures if f[0] == name)
            print(f"  {name:<10} {count:>7} cases, {failed} failed")
        for name, count in tally.known.items():
            print(f"  known deviation {name}: {count} cases ({fc.KNOWN[name]})")
        seen: set[tuple[str, str]] = set()
        for category, what, why in tally.failures:
            if (category, why[:60]) in seen:
                continue
            seen.add((category, why[:60]))
            print(f"FAIL {category}: {what[:100]}: {why[:300]}")
        print(
            f"bystander: {bystander.updates} updates, "
            f"longest gap {bystander.longest_gap * 1000:.0f} ms, "
            f"problems: {bystander.problems or 'none'}"
        )
        grew = after.rss - baseline.rss
        print(
            f"after: {after.fds} fds ({after.fds - baseline.fds:+d}), "
            f"RSS {after.rss / 2**20:.1f} MiB "
            f"({grew / 2**20:+.1f} MiB), {after.connections} connection(s)"
        )
        ok = not tally.failures and not bystander.problems
        ok = ok and after.fds <= baseline.fds + FD_TOLERANCE and grew <= RSS_TOLERANCE
        ok = ok and after.connections == baseline.connections and served.process.poll() is None
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        fc.stop_serve(served)


if __name__ == "__main__":
    sys.exit(main())
