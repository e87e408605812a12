"""The commands a user types: `feed serve` and `feed simulate`, run as real processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from feed.ticks import from_ndjson
from simulators import symbol_names

ROOT = Path(__file__).resolve().parent.parent
FEED = [sys.executable, "-m", "feed"]


class Served:
    def __init__(self, process: asyncio.subprocess.Process, url: str, log: list[str]) -> None:
        self.process = process
        self.url = url
        self.log = log


async def start_serve(*args: str, env: dict[str, str] | None = None) -> Served:
    process = await asyncio.create_subprocess_exec(
        *FEED,
        "serve",
        "--port",
        "0",
        *args,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert process.stderr is not None
    log: list[str] = []
    async with asyncio.timeout(20):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, f"feed serve exited early: {''.join(log)}"
            log.append(line)
            match = re.search(r"listening on (ws://\S+/ws)", line)
            if match:
                break
    # The source line follows the listening line.
    log.append((await process.stderr.readline()).decode())
    return Served(process, match.group(1), log)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    feed = await start_serve("--symbols", "20", "--rate", "400")
    yield feed
    if feed.process.returncode is None:
        feed.process.kill()
        await feed.process.wait()


async def test_serve_streams_the_simulator(served: Served) -> None:
    assert "20 symbols (AAPL, MSFT" in served.log[-1] and "400 ticks/s" in served.log[-1]
    async with aiohttp.ClientSession() as session, session.ws_connect(served.url) as ws:
        await ws.send_json({"op": "subscribe", "symbols": ["AAPL"], "id": 1})
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
        update = await ws.receive_json(timeout=10)
        assert update["type"] == "update" and update["data"][0]["symbol"] == "AAPL"


@pytest.mark.parametrize(
    ("setting", "allocator"), [((), "pymalloc"), (("memory.allocator=malloc",), "malloc")]
)
async def test_serve_runs_on_the_allocator_the_config_names(
    setting: tuple[str, ...], allocator: str
) -> None:
    """Started as a user would (no PYTHONMALLOC), `feed serve` runs on pymalloc by default,
    and starts again under the C library's malloc when the config says so: the same process
    (its id is the one started), /stats and the log name the allocator."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    sets = [arg for assignment in setting for arg in ("--set", assignment)]
    feed = await start_serve("--symbols", "5", *sets, env=env)
    try:
        stats_url = feed.url.replace("ws://", "http://").replace("/ws", "/stats")
        async with aiohttp.ClientSession() as session, session.get(stats_url) as response:
            stats = await response.json()
        assert stats["memory"] == {"allocator": allocator}
        assert stats["pid"] == feed.process.pid
        line = (await asyncio.wait_for(feed.process.stderr.readline(), 10)).decode()  # type: ignore[union-attr]
        assert f"Python's allocator is {allocator}" in line
    finally:
        feed.process.kill()
        await feed.process.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signals_close_clients_with_1001_and_exit(served: Served, sig: int) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(served.url) as ws:
        await ws.send_json({"op": "subscribe", "symbols": ["AAPL", "MSFT"]})
        await ws.receive_json(timeout=5)
        served.process.send_signal(sig)
        while True:
            message = await ws.receive(timeout=10)
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1001
    async with asyncio.timeout(15):
        code = await served.process.wait()
    assert code == 0
    assert served.process.stderr is not None
    rest = (await served.process.stderr.read()).decode()
    assert "stopped" in rest
    assert "Traceback" not in rest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "config key 'server.port' must be a port number"),
        (["--rate", "-3"], "config key 'simulator.rate' must be > 0, got -3.0"),
        (["--set", "limits.max_connections=0"], "'limits.max_connections' must be >= 1, got 0"),
        (["--set", "limits.nope=1"], "unknown config key 'limits.nope'"),
        (["--config", "/nonexistent.toml"], "config file '/nonexistent.toml' not found"),
    ],
)
def test_bad_config_stops_start_up_naming_the_key(args: list[str], message: str) -> None:
    result = subprocess.run(
        [*FEED, "serve", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("gateway", ["--set", "bus.url=http://x:4222"], "config key 'bus.url' must be nats://"),
        ("gateway", ["--set", "bus.subscribe=some"], "'bus.subscribe' must be all or held"),
        ("gateway", ["--workers", "0"], "config key 'server.workers' must be >= 1, got 0"),
        ("ingest", ["--set", "bus.prefix=a..b"], "config key 'bus.prefix' must be NATS subject"),
        ("ingest", ["--set", "bus.stale_after=0"], "'bus.stale_after' must be > 0, got 0"),
        ("gateway", ["--workers", "2", "--host", "0.0.0.0"], "refusing to serve on '0.0.0.0'"),
    ],
)
def test_bad_bus_config_stops_the_roles_naming_the_key(
    command: str, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [*FEED, command, *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def simulate(*args: str) -> bytes:
    result = subprocess.run(
        [*FEED, "simulate", *args], cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    return result.stdout


def test_simulate_writes_ticks_that_read_back() -> None:
    out = simulate("--symbols", "5", "--rate", "2000", "--duration", "0.5", "--seed", "7")
    lines = out.splitlines()
    assert 600 < len(lines) < 1400  # 1,000 expected, Poisson
    first = orjson.loads(lines[0])
    assert first["type"] in ("trade", "quote") and first["symbol"] in (
        "AAPL",
        "MSFT",
        "NVDA",
        "AMZN",
        "GOOGL",
    )
    batch = from_ndjson(
        lines, {s: i for i, s in enumerate(["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL"])}
    )
    assert len(batch) == len(lines)


def test_simulate_is_deterministic_under_a_seed() -> None:
    def without_ts(out: bytes) -> list[dict[str, object]]:
        return [
            {k: v for k, v in orjson.loads(line).items() if k != "ts"} for line in out.splitlines()
        ]

    args = ("--symbols", "50", "--rate", "20000", "--duration", "1", "--fast")
    first = without_ts(simulate(*args, "--seed", "3"))
    assert first == without_ts(simulate(*args, "--seed", "3"))
    assert first != without_ts(simulate(*args, "--seed", "4"))


def test_simulate_stops_quietly_when_the_reader_goes_away() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pipeline = subprocess.run(
        f"{sys.executable} -m feed simulate --rate 5000 --fast | head -n 3",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert len(pipeline.stdout.splitlines()) == 3
    assert "Traceback" not in pipeline.stderr


def _without_ts(lines: list[bytes]) -> list[dict[str, object]]:
    return [{k: v for k, v in orjson.loads(line).items() if k != "ts"} for line in lines]


def test_simulate_primes_with_the_start_of_the_same_market_grouped_by_symbol() -> None:
    """--prime: the market from its start until every symbol has ticked, each symbol's ticks
    in order and the symbols first seen in symbol order; then the stream carries on from there
    (the same ticks as without --prime, ts aside)."""
    args = ("--symbols", "20", "--rate", "2000", "--seed", "3", "--fast")
    done = subprocess.run(
        [*FEED, "simulate", *args, "--duration", "0.5", "--prime"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    report = orjson.loads(done.stderr.splitlines()[0])
    assert report["symbols"] == report["of"] == 20
    primed = report["primed"]
    lines = done.stdout.splitlines()
    plain = simulate(*args, "--duration", "10").splitlines()
    assert len(plain) > len(lines) > primed > 0
    order = list(symbol_names(20)).index
    opening = _without_ts(lines[:primed])
    symbols = [str(tick["symbol"]) for tick in opening]
    assert symbols == sorted(symbols, key=order) and len(set(symbols)) == 20
    by_symbol = sorted(_without_ts(plain[:primed]), key=lambda tick: order(str(tick["symbol"])))
    assert opening == by_symbol  # sorted() is stable: each symbol's ticks keep their order
    assert _without_ts(lines[primed:]) == _without_ts(plain[primed : len(lines)])


async def test_simulate_stamps_ticks_as_written_and_reports_its_count_on_sigusr1() -> None:
    process = await asyncio.create_subprocess_exec(
        *FEED,
        "simulate",
        "--rate",
        "2000",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(20):
            read = 0
            stamps = set()
            while read < 500:
                line = await process.stdout.readline()
                now = time.time_ns()
                ts = orjson.loads(line)["ts"]
                assert ts <= now  # stamped before it was written, by the same clock
                stamps.add(ts)
                read += 1
            assert len(stamps) > 1  # a stamp per batch, not one for the run
            process.send_signal(signal.SIGUSR1)
            report = orjson.loads(await process.stderr.readline())
        assert set(report) == {"ticks", "seconds", "requested_rate", "behind"}
        assert report["ticks"] >= read and report["seconds"] > 0
        assert report["requested_rate"] == pytest.approx(2000)
    finally:
        process.kill()
        await process.communicate()
