"""`python -m benchmarks.scaleout` runs each of its measurements end to end in a tiny
configuration and reports the figures a reader looks for; it never judges speed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.scaleout import need_nats
from tests.test_benchmarks import run_benchmark

TINY = ["--duration", "1", "--warmup", "0.3", "--idle", "0.3"]


@pytest.fixture(autouse=True)
def _nats() -> None:
    need_nats()


def scaleout(*args: str, out: Path) -> dict[str, Any]:
    return run_benchmark(*args, out=out, module="benchmarks.scaleout", timeout=120)


def test_latency_compares_serve_and_the_split_in_one_run(tmp_path: Path) -> None:
    document = scaleout("latency", "light", "--repeat", "1", "--clients", "5", *TINY, out=tmp_path)
    serve, split = document["summary"]
    assert (serve["server"], split["server"]) == ("feed", "split")
    for summary in (serve, split):
        assert 0 < summary["latency_us"]["p50"] <= summary["latency_us"]["p99"]
        assert summary["snapshots_per_s"] > 0
        assert summary["client_cpu"] > 0 and summary["producer_cpu"] > 0
        assert summary["tick_rate"]["ratio"] > 0.5
    assert set(split["role_cpu"]) == {"ingest", "nats-server", "gateway"}
    assert all(cpu > 0 for cpu in split["role_cpu"].values())
    assert split["published_per_s"] > 0
    assert set(document["split_minus_serve_ms"]) == {"p50", "p99"}
    run = document["runs"]["split"][0]
    assert run["exit_codes"]["gateway"] == 0 and run["exit_codes"]["ingest"] == 0
    stdout = document["_stdout"]
    assert "split - serve: p50" in stdout and "pinning: server side" in stdout


def test_overload_counts_every_snapshot_through_nats(tmp_path: Path) -> None:
    document = scaleout(
        "overload", "--symbols", "50", "--rate", "2000", "--clients", "1", *TINY, out=tmp_path
    )
    figures = document["figures"]
    assert figures["publish_per_s"] > 0 and figures["ingest_cpu"] > 0
    assert figures["gateway_cpu"] > 0 and figures["market_kept"] > 0.5
    assert figures["published"] > 0
    assert figures["checker_snapshots"] == figures["published"]
    assert figures["checker_not_newer"] == 0
    assert figures["every_snapshot_reached_the_gateway"]
    assert figures["newest_seqs_cover_every_tick"]
    assert "every snapshot reached the gateway | yes" in document["_stdout"]


def test_startup_times_a_gateway_over_a_full_stream(tmp_path: Path) -> None:
    document = scaleout("startup", "--symbols", "200", "--repeat", "1", out=tmp_path)
    run = document["results"]["200"]["runs"][0]
    assert run["read_symbols"] == 200 and run["snapshot_symbols"] == 200
    assert run["read_logged_s"] >= 0 and 0 < run["listening_s"] <= run["first_client_s"]
    assert run["exit_code"] == 0
    assert "gateway start-up" in document["_stdout"]
