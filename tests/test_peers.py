"""The benchmark peers (benchmarks/peers): their shared fold and control logic, and each peer
run as a real process and spoken to over real sockets."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from asyncio.subprocess import PIPE, Process
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from benchmarks.peers.common import Registry, answer
from benchmarks.peers.fold import Book, empty_snapshot
from benchmarks.peers.node_peer import NODE_DIR, missing
from feed.coalescer import SNAPSHOT_FIELDS, Coalescer
from feed.symbols import SymbolTable
from feed.ticks import to_ndjson
from simulators import SimulatorSettings, TickSimulator, symbol_names
from tests.conftest import recv, recv_until

ROOT = Path(__file__).resolve().parent.parent
MARKET = ["--symbols", "10", "--rate", "500"]
START_TIMEOUT = 20.0  # generous: a cold start imports numpy and aiohttp
STOP_TIMEOUT = 5.0
CLOCK_SLACK_NS = 20_000_000  # a pong's ts may lie this far outside our send..receive window


def assert_same_state(got: dict[str, object], want: dict[str, object]) -> None:
    """Snapshots equal field for field, in order; vwap to rounding (summed in another order)."""
    assert tuple(got) == SNAPSHOT_FIELDS
    if want["vwap"] is None:
        assert got["vwap"] is None
    else:
        assert got["vwap"] == pytest.approx(want["vwap"], rel=1e-12)
    assert got | {"vwap": None} == want | {"vwap": None}


def test_fold_agrees_with_the_coalescer() -> None:
    sim = TickSimulator(SimulatorSettings(symbols=200, rate=50_000.0, seed=7))
    coalescer = Coalescer(SymbolTable(sim.symbols))
    book = Book(sim.symbols)
    folded = 0
    while folded < 5_000:
        batch = sim.next_batch()
        batch["ts"] = np.arange(folded + 1, folded + 1 + len(batch))
        coalescer.apply(batch)
        for tick in batch.tolist():
            book.fold(*tick)
        folded += len(batch)
    assert book.ticks == folded
    expected = coalescer.snapshots(list(range(len(sim.symbols))))
    assert any(s["trades"] == 0 for s in expected), "want some symbols never traded"
    for got, want in zip(book.snapshots, expected, strict=True):
        assert_same_state(got, want)


def test_answer_takes_known_symbols_once_and_gives_back_what_was_held() -> None:
    book = Book(["AAPL", "MSFT"])
    registry: Registry[str] = Registry(2)
    request = b'{"op":"subscribe","symbols":["MSFT","NOPE","MSFT"],"id":"a"}'
    assert [orjson.loads(f) for f in answer(request, book, registry, "c")] == [
        {"type": "subscribed", "id": "a", "symbols": ["MSFT"]},
        {"type": "snapshot", "data": [empty_snapshot("MSFT")]},
    ]
    assert registry.subscribers == [set(), {"c"}]
    request = b'{"op":"unsubscribe","symbols":["AAPL","MSFT"],"id":2}'
    assert [orjson.loads(f) for f in answer(request, book, registry, "c")] == [
        {"type": "unsubscribed", "id": 2, "symbols": ["MSFT"]}
    ]
    assert registry.subscribers == [set(), set()]
    [pong] = answer(b'{"op":"ping"}', book, registry, "c")
    assert list(orjson.loads(pong)) == ["type", "ts"]
    [error] = answer(b"{", book, registry, "c")
    assert orjson.loads(error)["code"] == "bad_json"


def _node_or_skip() -> None:
    """Skip without node; without `ws`, install it under CI=true and skip otherwise."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if missing() is None:
        return
    if os.environ.get("CI") != "true":
        pytest.skip(f"ws is not installed: run `npm ci` in {NODE_DIR} (CI=true does it)")
    npm = shutil.which("npm")
    assert npm is not None, "CI=true and node is installed, but npm is not"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert missing() is None, missing()


