"""What a run prints and writes: a table on the terminal, one JSON document, optional plots."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.servers import PEERS_DIR


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {"python": platform.python_version()}
    for package in ("aiohttp", "uvloop", "orjson", "numpy", "websockets"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    if shutil.which("node"):
        versions["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        ws = PEERS_DIR / "node" / "node_modules" / "ws" / "package.json"
        if ws.exists():
            versions["ws"] = json.loads(ws.read_text())["version"]
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "versions": versions,
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs of one server (a single run is its own median)."""
    first = runs[0]
    summary: dict[str, Any] = {
        "server": first["server"],
        "runs": len(runs),
        # reports from before the external mode existed were all internal
        "market": first.get("market", "internal"),
    }
    summary["latency_us"] = {
        key: _median([run["latency_us"][key] for run in runs]) for key in first["latency_us"]
    }
    for key in (
        "snapshots_per_s",
        "frames_per_s",
        "bytes_per_s",
        "client_cpu",
        "producer_cpu",
        "server_cpu",
        "idle_cpu",
        "fanout_cpu",
    ):
        if key in first:
            summary[key] = _median([run[key] for run in runs])
    ratios = [run["ticks_per_snapshot"] for run in runs if run.get("ticks_per_snapshot")]
    summary["ticks_per_snapshot"] = _median(ratios) if ratios else None
    summary["dropped"] = max(run["dropped"] for run in runs)
    summary["slow_dropped"] = max(run.get("slow_dropped", 0) for run in runs)
    summary["client_saturated"] = any(run["client_saturated"] for run in runs)
    if "tick_rate" in first:
        summary["tick_rate"] = {
            "requested": first["tick_rate"]["requested"],
            "achieved": _median([run["tick_rate"]["achieved"] for run in runs]),
            "ratio": _median([run["tick_rate"]["ratio"] for run in runs]),
            "behind": any(run["tick_rate"]["behind"] for run in runs),
        }
    if "producer" in first:
        rates = [run["producer"]["rate"] for run in runs]
        summary["producer_rate"] = {
            "requested": rates[0]["requested"],
            "achieved": _median([rate["achieved"] for rate in rates]),
            "ratio": _median([rate["ratio"] for rate in rates]),
            "behind": any(rate["behind"] for rate in rates),
        }
    if "gc" in first:
        summary["gc_percent"] = _median([run["gc"]["percent"] for run in runs])
        summary["gc_collections"] = [
            _median([run["gc"]["collections"][g] for run in runs]) for g in range(3)
        ]
    if "rss" in first:
        summary["rss"] = {key: _median([run["rss"][key] for run in runs]) for key in first["rss"]}
    summary["clock"] = first["clock"]
    catch_ups = [run.get("slow_catch_up_ms") for run in runs]
    if catch_ups[0] is not None:
        worst = [None if None in c else max(c, default=0.0) for c in catch_ups if c is not None]
        summary["slow_catch_up_ms"] = (
            None if None in worst else _median([w for w in worst if w is not None])
        )
    return summary


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


MARKET_MODES = {
    "external": "one `feed simulate` process piped into the server's stdin, ts stamped as "
    "each tick is written",
    "internal": "the server simulates the market itself, ts stamped as each batch is yielded",
    "remote": "the remote server's own source",
}


def market_mode(summaries: list[dict[str, Any]], scenario: dict[str, Any]) -> str:
    """The market mode of these figures (`external`, `internal`, `remote`)."""
    modes = {s.get("market") for s in summaries} - {None}
    if len(modes) == 1:
        return str(modes.pop())
    if modes:
        return "mixed: " + ", ".join(sorted(str(m) for m in modes))
    return str(scenario.get("market", "internal"))


def _behind(s: dict[str, Any]) -> bool:
    """The market fell behind: the server folded, or the producer wrote, too few ticks."""
    return bool(s.get("tick_rate", {}).get("behind") or s.get("producer_rate", {}).get("behind"))


