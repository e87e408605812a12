"""A compiled load generator (`loadgen.c`), to check the Python one against.

`build()` compiles `loadgen.c` with `gcc -O2` on first use into `build/` (one binary per version
of the source, so an edited source is rebuilt and a stale binary never runs). `main()` is the
same command line and the same stdin/stdout line protocol as `benchmarks.loadgen`, so the runner
can start either (`--client c`): it fetches the server's symbols, draws every client's symbols
with `benchmarks.loadgen.symbol_lists` (the same seeded choice as the Python client), hands them
to the C program as a file of subscribe messages, forwards `start`/`stop` to it and turns its raw
report (counts and sparse histograms) into the Python load generator's report. The C program
times every update of every client; it has no never-reading clients (`--slow` must be 0).

With `--duration`, it runs on its own instead: warms up, measures, prints the report as one
JSON line on stdout (progress on stderr), e.g.
`python -m benchmarks.cclient --url ws://127.0.0.1:8080/ws --clients 100 --per-client 10
--duration 10`.

Beside it: `delay` (a server whose `ts` is a known delay before each write, measured by both
clients), `compare` (reports side by side, one row per server and client) and `cost` (the Python
load generator's own CPU per frame, without sockets). docs/performance.md, "The load generator,
checked against a compiled client", has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any

import orjson

from benchmarks.histogram import Histogram

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen.c"
BUILD_DIR = HERE / "build"
CFLAGS = ("-O2", "-Wall", "-Wextra")
"""No -Werror: it builds without a warning under gcc 12 with -Werror, but another gcc may warn
about more, and a warning should not stop a benchmark."""


class CClientError(RuntimeError):
    """The C client cannot be built or run here (the message says why)."""


def build(build_dir: Path = BUILD_DIR) -> Path:
    """The compiled client, built with gcc if this version of the source has no binary yet.

    Raises CClientError naming the problem if gcc is missing or the build fails."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:12]
    binary = build_dir / f"loadgen-{digest}"
    if binary.exists():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise CClientError("gcc is not installed: the C client is built with gcc -O2")
    build_dir.mkdir(parents=True, exist_ok=True)
    partial = build_dir / f".loadgen-{digest}-{os.getpid()}"
    done = subprocess.run(
        [gcc, *CFLAGS, "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise CClientError(f"gcc could not build {SOURCE.name}:\n{done.stderr[-3000:]}")
    os.replace(partial, binary)  # atomic: a concurrent build ends with the same binary
    for stale in build_dir.glob("loadgen-*"):  # older sources' binaries (a running one lives on)
        if stale != binary:
            stale.unlink(missing_ok=True)
    return binary


def emit(message: dict[str, Any], stream: IO[bytes] | None = None) -> None:
    out = stream or sys.stdout.buffer
    out.write(orjson.dumps(message) + b"\n")
    out.flush()


def convert(raw: dict[str, Any], clock_applied: bool) -> dict[str, Any]:
    """The C program's raw report as the Python load generator reports (same keys)."""
    histogram = Histogram.from_dict(raw["histogram"])
    wall = raw["seconds"]
    by_second = []
    for second in raw["seconds_histograms"]:
        part = Histogram.from_dict(
            {
                "buckets": second["buckets"],
                "counts": second["counts"],
                "total": second["count"],
                "min": 0,
                "max": second["max"],
                "sum": 0,
                "negative": 0,
            }
        )
        by_second.append(
            {
                "second": second["second"],
                "count": second["count"],
                "p50": float(part.percentile(50)),
                "p99": float(part.percentile(99)),
                "max": float(second["max"]),
            }
        )
    clients = raw["clients"]
    return {
        "seconds": round(wall, 3),
        "frames": raw["frames"],
        "snapshots": raw["snapshots"],
        "bytes": raw["bytes"],
        "frames_per_s": raw["frames"] / wall,
        "snapshots_per_s": raw["snapshots"] / wall,
        "bytes_per_s": raw["bytes"] / wall,
        "ticks_per_snapshot": raw["ticks_seen"] / raw["advances"] if raw["advances"] else None,
        "dropped": raw["dropped"],
        "slow_dropped": 0,
        "close_codes": raw["close_codes"],
        "client_cpu": 100 * raw["cpu_seconds"] / wall,
        "latency_us": histogram.summary(),
        "histogram": histogram.to_dict(),
        "curve": histogram.curve(),
        "by_second": by_second,
        "clock_offset_applied": clock_applied,
        "slow_catch_up_ms": None,
        "measured_clients": clients,
        "timed": {
            "asked": "all",
            "mode": "all",
            "clients": clients,
            "of": clients,
            "seed": None,
            "how": f"every client ({clients}): the C client times every update of every client",
            "warmup_cpu": None,
            "indices": None,
            "with_samples": raw["with_samples"],
        },
        "client": "c",
        "cpu_us_per_frame": 1e6 * raw["cpu_seconds"] / raw["frames"] if raw["frames"] else None,
        "unparsed_snapshots": raw["unparsed"],
        "fragmented_frames": raw["fragmented"],
    }


def subscriptions(args: argparse.Namespace) -> tuple[str, int, str, list[bytes]]:
    """(host, port, path, one subscribe message per client), as `benchmarks.loadgen` draws."""
    from benchmarks.loadgen import market_symbols, symbol_lists

    url = urllib.parse.urlsplit(args.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or 80
    symbols = market_symbols(f"http://{host}:{port}", args.symbols)
    lists = symbol_lists(symbols, args.clients, args.per_client, args.seed)
    messages = [orjson.dumps({"op": "subscribe", "symbols": chosen, "id": 1}) for chosen in lists]
    return host, port, url.path or "/ws", messages


def _forward_stdin(child: subprocess.Popen[bytes]) -> None:
    """Copy the runner's commands to the C program; close its stdin when ours closes."""
    assert child.stdin is not None
    try:
        for line in sys.stdin.buffer:
            child.stdin.write(line)
            child.stdin.flush()
    except (BrokenPipeError, ValueError):
        return
    finally:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()


def run(args: argparse.Namespace) -> int:
    if args.slow:
        raise SystemExit(
            "the C client has no never-reading clients: use --slow 0, or the Python client"
        )
    if args.timed not in ("auto", "all"):
        raise SystemExit(f"the C client times every client: --timed {args.timed} is not supported")
    try:
        binary = build()
    except CClientError as exc:
        raise SystemExit(str(exc)) from None
    host, port, path, messages = subscriptions(args)
    with tempfile.NamedTemporaryFile("wb", prefix="cclient-", suffix=".subs") as subs:
        subs.write(b"\n".join(messages) + b"\n")
        subs.flush()
        command = [
            str(binary), host, str(port), path, subs.name, str(args.pings),
            "1" if args.remote else "0", str(args.connect_concurrency), str(args.ready_timeout),
        ]  # fmt: skip
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            if args.duration is None:
                threading.Thread(target=_forward_stdin, args=(child,), daemon=True).start()
                return _relay(child, args)
            return _standalone(child, args)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()


def _relay(child: subprocess.Popen[bytes], args: argparse.Namespace) -> int:
    """The runner's protocol: pass the C program's lines on, converting its report."""
    assert child.stdout is not None
    for line in child.stdout:
        message = orjson.loads(line)
        if message.get("event") == "report":
            emit({"event": "report", **convert(message, bool(args.remote))})
        else:
            emit(message)
    return child.wait()


def _standalone(child: subprocess.Popen[bytes], args: argparse.Namespace) -> int:
    """Warm up, measure `args.duration` seconds, print the report as JSON on stdout."""
    assert child.stdout is not None and child.stdin is not None
    ready: dict[str, Any] = {}
    for line in child.stdout:
        ready = orjson.loads(line)
        if ready.get("event") == "ready":
            break
        print(line.decode().strip(), file=sys.stderr)
    if ready.get("event") != "ready":
        return child.wait() or 1
    time.sleep(args.warmup)
    child.stdin.write(b"start\n")
    child.stdin.flush()
    deadline = time.monotonic() + args.duration
    stopper = threading.Timer(max(0.0, deadline - time.monotonic()), _stop, (child,))
    stopper.start()
    try:
        for line in child.stdout:
            message = orjson.loads(line)
            if message.get("event") == "report":
                report = convert(message, bool(args.remote))
                report.pop("curve")
                report.pop("histogram")
                report["clock"] = ready.get("clock")
                emit({"event": "report", **report})
                break
            print(line.decode().strip(), file=sys.stderr)
    finally:
        stopper.cancel()
    child.stdin.close()
    return child.wait()


def _stop(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    with contextlib.suppress(BrokenPipeError, ValueError):
        child.stdin.write(b"stop\n")
        child.stdin.flush()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cclient", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--per-client", type=int, required=True)
    p.add_argument("--slow", type=int, default=0, help="must be 0: not supported by the C client")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--symbols", type=int, help="symbol count, for servers without /symbols")
    p.add_argument("--pings", type=int, default=20)
    p.add_argument("--remote", action="store_true", help="correct latencies by the clock offset")
    p.add_argument("--timed", default="auto", help="auto or all: the C client times every client")
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--duration", type=float, help="run on its own: seconds measured")
    p.add_argument("--warmup", type=float, default=1.0, help="on its own: seconds before")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))