@pytest.fixture(params=["naive_hub", "broadcast", "node_peer"])
def peer(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "broadcast" and importlib.util.find_spec("websockets") is None:
        pytest.skip("websockets is not installed (it is not in the `test` extra)")
    if name == "node_peer":
        _node_or_skip()
    return name


async def _start(name: str, *args: str, stdin: int | None = None) -> tuple[Process, int]:
    """Start the peer on a free port; return it and the port it announced."""
    command = [sys.executable, "-m", f"benchmarks.peers.{name}", "--port", "0", *MARKET, *args]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stderr=PIPE, stdin=stdin)
    assert process.stderr is not None
    try:
        line = await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT)
        match = re.fullmatch(rb"listening on ws://127\.0\.0\.1:(\d+)/ws\n", line)
        assert match, line
    except BaseException:
        await _kill(process)
        raise
    return process, int(match[1])


async def _kill(process: Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.communicate()


@pytest.mark.timeout(30)
async def test_peer_serves_the_protocol_subset_and_stops_on_sigterm(peer: str) -> None:
    process, port = await _start(peer)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws,
        ):
            await ws.send_json({"op": "subscribe", "symbols": ["AAPL", "MSFT"], "id": 1})
            assert await recv(ws) == {"type": "subscribed", "id": 1, "symbols": ["AAPL", "MSFT"]}
            snapshot = await recv(ws)
            assert snapshot["type"] == "snapshot"
            assert [s["symbol"] for s in snapshot["data"]] == ["AAPL", "MSFT"]
            assert all(tuple(s) == SNAPSHOT_FIELDS for s in snapshot["data"])
            seq = {s["symbol"]: s["seq"] for s in snapshot["data"]}
            for _ in range(5):
                update = await recv_until(ws, lambda f: f["type"] == "update")
                [state] = update["data"]
                assert tuple(state) == SNAPSHOT_FIELDS
                assert state["seq"] > seq[state["symbol"]]
                seq[state["symbol"]] = state["seq"]

            before = time.time_ns()
            await ws.send_json({"op": "ping", "id": 7})
            pong = await recv_until(ws, lambda f: f["type"] == "pong")
            after = time.time_ns()
            assert list(pong) == ["type", "id", "ts"] and pong["id"] == 7
            assert type(pong["ts"]) is int
            assert before - CLOCK_SLACK_NS <= pong["ts"] <= after + CLOCK_SLACK_NS

            await ws.send_json({"op": "unsubscribe", "symbols": ["MSFT", "NVDA"], "id": 8})
            gone = await recv_until(ws, lambda f: f["type"] == "unsubscribed")
            assert gone == {"type": "unsubscribed", "id": 8, "symbols": ["MSFT"]}
            for _ in range(3):
                update = await recv_until(ws, lambda f: f["type"] == "update")
                assert [s["symbol"] for s in update["data"]] == ["AAPL"]

            async with session.get(f"http://127.0.0.1:{port}/stats") as response:
                assert response.status == 200
                stats = await response.json()
            assert stats["ticks"] > 0
            assert (stats["connections"], stats["dropped"]) == (1, 0)

            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STOP_TIMEOUT):
                async for _ in ws:
                    pass
            assert ws.close_code == 1001
        _, err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
        assert process.returncode == 0, err.decode()
    finally:
        await _kill(process)


