"""`python -m benchmarks`: run a scenario against ours and the peers, report, write JSON and plots.

python -m benchmarks list
python -m benchmarks run light --vs all --repeat 3
python -m benchmarks run light --vs all --market internal        (each server simulates itself)
python -m benchmarks run fanout --vs websockets,node --duration 20
python -m benchmarks run light --url ws://10.0.0.5:8080/ws      (a server on another host)
python -m benchmarks run ingest
python -m benchmarks lan light                                   (LAN mode over a veth pair)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import ingest, report, runner
from benchmarks.scenarios import MARKETS, SCENARIOS, Scenario
from benchmarks.servers import SERVERS

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list scenarios and servers")
    summarize = commands.add_parser("summarize", help="print report.json files as Markdown")
    summarize.add_argument("reports", nargs="+", type=Path)
    for name, help_text in (("run", "run a scenario"), ("lan", "run a scenario over a veth pair")):
        run = commands.add_parser(name, help=help_text)
        run.add_argument("scenario", choices=[*SCENARIOS, "ingest"] if name == "run" else SCENARIOS)
        run.add_argument(
            "--vs",
            default="all" if name == "run" else "none",
            help="peers to run too: all, none, or a list from "
            + ", ".join(s for s in SERVERS if s != "feed"),
        )
        run.add_argument("--repeat", type=int, default=1, help="runs per server (medians)")
        run.add_argument("--duration", type=float, help="seconds measured")
        run.add_argument("--warmup", type=float, help="seconds before measuring")
        run.add_argument("--symbols", type=int)
        run.add_argument("--rate", type=float, help="ticks per second")
        run.add_argument("--clients", type=int)
        run.add_argument("--per-client", type=int)
        run.add_argument("--slow", type=int, help="clients that never read")
        run.add_argument("--burst-factor", type=float)
        run.add_argument("--seed", type=int)
        run.add_argument("--idle", type=float, help="seconds with no client, for idle CPU (1.5)")
        if name == "run":
            run.add_argument(
                "--market",
                choices=MARKETS,
                help="external: one `feed simulate` process piped into every server's stdin, "
                "ts stamped as each tick is written (the default); internal: each server "
                "simulates the market itself, ts stamped as each batch is yielded",
            )
        run.add_argument(
            "--feed-set",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="a config setting for our server, e.g. "
            "websocket.send_buffer_size=65536 (repeatable)",
        )
        run.add_argument(
            "--scrape-metrics",
            type=float,
            nargs="?",
            const=1.0,
            metavar="SECONDS",
            help="GET /metrics of our server every SECONDS (1 if not given) of the measured "
            "window; the report gives each scrape's round trip and render time",
        )
        run.add_argument("--out", type=Path, help=f"results folder (default {RESULTS}/...)")
        run.add_argument("--no-plot", action="store_true")
        run.add_argument(
            "--client",
            choices=list(runner.CLIENTS),
            default="python",
            help="the load generator: python (benchmarks/loadgen.py, the default) or c "
            "(benchmarks/cclient, compiled with gcc on first use: the check on the Python one)",
        )
        run.add_argument(
            "--timed",
            help="which clients time their snapshots: auto (the default: every client, or a "
            "seeded uniform sample if that would load the generator), all, or a sample size",
        )
        if name == "run":
            run.add_argument("--url", help="measure a server already running there (LAN mode)")
            run.add_argument("--ticks", type=int, default=2_000_000, help="ingest: ticks folded")
        else:
            run.add_argument(
                "--delay-ms",
                type=float,
                default=0.0,
                help="one-way delay added on the veth pair (needs sch_netem)",
            )
    return parser


def _servers(vs: str) -> list[str]:
    if vs == "none":
        return ["feed"]
    if vs == "all":
        return list(SERVERS)
    names = [name.strip() for name in vs.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    return ["feed", *[name for name in names if name != "feed"]]


def _scenario(args: argparse.Namespace) -> Scenario:
    # LAN mode starts our server in its namespace with its own simulator: internal.
    market = getattr(args, "market", None) if args.command == "run" else "internal"
    return SCENARIOS[args.scenario].with_overrides(
        market=market,
        idle=args.idle,
        duration=args.duration,
        warmup=args.warmup,
        symbols=args.symbols,
        rate=args.rate,
        clients=args.clients,
        per_client=args.per_client,
        slow=args.slow,
        burst_factor=args.burst_factor,
        seed=args.seed,
        feed_settings=tuple(args.feed_set) or None,
        scrape_metrics=args.scrape_metrics,
    )


def _out(args: argparse.Namespace, name: str) -> Path:
    out: Path = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_ingest(args: argparse.Namespace) -> int:
    out = _out(args, "ingest")
    result = ingest.run(ticks=args.ticks, repeat=max(1, args.repeat) if args.repeat > 1 else 3)
    document = {
        "scenario": "ingest",
        "command": sys.argv,
        "machine": report.machine(),
        "result": result,
    }
    report.write_json(out / "ingest.json", document)
    print(ingest.table(result))
    print(f"\nwritten: {out / 'ingest.json'}")
    return 0


def run_scenario(
    args: argparse.Namespace, url: str | None = None, extra: dict[str, Any] | None = None
) -> int:
    scenario = _scenario(args)
    out = _out(args, scenario.name)
    names = [] if url else _servers(args.vs)
    skipped: dict[str, str] = {}
    for name in list(names):
        reason = SERVERS[name].unavailable()
        if reason:
            skipped[name] = reason
            names.remove(name)
            print(f"skipping {name}: {reason}", file=sys.stderr)
    total = scenario.clients + scenario.slow
    if total > 1000:
        print(
            f"note: {total:,} connections: the server and the load generator run with the "
            f"open-files limit raised to {runner.open_files_limit():,} (the hard limit)",
            flush=True,
        )
    runs: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    for repeat in range(args.repeat):
        for name in names or [url or "remote"]:
            label = f"{name}-{repeat + 1}" if url is None else f"remote-{repeat + 1}"
            print(f"[{label}] {scenario.name}", flush=True)
            try:
                if url is None:
                    result = runner.run_server(
                        SERVERS[name], scenario, out, label, args.client, args.timed
                    )
                else:
                    result = runner.run_remote(url, scenario, out, label, args.client, args.timed)
            except (runner.BenchmarkError, OSError, TimeoutError) as exc:
                failures[label] = str(exc)
                print(f"[{label}] failed: {exc}", file=sys.stderr, flush=True)
                continue
            runs.setdefault(result["server"], []).append(result)
    summaries = [report.summarize(server_runs) for server_runs in runs.values()]
    scenario_doc = runner.scenario_dict(scenario)
    if url is not None:
        scenario_doc["market"] = "remote"  # whatever the server there runs
    document = {
        "scenario": scenario_doc,
        "market": scenario_doc["market"],
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": report.machine(),
        "client": args.client,
        "clock": "same host: latency = receive time - ts on one clock"
        if url is None
        else "LAN: latency corrected by the clock offset estimated from ping/pong",
        "servers": {name: SERVERS[name].description for name in names},
        "skipped": skipped,
        "failures": failures,
        "summary": summaries,
        "runs": runs,
        **(extra or {}),
    }
    report.write_json(out / "report.json", document)
    if summaries:
        print()
        print(report.table(summaries, scenario_doc))
        print(document["clock"])
        for s in summaries:
            if "slow_catch_up_ms" in s:
                value = s["slow_catch_up_ms"]
                print(
                    f"{s['server']}: the never-reading clients, reading again, reached the newest "
                    "seq of every symbol "
                    + (
                        "never (within 10 s), or were dropped"
                        if value is None
                        else f"in {value:.1f} ms (the slowest of them)"
                    )
                )
            if s["client_saturated"]:
                print(
                    f"warning: the load generator was near saturation while measuring "
                    f"{s['server']}: its figures may measure the client, not the server"
                )
            if s.get("tick_rate", {}).get("behind"):
                print(
                    f"warning: {s['server']}'s market ran at "
                    f"{100 * s['tick_rate']['ratio']:.0f}% of the rate asked for"
                )
            if s.get("producer_rate", {}).get("behind"):
                print(
                    f"warning: while measuring {s['server']}, the producer wrote "
                    f"{100 * s['producer_rate']['ratio']:.0f}% of the rate asked for (its own "
                    "count): it fell behind, or the server did not read its stdin fast enough"
                )
        if url is not None:
            clock = summaries[0]["clock"]
            print(
                f"clock offset {clock['offset_ns'] / 1000:+.1f} µs "
                f"± {clock['uncertainty_ns'] / 1000:.1f} µs, round trip min "
                f"{clock['rtt_min_ns'] / 1000:.1f} µs, "
                f"median {clock['rtt_median_ns'] / 1000:.1f} µs"
            )
        if not args.no_plot and report.plot(
            summaries, runs, out / "latency.png", f"{scenario.name} ({time.strftime('%Y-%m-%d')})"
        ):
            print(f"plot: {out / 'latency.png'}")
    print(f"written: {out / 'report.json'}")
    return 1 if failures else 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<12} {scenario}")
        for spec in SERVERS.values():
            reason = spec.unavailable()
            print(
                f"{spec.name:<12} {spec.description}"
                + (f"  [unavailable: {reason}]" if reason else "")
            )
        return 0
    if args.command == "summarize":
        for path in args.reports:
            document = json.loads(path.read_text())
            if document.get("scenario") == "ingest":
                print(ingest.table(document["result"]))
            else:
                print(report.markdown(document))
            print()
        return 0
    # SIGTERM unwinds like Ctrl-C, so that every process a run started is stopped on the way.
    signal.signal(signal.SIGTERM, _terminated)
    if args.command == "run" and args.scenario == "ingest":
        return run_ingest(args)
    if args.command == "run":
        return run_scenario(args, url=args.url)
    from benchmarks import lan

    return lan.main(args, _scenario(args), run_scenario)


if __name__ == "__main__":
    sys.exit(main())
