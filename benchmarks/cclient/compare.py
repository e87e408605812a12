"""Compare load generators across benchmark reports: one Markdown row per scenario, server and
client, medians over the runs of every report given.

python -m benchmarks.cclient.compare benchmarks/results/*-light/report.json

A run's client is what its report says (`python`, `c`); a Python run that timed a sample is
`python (sample of N)`; a report from before the load generator named itself is
`python (first 200)`, as it then timed only its first 200 clients.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def client_of(run: dict[str, Any]) -> str:
    timed = run.get("timed")
    if timed is None:
        return f"python (first {run.get('measured_clients', 200)})"
    if timed["mode"] == "sample":
        return f"{run['client']} (sample of {timed['clients']})"
    return str(run["client"])


def per_frame(run: dict[str, Any]) -> float:
    """The load generator's CPU per frame received, µs."""
    if run.get("cpu_us_per_frame"):
        return float(run["cpu_us_per_frame"])
    return 1e4 * float(run["client_cpu"]) / float(run["frames_per_s"])


def rows(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for document in documents:
        scenario = document["scenario"]["name"]
        for server, runs in document["runs"].items():
            for run in runs:
                groups.setdefault((scenario, server, client_of(run)), []).append(run)

    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    found = []
    for (scenario, server, client), runs in groups.items():
        found.append(
            {
                "scenario": scenario,
                "server": server,
                "client": client,
                "runs": len(runs),
                **{
                    key: median([run["latency_us"][key] / 1000 for run in runs])
                    for key in ("p50", "p90", "p99", "p99.9")
                },
                "frames_per_s": median([run["frames_per_s"] for run in runs]),
                "snapshots_per_s": median([run["snapshots_per_s"] for run in runs]),
                "client_cpu": median([run["client_cpu"] for run in runs]),
                "us_per_frame": median([per_frame(run) for run in runs]),
                "server_cpu": median([run.get("server_cpu", 0.0) for run in runs]),
                "saturated": any(run.get("client_saturated") for run in runs),
            }
        )
    return found


def markdown(found: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | server | client | runs | p50 ms | p90 ms | p99 ms | p99.9 ms | frames/s "
        "| client CPU % | client µs/frame | server CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(found, key=lambda r: (r["scenario"], r["server"] != "feed", r["server"])):
        lines.append(
            f"| {row['scenario']} | `{row['server']}` | {row['client']} | {row['runs']} "
            f"| {row['p50']:.2f} | {row['p90']:.2f} | {row['p99']:.2f} | {row['p99.9']:.2f} "
            f"| {row['frames_per_s']:,.0f} | {row['client_cpu']:.0f}"
            + (" ⚠" if row["saturated"] else "")
            + f" | {row['us_per_frame']:.1f} | {row['server_cpu']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cclient.compare", description=__doc__
    )
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args(argv)
    documents = [json.loads(path.read_text()) for path in args.reports]
    print(markdown(rows(documents)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
