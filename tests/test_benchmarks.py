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
TINY = ["--duration", "1", "--warmup", "0.3", "--idle", "0.5", "--no-plot"]
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


def run_benchmark(
    *args: str, out: Path, module: str = "benchmarks", timeout: float = 300
) -> dict[str, Any]:
    """`python -m <module> ARGS --out OUT`, which must succeed; its report.json (and stdout)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    document: dict[str, Any] = json.loads((out / "report.json").read_text())
    document["_stdout"] = result.stdout
    return document


def check_run(run: dict[str, Any], clients: int, market: str = "external") -> None:
    latency = run["latency_us"]
    assert latency["count"] > 0
    assert 0 <= latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert run["snapshots_per_s"] > 0 and run["frames_per_s"] > 0 and run["bytes_per_s"] > 0
    assert run["ticks_per_snapshot"] is None or run["ticks_per_snapshot"] >= 1.0
    assert 0 < run["client_cpu"] < 200
    assert run["by_second"] and run["curve"]
    assert run["server_exit_code"] in (0, -15), "the server did not stop cleanly"
    assert run["market"] == market
    started = [*run["server_pids"], run["loadgen_pid"]]
    if market == "external":
        producer = run["producer"]
        started.append(producer["pid"])
        assert producer["exit_code"] in (0, -15), "the producer did not stop cleanly"
        assert producer["primed_ticks"] > 0
        assert producer["rate"]["achieved"] > 0 and producer["rate"]["requested"] > 0
        assert run["producer_cpu"] > 0
        assert producer["pid"] not in run["server_pids"], "the producer is not the server's"
    else:
        assert "producer" not in run and "producer_cpu" not in run
    left = [pid for pid in started if alive(pid)]
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
    assert document["market"] == "external"
    assert f"scenario {scenario}, market external" in table and "producer%" in table
    for server in servers:
        assert f"\n{server} " in table
    assert ours["gc"]["percent"] >= 0 and len(ours["gc"]["collections"]) == 3
    if scenario == "connections":
        assert ours["rss"]["per_connection"] > 0
    if scenario == "slow":
        catch_up = ours["slow_catch_up_ms"]
        assert len(catch_up) == 2 and all(ms is not None and ms >= 0 for ms in catch_up)
        assert "reached the newest seq" in table


def test_internal_market_runs_against_every_server_and_says_so(tmp_path: Path) -> None:
    """Each server simulates the market itself (today's mode before the external one), and
    the report, printed or summarized, names the mode."""
    servers = ["feed", *peers()]
    document = run_benchmark(
        "run",
        "light",
        "--market",
        "internal",
        "--vs",
        ",".join(servers[1:]) or "none",
        *TINY,
        "--clients",
        "5",
        out=tmp_path,
    )
    assert not document["failures"]
    assert document["market"] == document["scenario"]["market"] == "internal"
    assert [s["server"] for s in document["summary"]] == servers
    for server in servers:
        (run,) = document["runs"][server]
        check_run(run, 5, market="internal")
    assert "scenario light, market internal" in document["_stdout"]
    summary = subprocess.run(
        [sys.executable, "-m", "benchmarks", "summarize", str(tmp_path / "report.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "**light**, market internal" in summary.stdout
    assert "| producer CPU % |" in summary.stdout


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


def test_the_bare_floor_under_a_drop() -> None:
    """The bare uvloop server of benchmarks.drop takes every reset and reports the longest
    lag of the drop with how many connections went in it."""
    output = _benchmark_module("drop", "--clients", "300", "--runs", "1")
    assert "300 connections reset at once: longest lag" in output
    assert "connections went in it" in output and "median longest lag" in output


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


# -- the load generators: which clients are timed, the compiled client, a known delay --------


def test_timed_clients_are_every_client_or_a_uniform_sample() -> None:
    """The clients that time their snapshots are every client, or a seeded sample in which
    every position of the subscription order is equally likely: never simply the first N."""
    from benchmarks.loadgen import timed_clients

    assert timed_clients(10, None, 1) == list(range(10))
    assert timed_clients(10, 50, 1) == list(range(10))
    assert timed_clients(10, 0, 1) == []
    chosen = timed_clients(1000, 200, 42)
    assert len(set(chosen)) == 200 and chosen == sorted(chosen)
    assert chosen != list(range(200)) and max(chosen) >= 900
    assert chosen == timed_clients(1000, 200, 42) and chosen != timed_clients(1000, 200, 43)
    # Over many seeds each tenth of the subscription order holds a tenth of the sample: 6,000
    # of 60,000 draws, with a standard deviation of about 66.
    tenths = [0] * 10
    for seed in range(300):
        for index in timed_clients(1000, 200, seed):
            tenths[index // 100] += 1
    assert all(abs(count - 6000) < 400 for count in tenths), tenths
    with pytest.raises(ValueError, match="0 or more"):
        timed_clients(10, -1, 1)


def test_every_client_is_timed_by_default(tmp_path: Path) -> None:
    document = run_benchmark("run", "light", "--vs", "none", *TINY, "--clients", "10", out=tmp_path)
    (run,) = document["runs"]["feed"]
    check_run(run, 10)
    timed = run["timed"]
    assert run["client"] == "python" and document["client"] == "python"
    assert timed["mode"] == "all" and timed["clients"] == timed["of"] == 10
    assert timed["with_samples"] == 10, "every client's snapshots are in the figures"
    assert run["cpu_us_per_frame"] > 0
    assert "python client; timed every client (10)" in document["_stdout"]


def test_a_sample_of_clients_is_spread_over_the_subscription_order(tmp_path: Path) -> None:
    from benchmarks.loadgen import timed_clients

    document = run_benchmark(
        "run", "light", "--vs", "none", *TINY, "--clients", "12", "--timed", "4", out=tmp_path
    )
    (run,) = document["runs"]["feed"]
    timed = run["timed"]
    assert timed["mode"] == "sample" and timed["clients"] == 4 and timed["of"] == 12
    assert timed["indices"] == timed_clients(12, 4, document["scenario"]["seed"])
    assert timed["indices"] != [0, 1, 2, 3]
    assert timed["with_samples"] == 4
    assert "timed a seeded uniform sample of 4 of 12 clients (seed 42)" in document["_stdout"]


def test_the_c_client_builds_and_measures_our_feed(tmp_path: Path) -> None:
    """`--client c`: gcc builds benchmarks/cclient/loadgen.c on first use; it subscribes the
    same clients to the same symbols and reports the same figures as the Python client."""
    from benchmarks.cclient import build

    binary = build(tmp_path / "build")
    assert os.access(binary, os.X_OK) and build(tmp_path / "build") == binary
    document = run_benchmark(
        "run", "light", "--vs", "none", *TINY, "--clients", "10", "--client", "c", out=tmp_path
    )
    assert not document["failures"] and document["client"] == "c"
    (run,) = document["runs"]["feed"]
    check_run(run, 10)
    assert run["client"] == "c"
    assert run["timed"]["with_samples"] == 10
    assert run["unparsed_snapshots"] == 0 and run["fragmented_frames"] == 0
    assert run["ticks_per_snapshot"] >= 1.0
    assert "c client; timed every client (10)" in document["_stdout"]


def test_both_clients_report_a_known_delay(tmp_path: Path) -> None:
    """A server stamps each frame's ts 20 ms before writing it: each client must report at
    least 20 ms (and not, say, a thousand times that: a unit error)."""
    from benchmarks.cclient.delay import check

    delay_us = 20_000
    results = check(delay_us, clients=5, per_client=3, duration=1.0, warmup=0.3, out=tmp_path)
    assert set(results) == {"python", "c"}
    for kind, run in results.items():
        latency = run["latency_us"]
        assert latency["count"] > 0, kind
        assert latency["min"] >= delay_us and latency["p50"] >= delay_us, (kind, latency)
        assert latency["p50"] < delay_us + 1_000_000, (kind, latency)
        assert run["timed"]["with_samples"] == 5 and run["client"] == kind


def test_auto_times_a_sample_only_when_timing_every_client_loads_the_generator() -> None:
    from types import SimpleNamespace
    from typing import cast

    from benchmarks.loadgen import AUTO_SAMPLE_CPU, FeedClient, choose_timed, sample_size

    def clients(count: int) -> list[FeedClient]:
        return cast(list[FeedClient], [SimpleNamespace(timed=True) for _ in range(count)])

    light = choose_timed(clients(1000), "auto", AUTO_SAMPLE_CPU - 1, seed=42)
    assert light["mode"] == "all" and light["clients"] == 1000 and light["seed"] is None
    many = clients(1000)
    busy = choose_timed(many, "auto", AUTO_SAMPLE_CPU + 1, seed=42)
    assert busy["mode"] == "sample" and busy["clients"] == sample_size(1000) == 200
    assert busy["indices"] == [i for i, client in enumerate(many) if client.timed]
    assert "took" in busy["how"] and busy["seed"] == 42
    assert sample_size(10_000) == 2000 and sample_size(50) == 50
    asked = choose_timed(clients(1000), "all", 99.0, seed=42)
    assert asked["mode"] == "all", "--timed all is never sampled"


def test_the_c_client_refuses_what_it_cannot_do() -> None:
    command = [sys.executable, "-m", "benchmarks.cclient", "--url", "ws://127.0.0.1:9/ws"]
    done = subprocess.run(
        [*command, "--clients", "1", "--per-client", "1", "--slow", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "no never-reading clients" in done.stderr


def test_arrival_splits_each_chunk_of_both_servers_into_its_phases(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.arrival", "light", "--repeat", "1",
        "--duration", "1", "--warmup", "0.3", "--clients", "10", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / "arrival.json").read_text())
    for server in ("feed", "websockets"):
        (run,) = document["runs"][server]
        assert run["chunks"] > 0
        phases = run["phases_us"]
        for phase in ("wake", "prep", "fanout", "total"):
            assert 0 <= phases[phase]["p50"] <= phases[phase]["p99"]
        assert phases["total"]["p99"] >= phases["fanout"]["p50"]
        assert run["client_p50_ms"] > 0
    ours = document["runs"]["feed"][0]["phases_us"]
    assert {"read", "fold", "handoff"} <= set(ours)
    assert "| `feed` |" in result.stdout and "| `websockets` |" in result.stdout
    assert "`feed` prep, p50 (p99): read" in result.stdout
