"""Where an arrival's time goes inside the server: from the tick's birth to the last write.

Runs a scenario (external market) against our feed and the `websockets` peer, each started under
a tracer that times, for every chunk of ticks the server reads from its stdin pipe:

- `wake`: from the first tick's `ts` (stamped by the producer as it wrote the line) to the
  moment the server's code sees the bytes (the pipe, the kernel waking the process, the loop);
- `prep`: from there to the start of the fan-out (reading, parsing, folding, encoding; for the
  peer also waking the task that reads its StreamReader);
- `fanout`: from the start of the fan-out to the end of its last write for that chunk (every
  subscriber's frame written into its socket).

The latency a client measures is `wake + prep` + its place in the fan-out + the trip to the
client. The tracer costs a few clock reads per chunk, the same for both servers.

    python -m benchmarks.arrival light                  # feed and websockets, 3 runs each
    python -m benchmarks.arrival fanout --repeat 1

The figures are printed as a table (µs, medians over runs of each run's percentiles) and written
to `benchmarks/results/<time>-arrival-<scenario>/arrival.json`.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import runpy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import runner
from benchmarks.scenarios import SCENARIOS, Scenario
from benchmarks.servers import SERVERS, ServerSpec

PHASES = ("wake", "prep", "fanout", "total")
"""`total` is `wake + prep + fanout`: the tick's birth to its chunk's last write."""
PREP_PARTS = ("read", "fold", "handoff")
"""Our feed's `prep`, cut where parsing ends (`Pipeline.apply_rows`) and where folding and
encoding end (`Pipeline._publish`): the chunks folded as rows, the usual at these rates."""


class Trace:
    """The chunks seen so far: per chunk, the clock readings that bound each phase."""

    def __init__(self, skip_s: float) -> None:
        self.start_ns = time.time_ns() + int(skip_s * 1e9)
        self.rows: list[tuple[int, ...]] = []
        """(first tick's ts, bytes seen, fan-out start, last write end, then any marks), ns
        since the epoch."""
        self._open: list[int] | None = None
        self._marks: list[int] = []

    def arrived(self, data: bytes) -> None:
        """Bytes reached the server's code: close the previous chunk, open this one."""
        now = time.time_ns()
        self.close()
        if now < self.start_ns:
            return
        at = data.find(b'"ts":')
        if at < 0:
            return
        end = at + 5
        while end < len(data) and 48 <= data[end] <= 57:
            end += 1
        if end == at + 5:
            return
        self._open = [int(data[at + 5 : end]), now, 0, 0]
        self._marks = []

    def mark(self) -> None:
        """A point inside `prep` (our feed only: where parsing ends, where folding ends)."""
        if self._open is not None and not self._open[2]:
            self._marks.append(time.time_ns())

    def fanout_started(self) -> None:
        if self._open is not None and not self._open[2]:
            self._open[2] = time.time_ns()

    def wrote(self) -> None:
        if self._open is not None:
            self._open[3] = time.time_ns()

    def close(self) -> None:
        row = self._open
        if row is not None and row[2] and row[3]:
            self.rows.append((row[0], row[1], row[2], row[3], *self._marks))
        self._open = None

    def write(self, path: Path) -> None:
        self.close()
        path.write_text(json.dumps({"rows": self.rows}))


def _install_feed(trace: Trace) -> None:
    """Our feed: the stdin pipe's `data_received` (fold and fan-out run inside it) and
    `Hub.publish`, which starts the fan-out and returns after its last write."""
    from feed.hub import Hub
    from feed.pipeline import Pipeline
    from feed.sources import stdin

    protocol = stdin._PipeProtocol
    received = protocol.data_received
    publish = Hub.publish

    def data_received(self: Any, data: bytes) -> None:
        trace.arrived(data)
        received(self, data)
        trace.close()

    def traced_publish(self: Hub, syms: list[int]) -> None:
        trace.fanout_started()
        publish(self, syms)
        trace.wrote()

    apply_rows, publish_syms = Pipeline.apply_rows, Pipeline._publish

    def traced_apply_rows(self: Pipeline, source: Any, rows: list[tuple[Any, ...]]) -> None:
        trace.mark()  # read and parsed
        apply_rows(self, source, rows)

    def traced_publish_syms(self: Pipeline, syms: list[int]) -> None:
        trace.mark()  # folded and encoded
        publish_syms(self, syms)

    protocol.data_received = data_received  # type: ignore[method-assign]
    Hub.publish = traced_publish  # type: ignore[method-assign]
    Pipeline.apply_rows = traced_apply_rows  # type: ignore[method-assign]
    Pipeline._publish = traced_publish_syms  # type: ignore[method-assign]


def _install_websockets(trace: Trace) -> None:
    """The peer: its StreamReader's protocol (the bytes arrive; a task wakes to read them) and
    each `websockets.broadcast` (one per tick) as the fan-out."""
    import asyncio

    import websockets

    received = asyncio.StreamReaderProtocol.data_received
    send = websockets.broadcast

    def data_received(self: Any, data: bytes) -> None:
        trace.arrived(data)
        received(self, data)

    def traced_broadcast(*args: Any, **kwargs: Any) -> None:
        trace.fanout_started()
        send(*args, **kwargs)
        trace.wrote()

    asyncio.StreamReaderProtocol.data_received = data_received  # type: ignore[method-assign]
    websockets.broadcast = traced_broadcast  # the peer calls it as `websockets.broadcast`


TRACED = {"feed": ("feed", _install_feed), "websockets": (None, _install_websockets)}


def _traced_spec(spec: ServerSpec, out: Path, skip_s: float) -> ServerSpec:
    def build(scenario: Scenario) -> list[str]:
        command = spec.command(scenario)
        assert command[1] == "-m", command
        return [
            sys.executable, "-m", "benchmarks.arrival", "trace",
            "--out", str(out), "--skip", str(skip_s), "--", *command[2:],
        ]  # fmt: skip

    return dataclasses.replace(spec, build=build)


def percentiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99)}