def table(summaries: list[dict[str, Any]], scenario: dict[str, Any]) -> str:
    """The terminal table: one row per server, ratios against ours (the first row)."""
    head = (
        f"{'server':<11}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>9}"
        f"{'snaps/s':>10}{'frames/s':>10}{'MB/s':>7}{'tk/snap':>8}{'market':>8}{'drop':>6}"
        f"{'CPU%':>6}{'idle%':>6}{'RSS MB':>12}{'client%':>8}{'producer%':>10}"
        f"{'p99 x':>7}{'CPU x':>7}"
    )
    mode = market_mode(summaries, scenario)
    lines = [
        f"scenario {scenario['name']}, market {mode} ({MARKET_MODES.get(mode, mode)}): "
        f"{scenario['symbols']} symbols, "
        f"{scenario['rate']:g} ticks/s"
        + (f" (x{scenario['burst_factor']:g} bursts)" if scenario["burst_factor"] != 1 else "")
        + f", {scenario['clients']} clients x {scenario['per_client']} symbols"
        + (f", {scenario['slow']} never-reading clients" if scenario["slow"] else "")
        + f"; latency in ms over {scenario['duration']:g} s",
        head,
        "-" * len(head),
    ]
    ours = summaries[0] if summaries and summaries[0]["server"] == "feed" else None
    for s in summaries:
        lat = s["latency_us"]
        rate = s.get("tick_rate")
        market = f"{100 * rate['ratio']:.0f}%" + ("!" if _behind(s) else "") if rate else "-"
        rss = s.get("rss")
        rss_text = f"{rss['start'] / 2**20:.0f}->{rss['end'] / 2**20:.0f}" if rss else "-"
        cpu = s.get("server_cpu")
        idle = s.get("idle_cpu")
        p99_ratio = cpu_ratio = "-"
        if ours and ours["latency_us"]["p99"]:
            p99_ratio = f"{lat['p99'] / ours['latency_us']['p99']:.2f}"
        if ours and cpu is not None and ours.get("server_cpu"):
            cpu_ratio = f"{cpu / ours['server_cpu']:.2f}"
        ticks = s["ticks_per_snapshot"]
        client = f"{s['client_cpu']:.0f}" + ("*" if s["client_saturated"] else "")
        producer = s.get("producer_cpu")
        lines.append(
            f"{s['server']:<11}{_ms(lat['p50']):>8}{_ms(lat['p90']):>8}{_ms(lat['p99']):>8}"
            f"{_ms(lat['p99.9']):>8}{_ms(lat['max']):>9}"
            f"{s['snapshots_per_s']:>10,.0f}{s['frames_per_s']:>10,.0f}"
            f"{s['bytes_per_s'] / 1e6:>7.1f}{(f'{ticks:.2f}' if ticks else '-'):>8}"
            f"{market:>8}{s['dropped'] + s['slow_dropped']:>6}"
            f"{(f'{cpu:.0f}' if cpu is not None else '-'):>6}"
            f"{(f'{idle:.0f}' if idle is not None else '-'):>6}{rss_text:>12}{client:>8}"
            f"{(f'{producer:.0f}' if producer is not None else '-'):>10}"
            f"{p99_ratio:>7}{cpu_ratio:>7}"
        )
    lines.append(
        "market: ticks/s the server folded vs asked (! below 99%, or the producer wrote too "
        "few); tk/snap: ticks per delivered snapshot (1 = nothing conflated); CPU%: server, % of "
        "one core (internal: its simulator included; external: reading and parsing its stdin "
        "included, the producer not); idle%: the same with no client; client%: load generator "
        "CPU (* its core near saturation, the producer's share included: figures may measure "
        "the client); producer%: the external producer's CPU, on the load generator's core; "
        "x: ratio to feed."
    )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, default=str))