@pytest.mark.timeout(30)
async def test_peer_folds_ndjson_from_stdin_one_tick_at_a_time(peer: str) -> None:
    """`--stdin`: the ticks of a known NDJSON stream (a line that is not JSON among them) each
    give their symbol's subscribers one update, with the tick's own ts; the last state is what
    the Coalescer folds from the same ticks, and it is still served after the end of input."""
    names = list(symbol_names(10))
    sim = TickSimulator(SimulatorSettings(symbols=10, rate=20_000.0, seed=11))
    parts, count = [], 0
    while count < 200:  # under the naive hub's queue of 256, which drops a client past it
        part = sim.next_batch()
        part["ts"] = np.arange(count + 1, count + 1 + len(part))  # exact even as JS doubles
        parts.append(part)
        count += len(part)
    ticks = np.concatenate(parts)
    coalescer = Coalescer(SymbolTable(names))
    coalescer.apply(ticks)
    expected = coalescer.snapshots(list(range(len(names))))
    text = b"not a tick\n" + to_ndjson(ticks, names)

    process, port = await _start(peer, "--stdin", stdin=PIPE)
    assert process.stdin is not None
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send_json({"op": "subscribe", "symbols": names, "id": 1})
                assert (await recv(ws))["type"] == "subscribed"
                assert [s["seq"] for s in (await recv(ws))["data"]] == [0] * len(names)
                # In two writes, the first ending mid-line: lines are joined across reads.
                cut = len(text) // 2 + 7
                for piece in (text[:cut], text[cut:]):
                    process.stdin.write(piece)
                    await process.stdin.drain()
                process.stdin.close()
                updates = []
                for _ in range(len(ticks)):
                    frame = await recv_until(ws, lambda f: f["type"] == "update")
                    [state] = frame["data"]
                    updates.append((state["symbol"], state["seq"], state["ts"]))
                    last = state
            # One update per tick, in the stream's order, each with that tick's ts and seq.
            seqs: dict[str, int] = {}
            want = []
            for sym, ts in zip(ticks["sym"].tolist(), ticks["ts"].tolist(), strict=True):
                seqs[names[sym]] = seqs.get(names[sym], 0) + 1
                want.append((names[sym], seqs[names[sym]], ts))
            assert updates == want
            assert_same_state(last, expected[names.index(last["symbol"])])
            # After the end of input the last state is still served to a new subscriber.
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send_json({"op": "subscribe", "symbols": names, "id": 2})
                assert (await recv(ws))["type"] == "subscribed"
                snapshot = await recv(ws)
                for got, want_state in zip(snapshot["data"], expected, strict=True):
                    assert_same_state(got, want_state)
            async with session.get(f"http://127.0.0.1:{port}/stats") as response:
                assert (await response.json())["ticks"] == len(ticks)
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT)
        assert process.returncode == 0, err.decode()
        assert "stdin line 1 skipped" in err.decode()
        assert "end of ticks on stdin" in err.decode()
    finally:
        await _kill(process)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["naive_hub", "broadcast"])
async def test_python_peer_reads_a_regular_file_on_stdin(name: str, tmp_path: Path) -> None:
    """A file on stdin (which uvloop's pipe transport refuses) is read all the same, by a
    thread: at the end of input the peer serves the state the file folds to."""
    if name == "broadcast" and importlib.util.find_spec("websockets") is None:
        pytest.skip("websockets is not installed (it is not in the `test` extra)")
    names = list(symbol_names(10))
    sim = TickSimulator(SimulatorSettings(symbols=10, rate=20_000.0, seed=5))
    ticks = np.concatenate([sim.next_batch() for _ in range(50)])
    ticks["ts"] = np.arange(1, len(ticks) + 1)
    coalescer = Coalescer(SymbolTable(names))
    coalescer.apply(ticks)
    path = tmp_path / "ticks.ndjson"
    path.write_bytes(to_ndjson(ticks, names))
    with path.open("rb") as file:
        process, port = await _start(name, "--stdin", stdin=file.fileno())
    assert process.stderr is not None
    try:
        line = await asyncio.wait_for(process.stderr.readline(), START_TIMEOUT)
        assert line.startswith(b"end of ticks on stdin"), line
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws,
        ):
            await ws.send_json({"op": "subscribe", "symbols": names})
            assert (await recv(ws))["type"] == "subscribed"
            snapshot = await recv(ws)
        expected = coalescer.snapshots(list(range(len(names))))
        for got, want in zip(snapshot["data"], expected, strict=True):
            assert_same_state(got, want)
    finally:
        await _kill(process)
