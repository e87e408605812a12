"""Memory: where the server's bytes per connection go, by package and by line.

Starts `feed serve` under tracemalloc, takes a snapshot, connects the load generator's clients,
takes another once every client is subscribed, and prints the difference per connection. The
`connections` scenario gives the total (RSS); this tells whose it is: aiohttp's and asyncio's
objects for each connection, or ours.

python -m benchmarks.memory --clients 3000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import IO, Any

from benchmarks.runner import _pinned

ROOT = Path(__file__).resolve().parent.parent


def _package(filename: str) -> str:
    """A short owner for a source file: `aiohttp`, `asyncio`, `feed`, ... or `other`."""
    parts = Path(filename).parts
    for owner in ("aiohttp", "asyncio", "feed", "uvloop", "multidict", "yarl", "simulators"):
        if owner in parts:
            return owner
    return "other"


def _serve(argv: list[str], out: Path) -> int:
    """The server side: snapshot on SIGUSR1, write the difference to `out` on SIGUSR2."""
    import gc

    from feed.cli import main as feed_main

    tracemalloc.start(1)
    state: dict[str, tracemalloc.Snapshot] = {}

    def baseline(*_: object) -> None:
        gc.collect()
        state["before"] = tracemalloc.take_snapshot()
        out.with_suffix(".base").write_text("ok")

    def difference(*_: object) -> None:
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(state["before"], "lineno")
        rows = [
            {"file": s.traceback[0].filename, "line": s.traceback[0].lineno, "bytes": s.size_diff}
            for s in stats
            if s.size_diff
        ]
        out.write_text(json.dumps(rows))

    signal.signal(signal.SIGUSR1, baseline)
    signal.signal(signal.SIGUSR2, difference)
    return feed_main(["serve", *argv])


def _wait_for(stream: IO[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        if needle in line:
            return line
    raise RuntimeError(f"no {needle!r} within {timeout:.0f} s")


def _wait_log(path: Path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise RuntimeError(f"no {needle!r} in the server's log within {timeout:.0f} s")


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server wrote no {path.name} within {timeout:.0f} s")
        time.sleep(0.1)


def measure(clients: int, per_client: int, symbols: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "diff.json"
        log = Path(folder) / "server.log"
        serve = ["--port", "0", "--symbols", str(symbols), "--rate", str(rate)]
        serve += ["--set", f"limits.max_connections={clients + 100}"]
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.memory", "--serve", str(out), "--", *serve],
            stderr=log.open("w"),
            cwd=ROOT,
            preexec_fn=_pinned({0}),
        )
        loadgen = None
        try:
            line = _wait_log(log, "listening on", 60)
            url = line[line.index("ws://") :].split()[0]
            time.sleep(1.0)  # the market's first second: its own allocations settle
            server.send_signal(signal.SIGUSR1)
            _wait_file(out.with_suffix(".base"), 60)
            load = ["--clients", str(clients), "--per-client", str(per_client), "--measure", "0"]
            loadgen = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.loadgen", "--url", url, *load],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
                preexec_fn=_pinned({1}),
            )
            assert loadgen.stdout is not None
            _wait_for(loadgen.stdout, '"event":"ready"', 300)
            server.send_signal(signal.SIGUSR2)
            _wait_file(out, 300)
            rows = json.loads(out.read_text())
        finally:
            for process in (loadgen, server):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(30)
    by_package: collections.Counter[str] = collections.Counter()
    for row in rows:
        by_package[_package(row["file"])] += row["bytes"]
    top = sorted(rows, key=lambda row: -row["bytes"])[:15]
    return {
        "clients": clients,
        "bytes_per_connection": sum(row["bytes"] for row in rows) / clients,
        "by_package": {name: size / clients for name, size in by_package.most_common()},
        "top_lines": [
            {
                "where": f"{os.path.relpath(row['file'], ROOT)}:{row['line']}",
                "bytes": row["bytes"] / clients,
            }
            for row in top
        ],
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"memory: Python allocations per connection with {result['clients']:,} clients "
        f"(tracemalloc): {result['bytes_per_connection']:,.0f} B",
        "",
        f"{'package':<12}{'B per connection':>18}",
    ]
    lines += [f"{name:<12}{size:>18,.0f}" for name, size in result["by_package"].items()]
    lines += ["", "largest lines:"]
    lines += [f"{row['bytes']:>8,.0f} B  {row['where']}" for row in result["top_lines"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--clients", type=int, default=3_000)
    parser.add_argument("--per-client", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the server side
    args, rest = parser.parse_known_args(argv)
    if args.serve:
        return _serve([arg for arg in rest if arg != "--"], args.serve)
    result = measure(args.clients, args.per_client, args.symbols, args.rate)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