def plot(
    summaries: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]], path: Path, title: str
) -> bool:
    """Percentile curves and latency over time, one line per server; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plots; pip install -e '.[bench]')", file=sys.stderr)
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for s in summaries:
        run = runs[s["server"]][0]
        qs = [q for q, _ in run["curve"] if q < 100]
        values = [v / 1000 for q, v in run["curve"] if q < 100]
        left.plot([1 / (1 - q / 100) for q in qs], values, marker=".", label=s["server"])
        seconds = [row["second"] for row in run["by_second"]]
        right.plot(seconds, [row["p99"] / 1000 for row in run["by_second"]], label=s["server"])
    left.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    left.set_xticks(ticks, ["0", "50", "90", "99", "99.9", "99.99"])
    left.set_xlabel("percentile")
    left.set_ylabel("tick-to-client latency (ms)")
    left.set_yscale("log")
    left.set_title("latency by percentile (first run)")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    right.set_xlabel("second of the measured window")
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    right.set_title("p99 per second (first run)")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def markdown(document: dict[str, Any]) -> str:
    """A run's summary as a Markdown table (for benchmarks/README.md and docs/performance.md)."""
    scenario = document["scenario"]
    summaries = document["summary"]
    ours = next((s for s in summaries if s["server"] == "feed"), None)
    mode = market_mode(summaries, scenario)
    lines = [
        f"**{scenario['name']}**, market {mode} "
        f"({scenario['symbols']} symbols, {scenario['rate']:g} ticks/s"
        + (f" x{scenario['burst_factor']:g} in bursts" if scenario["burst_factor"] != 1 else "")
        + f", {scenario['clients']:,} clients x {scenario['per_client']} symbols"
        + (f" + {scenario['slow']} that never read" if scenario["slow"] else "")
        + f"; {scenario['duration']:g} s; median of {summaries[0]['runs']} run(s))",
        "",
        "| server | p50 ms | p99 ms | p99.9 ms | max ms | snapshots/s | frames/s | tk/snap "
        "| market | dropped | CPU % | idle CPU % | RSS MB start→end | client CPU % "
        "| producer CPU % | p99 vs feed | CPU vs feed |",
        "|" + " --- |" * 17,
    ]
    for s in summaries:
        lat = s["latency_us"]
        rate = s.get("tick_rate")
        rss = s.get("rss")
        cpu = s.get("server_cpu")
        p99_ratio = lat["p99"] / ours["latency_us"]["p99"] if ours else None
        cpu_ratio = cpu / ours["server_cpu"] if ours and cpu and ours.get("server_cpu") else None
        ticks = s["ticks_per_snapshot"]
        cells = [
            f"`{s['server']}`",
            f"{lat['p50'] / 1000:.2f}",
            f"{lat['p99'] / 1000:.2f}",
            f"{lat['p99.9'] / 1000:.2f}",
            f"{lat['max'] / 1000:.2f}",
            f"{s['snapshots_per_s']:,.0f}",
            f"{s['frames_per_s']:,.0f}",
            f"{ticks:.2f}" if ticks else "-",
            (f"{100 * rate['ratio']:.0f}%" + (" ⚠" if _behind(s) else "")) if rate else "-",
            str(s["dropped"] + s["slow_dropped"]),
            f"{cpu:.0f}" if cpu is not None else "-",
            f"{s['idle_cpu']:.0f}" if s.get("idle_cpu") is not None else "-",
            f"{rss['start'] / 2**20:.0f}→{rss['end'] / 2**20:.0f}" if rss else "-",
            f"{s['client_cpu']:.0f}" + (" ⚠" if s["client_saturated"] else ""),
            f"{s['producer_cpu']:.0f}" if s.get("producer_cpu") is not None else "-",
            f"{p99_ratio:.2f}" if p99_ratio is not None else "-",
            f"{cpu_ratio:.2f}" if cpu_ratio is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    extra = []
    for s in summaries:
        if "slow_catch_up_ms" in s:
            value = s["slow_catch_up_ms"]
            extra.append(
                f"`{s['server']}`: never-reading clients caught up "
                + ("never (or were dropped)" if value is None else f"in {value:.1f} ms")
            )
        if s.get("gc_percent") is not None:
            young, middle, full = s["gc_collections"]
            extra.append(
                f"`{s['server']}`: the cyclic GC held the process {s['gc_percent']:.2f}% of the "
                f"window ({young:g}/{middle:g}/{full:g} collections of generation 0/1/2)"
            )
        rss = s.get("rss")
        if rss and scenario["name"] == "connections":
            extra.append(f"`{s['server']}`: {rss['per_connection'] / 1024:.1f} KB per connection")
    if extra:
        lines += ["", "; ".join(extra) + "."]
    return "\n".join(lines)
