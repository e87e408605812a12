"""Every benchmark scenario runs end to end in a tiny configuration and reports sane figures.

These tests check that the benchmarks keep working and that their reports have the right shape
and plausible values; they never judge speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.servers import SERVERS

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--duration", "1", "--warmup", "0.3", "--no-plot"]
SIZES = {
    "light": ["--clients", "10"],
    "fanout": ["--clients", "20"],
    "overload": ["--clients", "20"],
    "slow": ["--clients", "5", "--slow", "2"],
    "burst": ["--clients", "10"],
    "connections": ["--clients", "300", "--symbols", "200"],
}


def peers() -> list[str]:
    """The peers that can run here; under CI every one must (Node's ws is installed by .ci/run)."""
    available = []
    for name, spec in SERVERS.items():
        if name == "feed":
            continue
        reason = spec.unavailable()
        if reason and os.environ.get("CI") == "true":
            pytest.fail(f"peer {name} cannot run under CI: {reason}")
        if not reason:
            available.append(name)
    return available


def run_benchmark(*args: str, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    document: dict[str, Any] = json.loads((out / "report.json").read_text())
    document["_stdout"] = result.stdout
    return document


def check_run(run: dict[str, Any], clients: int) -> None:
    latency = run["latency_us"]
    assert latency["count"] > 0
    assert 0 <= latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert run["snapshots_per_s"] > 0 and run["frames_per_s"] > 0 and run["bytes_per_s"] > 0
    assert run["ticks_per_snapshot"] is None or run["ticks_per_snapshot"] >= 1.0
    assert 0 < run["client_cpu"] < 200
    assert run["by_second"] and run["curve"]
    assert run["server_exit_code"] in (0, -15), "the server did not stop cleanly"
    left = [pid for pid in [*run["server_pids"], run["loadgen_pid"]] if alive(pid)]
    assert not left, f"processes left behind: {left}"
    rate = run["tick_rate"]
    assert rate["achieved"] > 0 and rate["requested"] > 0
    assert run["server_cpu"] > 0
    assert run["rss"]["start"] > 0 and run["rss"]["end"] > 0
    clock = run["clock"]
    assert clock["rtt_min_ns"] > 0 and clock["samples"] > 0


@pytest.mark.parametrize("scenario", list(SIZES))
def test_scenario_runs_against_every_server(scenario: str, tmp_path: Path) -> None:
    servers = ["feed", *peers()]
    document = run_benchmark(
        "run",
        scenario,
        "--vs",
        ",".join(servers[1:]) or "none",
        *TINY,
        *SIZES[scenario],
        out=tmp_path,
    )
    assert not document["failures"]
    assert [s["server"] for s in document["summary"]] == servers
    assert document["scenario"]["name"] == scenario
    assert document["machine"]["cores"] >= 1 and document["machine"]["versions"]["python"]
    clients = document["scenario"]["clients"]
    for server in servers:
        (run,) = document["runs"][server]
        check_run(run, clients)
    ours = document["runs"]["feed"][0]
    assert ours["dropped"] == 0 and ours["slow_dropped"] == 0
    table = document["_stdout"]
    for server in servers:
        assert f"\n{server} " in table
    if scenario == "connections":
        assert ours["rss"]["per_connection"] > 0
    if scenario == "slow":
        catch_up = ours["slow_catch_up_ms"]
        assert len(catch_up) == 2 and all(ms is not None and ms >= 0 for ms in catch_up)
        assert "reached the newest seq" in table


def test_repeats_report_medians_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with_plot = [arg for arg in TINY if arg != "--no-plot"]
    document = run_benchmark(
        "run",
        "light",
        "--vs",
        "none",
        "--repeat",
        "2",
        *with_plot,
        "--clients",
        "5",
        out=tmp_path,
    )
    (summary,) = document["summary"]
    assert summary["runs"] == 2 and len(document["runs"]["feed"]) == 2
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_ingest(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "ingest",
            "--ticks",
            "50000",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    document = json.loads((tmp_path / "ingest.json").read_text())
    rates = document["result"]["ticks_per_s"]
    assert rates["one_at_a_time"] > 0 and all(v > 0 for v in rates.values())
    assert "batch of 1000" in result.stdout


def _benchmark_module(module: str, *args: str) -> str:
    """What `python -m benchmarks.<module> args...` prints; it must exit 0."""
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_publish_cost_per_frame() -> None:
    """The fan-out's own cost without the kernel: a figure per batch size, and the frame
    count a callgrind run divides by is the number of subscribers the batches reach."""
    output = _benchmark_module("publish", "--repeat", "1", "--batches", "200")
    assert "batch of 1" in output and "batch of 10" in output
    assert "µs per frame" in output
    counted = _benchmark_module("publish", "--count", "1", "--batches", "50")
    # 1,000 connections x 20 of 500 symbols: 40 subscribers per symbol on average.
    assert 50 * 10 < int(counted) < 50 * 100


def test_memory_per_connection_by_package(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    _benchmark_module("memory", "--clients", "200", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["clients"] == 200
    assert result["bytes_per_connection"] > 1_000  # a connection costs something, somewhere
    assert "aiohttp" in result["by_package"] and "feed" in result["by_package"]
    assert result["top_lines"]


def test_lan_mode_over_a_veth_pair(tmp_path: Path) -> None:
    """The server in its own network namespace; the estimated clock offset must contain zero
    (both ends share one clock), and latencies are corrected by it."""
    if os.geteuid() != 0:
        pytest.skip("LAN mode needs root to create a network namespace")
    probe = subprocess.run(
        ["ip", "netns", "add", f"feedprobe{os.getpid()}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"network namespaces are not available here: {probe.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", f"feedprobe{os.getpid()}"], check=False)
    document = run_benchmark("lan", "light", *TINY, "--clients", "5", out=tmp_path)
    lan = document["lan"]
    assert lan["server_address"] != "127.0.0.1"
    (run,) = document["runs"]["remote"]
    assert run["clock_offset_applied"] is True
    clock = run["clock"]
    assert abs(clock["offset_ns"]) <= clock["uncertainty_ns"] + 50_000
    assert run["latency_us"]["count"] > 0
    assert "clock offset" in document["_stdout"]
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lan["namespace"] not in leftover


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
