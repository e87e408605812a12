"""Recording and replay, as a user runs them: `feed serve --record FILE` then
`feed serve --replay FILE`, real processes, their files, their HTTP answers and their logs."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import math
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from feed.coalescer import SNAPSHOT_FIELDS
from tests.test_stdin import FEED, ROOT, Served, serve, simulate

SNAPSHOT_KEYS = tuple(f for f in SNAPSHOT_FIELDS if f not in ("symbol", "ts", "vwap", "epoch"))
"""Every snapshot field but symbol, ts (replayed ticks are stamped anew), vwap (a float sum,
folded in other batches: equal to rounding) and epoch (when the server's state began)."""


def folded(lines: list[bytes]) -> dict[str, dict[str, Any]]:
    """The snapshots these ticks must fold into, computed tick by tick (the oracle)."""
    state: dict[str, dict[str, Any]] = {}
    for line in lines:
        tick = orjson.loads(line)
        snap = state.setdefault(
            tick["symbol"],
            {key: None for key in SNAPSHOT_KEYS} | {"seq": 0, "volume": 0, "trades": 0, "n": 0.0},
        )
        snap["seq"] += 1
        if tick["type"] == "trade":
            price, size = tick["price"], tick["size"]
            snap["open"] = price if snap["open"] is None else snap["open"]
            snap["high"] = price if snap["high"] is None else max(snap["high"], price)
            snap["low"] = price if snap["low"] is None else min(snap["low"], price)
            snap["last"], snap["last_size"] = price, size
            snap["volume"] += size
            snap["trades"] += 1
            snap["n"] += price * size
        else:
            for key in ("bid", "ask", "bid_size", "ask_size"):
                snap[key] = tick[key]
    for snap in state.values():
        notional = snap.pop("n")
        snap["vwap"] = notional / snap["volume"] if snap["volume"] else None
    return state


def assert_same_market(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    assert sorted(got) == sorted(want)
    for symbol, snap in want.items():
        assert {key: got[symbol][key] for key in SNAPSHOT_KEYS} == {
            key: snap[key] for key in SNAPSHOT_KEYS
        }, symbol
        if snap["vwap"] is None:
            assert got[symbol]["vwap"] is None
        else:
            assert math.isclose(got[symbol]["vwap"], snap["vwap"], rel_tol=1e-9), symbol


def read_lines(path: Path) -> list[bytes]:
    """The complete lines of a tick file; a gzip stream cut short is read up to where its data
    ends (as the replay reads it), and a last line with no newline is left out."""
    if path.suffix == ".gz":
        data = b""
        with gzip.open(path, "rb") as file:
            try:
                while chunk := file.read1(1 << 16):
                    data += chunk
            except EOFError:
                pass
    else:
        data = path.read_bytes()
    return data.split(b"\n")[:-1]


async def until(probe: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll `probe` every 20 ms until it is true; fails after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await probe():
            await asyncio.sleep(0.02)


async def replayed(path: Path, *args: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Replay `path` unpaced to its end: the final snapshots and the replay source's stats."""
    async with serve("--replay", str(path), "--speed", "0", *args) as feed:
        await feed.wait_log("source replay ended")
        source = await feed.source()
        symbols = await feed.get("/symbols")
        snaps = await feed.snapshots(symbols)
        assert await feed.stop() == 0
    return snaps, source


@pytest.fixture(scope="module")
def ticks() -> list[bytes]:
    out = simulate("--symbols", "20", "--rate", "4000", "--duration", "1", "--fast", "--seed", "11")
    return out.splitlines()


async def record_from_stdin(feed: Served, lines: list[bytes]) -> dict[str, dict[str, Any]]:
    """Feed `lines` to a stdin server to their end; the snapshots it then serves."""
    await feed.write(b"\n".join(lines) + b"\n")
    await feed.end_input()
    await feed.wait_log("source stdin ended")
    return await feed.snapshots(await feed.get("/symbols"))


@pytest.mark.parametrize("name", ["ticks.ndjson", "ticks.ndjson.gz"])
async def test_a_recording_replays_into_the_same_market(
    name: str, ticks: list[bytes], tmp_path: Path
) -> None:
    path = tmp_path / name
    async with serve("--source", "stdin", "--record", str(path)) as feed:
        live = await record_from_stdin(feed, ticks)
        assert await feed.stop(signal.SIGTERM) == 0
    assert_same_market(live, folded(ticks))
    assert read_lines(path) == ticks  # SIGTERM lost nothing; the format is `feed simulate`'s
    assert f"recorded {len(ticks)} ticks to {path}" in "".join(feed.log)
    snaps, source = await replayed(path)
    assert_same_market(snaps, folded(ticks))
    assert source["ticks_in"] == len(ticks) and source["ticks_rejected"] == 0
    assert source["state"] == "ended" and source["reason"] == "replay ended"
    assert source["truncated_gzip"] == 0 and source["truncated_lines"] == 0


async def test_sigterm_while_the_simulator_runs_loses_no_tick(tmp_path: Path) -> None:
    path = tmp_path / "sim.ndjson.gz"
    async with serve("--symbols", "20", "--rate", "2000", "--record", str(path)) as feed:

        async def ticked() -> bool:
            health = await feed.get("/healthz")
            return bool(health["ticks"] >= 1000)

        await until(ticked)
        assert await feed.stop(signal.SIGTERM) == 0
    match = re.search(r"recorded (\d+) ticks", "".join(feed.log))
    assert match and int(match.group(1)) >= 1000
    lines = read_lines(path)
    assert len(lines) == int(match.group(1))
    with gzip.open(path) as file:  # closed properly: a complete gzip stream
        assert file.read().count(b"\n") == len(lines)


@pytest.mark.parametrize("name", ["paced.ndjson", "paced.ndjson.gz"])
async def test_sigkill_loses_at_most_the_last_flush_interval(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    flush_interval, margin = 0.2, 0.5
    sent: list[tuple[int, int]] = []  # (ts, id) of every tick written, id = its size
    args = (
        "--source",
        "stdin",
        "--record",
        str(path),
        "--set",
        f"record.flush_interval={flush_interval}",
    )
    async with serve(*args) as feed:
        start = time.monotonic()
        while time.monotonic() - start < 1.5:  # 10 ticks every 10 ms, each stamped when sent
            now = time.time_ns()
            lines = []
            for _ in range(10):
                sent.append((now, len(sent) + 1))
                lines.append(
                    b'{"type":"trade","symbol":"K","ts":%d,"price":1.5,"size":%d}' % sent[-1]
                )
            await feed.write(b"\n".join(lines) + b"\n")
            await asyncio.sleep(0.01)
        killed = time.time_ns()
        assert await feed.stop(signal.SIGKILL) == -signal.SIGKILL
    kept = [orjson.loads(line)["size"] for line in read_lines(path)]
    assert kept == list(range(1, len(kept) + 1))  # in order, no gap: a prefix of what was sent
    safe = [tick_id for ts, tick_id in sent if ts < killed - (flush_interval + margin) * 1e9]
    assert len(safe) > 100 and len(kept) >= len(safe)
    # The replay plays what the file holds, reporting a gzip stream cut short.
    snaps, source = await replayed(path)
    assert source["ticks_in"] == len(kept) and snaps["K"]["seq"] == len(kept)
    assert source["truncated_gzip"] == (1 if name.endswith(".gz") else 0)


async def test_replay_keeps_the_recorded_spacing_scaled_by_speed(tmp_path: Path) -> None:
    # One symbol per tick: each snapshot's ts is when its tick was replayed.
    offsets = [0.0, 0.5, 2.0, 2.5, 4.0]  # seconds of recorded time: gaps 0.5 1.5 0.5 1.5
    base = 1_700_000_000_000_000_000
    path = tmp_path / "spaced.ndjson"
    path.write_bytes(
        b"".join(
            b'{"type":"trade","symbol":"S%d","ts":%d,"price":1.5,"size":1}\n'
            % (i, base + int(offset * 1e9))
            for i, offset in enumerate(offsets)
        )
    )
    async with serve("--replay", str(path), "--speed", "10") as feed:
        await feed.wait_log("source replay ended")
        snaps = await feed.snapshots([f"S{i}" for i in range(len(offsets))])
    stamps = [snaps[f"S{i}"]["ts"] for i in range(len(offsets))]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(stamps)]
    assert all(gap > 0 for gap in gaps)  # in the recorded order
    assert min(gaps[1], gaps[3]) > max(gaps[0], gaps[2])  # long gaps stay longer than short ones
    span = (stamps[-1] - stamps[0]) / 1e9
    assert 0.4 - 0.005 <= span < 4.0  # 4 s recorded / 10; never early, and faster than recorded


@pytest.mark.parametrize("speed", ["0", "10"])
async def test_loop_starts_over_and_the_market_carries_on(speed: str, tmp_path: Path) -> None:
    sizes = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    path = tmp_path / "loop.ndjson"
    path.write_bytes(  # 10 ms of recorded time between ticks: 1 ms at speed 10
        b"".join(
            b'{"type":"trade","symbol":"L","ts":%d,"price":%d.25,"size":%d}\n'
            % (1_700_000_000_000_000_000 + i * 10_000_000, 10 + i, size)
            for i, size in enumerate(sizes)
        )
    )
    async with serve("--replay", str(path), "--speed", speed, "--loop") as feed:

        async def three_passes() -> bool:
            return bool((await feed.source())["passes"] >= 3)

        await until(three_passes)
        snap = (await feed.snapshots(["L"]))["L"]
        source = await feed.source()
    assert snap["seq"] > 3 * len(sizes) and source["state"] == "live"
    passes, partial = divmod(snap["seq"], len(sizes))
    assert snap["volume"] == passes * sum(sizes) + sum(sizes[:partial])  # nothing reset
    assert snap["open"] == 10.25 and snap["trades"] == snap["seq"]


def to_csv(lines: list[bytes], columns: list[str]) -> bytes:
    rows = [",".join(columns)]
    for line in lines:
        tick = orjson.loads(line)
        rows.append(",".join(str(tick.get(column, "")) for column in columns))
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        (
            "ticks.csv",
            ["type", "symbol", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size"],
        ),
        ("ticks.csv.gz", ["symbol", "type", "bid", "ask", "bid_size", "ask_size", "price", "size"]),
    ],
)
async def test_csv_replays_like_ndjson(
    name: str, columns: list[str], ticks: list[bytes], tmp_path: Path
) -> None:
    path = tmp_path / name
    data = to_csv(ticks, columns)
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    snaps, source = await replayed(path)
    assert_same_market(snaps, folded(ticks))
    assert source["ticks_in"] == len(ticks) and source["ticks_rejected"] == 0


@pytest.mark.parametrize("ending", ["truncated", "complete"])
async def test_a_last_line_without_newline(ending: str, ticks: list[bytes], tmp_path: Path) -> None:
    good = ticks[:100]
    lines = [*good[:49], b'{"type":"trade","symbol":"X","size":1}', *good[49:]]  # line 50: bad
    last = ticks[100][:40] if ending == "truncated" else ticks[100]
    path = tmp_path / "cut.ndjson"
    path.write_bytes(b"\n".join([*lines, last]))
    async with serve("--replay", str(path), "--speed", "0") as feed:
        await feed.wait_log("source replay ended")
        source = await feed.source()
    log = "".join(feed.log)
    assert "line 50 rejected (price): missing field 'price' in a trade" in log
    assert source["ticks_rejected"] == 1
    if ending == "truncated":
        assert source["ticks_in"] == 100 and source["truncated_lines"] == 1
        assert log.count("the last line (line 102) is truncated: skipped") == 1
    else:
        assert source["ticks_in"] == 101 and source["truncated_lines"] == 0
        assert "truncated" not in log


def bad_files(tmp_path: Path) -> dict[str, Path]:
    paths = {"not gzip": tmp_path / "ticks.ndjson.gz", "bad csv": tmp_path / "ticks.csv"}
    paths["not gzip"].write_text('{"type":"trade"}\n')
    paths["bad csv"].write_text("type,symbol,ts,price2\n")
    return paths


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "replay"], "config key 'replay.file' must name the file to play"),
        (
            ["--replay", "/nonexistent/t.ndjson"],
            "'replay.file' names '/nonexistent/t.ndjson', which does not exist",
        ),
        (
            ["--replay", "{not gzip}"],
            "'replay.file' names '{not gzip}', which ends in .gz but is not gzip",
        ),
        (
            ["--replay", "{bad csv}"],
            "header names an unknown column 'price2' (the columns: type,symbol",
        ),
        (
            ["--replay", "{bad csv}", "--speed", "-1"],
            "config key 'replay.speed' must be >= 0, got -1.0",
        ),
        (
            ["--record", "/nonexistent/r.ndjson"],
            "'record.file' names '/nonexistent/r.ndjson', which cannot be written",
        ),
    ],
)
def test_a_bad_file_stops_start_up_naming_the_key(
    args: list[str], message: str, tmp_path: Path
) -> None:
    paths = {f"{{{name}}}": str(path) for name, path in bad_files(tmp_path).items()}
    argv = [paths.get(arg, arg) for arg in args]
    for placeholder, path in paths.items():
        message = message.replace(placeholder, path)
    result = subprocess.run(
        [*FEED, "serve", "--port", "0", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