def phases(rows: list[list[int]]) -> dict[str, dict[str, float]]:
    """Each phase's percentiles in µs over a run's chunks."""
    columns: dict[str, list[int]] = {phase: [] for phase in (*PHASES, *PREP_PARTS)}
    for ts, seen, started, ended, *marks in rows:
        columns["wake"].append(seen - ts)
        columns["prep"].append(started - seen)
        columns["fanout"].append(ended - started)
        columns["total"].append(ended - ts)
        if len(marks) == 2:
            parsed, folded = marks
            columns["read"].append(parsed - seen)
            columns["fold"].append(folded - parsed)
            columns["handoff"].append(started - folded)
    return {phase: percentiles(values) for phase, values in columns.items() if values}


def _trace_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arrival trace")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip", type=float, default=0.0, help="seconds before recording")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    name = "feed" if args.module == "feed" else "websockets"
    trace = Trace(args.skip)
    TRACED[name][1](trace)
    atexit.register(trace.write, args.out)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "trace":
        _trace_main(_split(argv) if "--" in argv else argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arrival", description=__doc__)
    parser.add_argument("scenario", choices=["light", "fanout", "burst"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--vs", default="websockets", help="websockets, or none")
    parser.add_argument("--duration", type=float, help="seconds measured")
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--out", type=Path, help="results folder")
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    changes = {key: getattr(args, key) for key in ("duration", "warmup", "clients")}
    scenario = dataclasses.replace(
        scenario, **{key: value for key, value in changes.items() if value is not None}
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(__file__).resolve().parent / "results"
    out = args.out or results / f"{stamp}-arrival-{scenario.name}"
    out.mkdir(parents=True, exist_ok=True)
    names = ["feed"] + ([] if args.vs == "none" else ["websockets"])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeat):
        for name in names:
            label = f"{name}-{repeat + 1}"
            trace_file = out / f"{label}-trace.json"
            skip = scenario.warmup + 1.0  # the market primes, then clients connect
            spec = _traced_spec(SERVERS[name], trace_file, skip)
            print(f"[{label}] {scenario.name}", flush=True)
            result = runner.run_server(spec, scenario, out, label)
            rows = json.loads(trace_file.read_text())["rows"]
            runs[name].append(
                {
                    "chunks": len(rows),
                    "phases_us": phases(rows),
                    "client_p50_ms": result["latency_us"]["p50"] / 1000,
                    "client_p99_ms": result["latency_us"]["p99"] / 1000,
                    "server_cpu": result.get("server_cpu"),
                }
            )
    document = {"scenario": runner.scenario_dict(scenario), "runs": runs}
    (out / "arrival.json").write_text(json.dumps(document, indent=2))
    print(table(runs, scenario))
    print(f"written: {out / 'arrival.json'}")


def _split(argv: list[str]) -> list[str]:
    """`trace --out F --skip S -- MODULE ARGS...` as argparse wants it."""
    at = argv.index("--")
    return [*argv[1:at], argv[at + 1], *argv[at + 2 :]]


def _prep_parts(server_runs: list[dict[str, Any]]) -> str:
    def med(part: str, q: str) -> float:
        return float(statistics.median(run["phases_us"][part][q] for run in server_runs))

    return ", ".join(
        f"{part} {med(part, 'p50'):,.0f} ({med(part, 'p99'):,.0f})" for part in PREP_PARTS
    )


def table(runs: dict[str, list[dict[str, Any]]], scenario: Scenario) -> str:
    """Medians over runs of each run's percentile, µs; and the clients' own latency."""
    lines = [
        f"{scenario.name}: where a chunk's time goes inside the server, µs (median of "
        f"{len(next(iter(runs.values())))} runs)",
        "",
        "| server | chunks | "
        + " | ".join(f"{phase} p50 | {phase} p99" for phase in PHASES)
        + " | client p50 ms | client p99 ms | CPU % |",
        "|" + " --- |" * (2 + 2 * len(PHASES) + 3),
    ]
    parts = []
    for name, server_runs in runs.items():
        if not server_runs:
            continue
        if all("read" in run["phases_us"] for run in server_runs):
            parts.append(f"`{name}` prep, p50 (p99): " + _prep_parts(server_runs))

        def med(get: Any, server_runs: list[dict[str, Any]] = server_runs) -> float:
            return float(statistics.median(get(run) for run in server_runs))

        cells = [f"`{name}`", f"{med(lambda r: r['chunks']):,.0f}"]
        for phase in PHASES:
            for q in ("p50", "p99"):
                cells.append(f"{med(lambda r, p=phase, q=q: r['phases_us'][p][q]):,.0f}")
        cells += [
            f"{med(lambda r: r['client_p50_ms']):.2f}",
            f"{med(lambda r: r['client_p99_ms']):.2f}",
            f"{med(lambda r: r['server_cpu'] or 0):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if parts:
        lines += ["", *parts]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
