"""The `stdin` source: `feed serve --source stdin` as a real process, fed NDJSON through a pipe
and watched by a `websockets` client and over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from feed.sources.stdin import LineSplitter

ROOT = Path(__file__).resolve().parent.parent
FEED = [sys.executable, "-m", "feed"]


@dataclass
class Served:
    """A running `feed serve` process: its URLs, its log as read so far, its standard input."""

    process: asyncio.subprocess.Process
    http: str
    ws: str
    log: list[str]
    ended: bool = False
    """The log is complete (the process closed its standard error)."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.process.stdin is not None
        return self.process.stdin

    async def write(self, data: bytes) -> None:
        self.stdin.write(data)
        await self.stdin.drain()

    async def end_input(self) -> None:
        self.stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self.stdin.wait_closed()

    async def wait_log(self, pattern: str, timeout: float = 15.0) -> str:
        """The first log line matching `pattern`, waiting for it up to `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                for line in self.log:
                    if re.search(pattern, line):
                        return line
                if self.ended:
                    raise AssertionError(f"no {pattern!r} in the log: {''.join(self.log)}")
                await self._changed.wait()

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.http + path) as answer:
            return await answer.json()

    async def snapshots(self, symbols: list[str]) -> dict[str, dict[str, Any]]:
        body = await self.get("/snapshot?symbols=" + ",".join(symbols))
        assert isinstance(body, list), body
        return {snap["symbol"]: snap for snap in body}

    async def source(self) -> dict[str, Any]:
        """This process's one source, as /stats shows it."""
        stats = await self.get("/stats")
        (only,) = stats["sources"]
        result: dict[str, Any] = only
        return result

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.process.send_signal(sig)
        async with asyncio.timeout(timeout):
            return await self.process.wait()


async def _pump_log(served: Served, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        served.log.append(line.decode(errors="replace"))
        served._changed.set()
    served.ended = True
    served._changed.set()


@contextlib.asynccontextmanager
async def serve(*args: str, stdin: int | IO[Any] | None = subprocess.PIPE) -> AsyncIterator[Served]:
    """`feed serve --port 0 ARGS` until "listening on"; killed on the way out if still running."""
    process = await asyncio.create_subprocess_exec(
        *FEED,
        "serve",
        "--port",
        "0",
        *args,
        cwd=ROOT,
        stdin=stdin,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(20):
            while True:
                line = (await process.stderr.readline()).decode()
                assert line, f"feed serve exited early: {''.join(log)}"
                log.append(line)
                match = re.search(r"listening on ws://(\S+)/ws", line)
                if match:
                    break
        address = match.group(1)
        served = Served(process, f"http://{address}", f"ws://{address}/ws", log)
        pump = asyncio.create_task(_pump_log(served, process.stderr))
        try:
            yield served
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await pump
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def simulate(*args: str) -> bytes:
    """What `feed simulate ARGS` writes (NDJSON, every tick stamped with `ts`)."""
    result = subprocess.run(
        [*FEED, "simulate", *args], cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    return result.stdout


def per_symbol(lines: list[bytes]) -> Counter[str]:
    """How many ticks each symbol has in these NDJSON lines."""
    return Counter(orjson.loads(line)["symbol"] for line in lines)


async def receive(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame but heartbeats."""
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = orjson.loads(await ws.recv())
            if frame["type"] != "heartbeat":
                return frame


async def receive_until(
    ws: ClientConnection,
    done: Callable[[dict[str, Any]], bool],
    seen: Callable[[dict[str, Any]], None],
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Frames, each shown to `seen`, until one is `done`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await receive(ws, max(0.01, deadline - time.monotonic()))
        seen(frame)
        if done(frame):
            return frame


@pytest.fixture(scope="module")
def ticks() -> list[bytes]:
    lines = simulate("--symbols", "5", "--rate", "2000", "--duration", "1", "--fast")
    return lines.splitlines()


async def test_a_piped_feed_reaches_subscribers_and_ends_stale(ticks: list[bytes]) -> None:
    counts = per_symbol(ticks)
    symbols = sorted(counts)
    assert len(symbols) == 5
    # The first tick of each symbol goes first, so the client can subscribe to all five.
    firsts = {orjson.loads(line)["symbol"]: i for i, line in reversed(list(enumerate(ticks)))}
    first_lines = set(firsts.values())
    head = [ticks[i] for i in sorted(first_lines)]
    rest = [line for i, line in enumerate(ticks) if i not in first_lines]
    # A bad line in the middle; last, a tick without ts (stamped when read) and no newline.
    extra = b'{"type":"trade","symbol":"%s","price":10.5,"size":7}' % symbols[0].encode()
    counts[symbols[0]] += 1
    body = b"\n".join([*rest[:500], b"this is not json", *rest[500:], extra])
    bad_line = len(head) + 501

    async with serve("--source", "stdin") as feed:
        await feed.write(b"\n".join(head) + b"\n")
        await feed.wait_log("connecting -> live")
        async with connect(feed.ws) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "symbols": symbols, "id": 1}).decode())
            answer = await receive(ws)
            assert answer["type"] == "subscribed", (answer, feed.log)
            assert (await receive(ws))["type"] == "snapshot"
            started = time.time_ns()
            await feed.write(body)
            await feed.end_input()

            last_seq: dict[str, int] = {}
            stale: set[str] = set()

            def seen(frame: dict[str, Any]) -> None:
                if frame["type"] == "update":
                    for snap in frame["data"]:
                        assert snap["seq"] > last_seq.get(snap["symbol"], 0)
                        last_seq[snap["symbol"]] = snap["seq"]
                elif frame["type"] == "status":
                    assert frame["state"] == "stale"
                    assert "end of input" in frame["reason"]
                    stale.update(frame["symbols"])

            await receive_until(ws, lambda frame: stale == set(symbols), seen)

        assert last_seq == dict(counts)  # every good tick folded, nothing after the status
        snaps = await feed.snapshots(symbols)
        assert {name: snap["seq"] for name, snap in snaps.items()} == dict(counts)
        assert snaps[symbols[0]]["last"] == 10.5 and snaps[symbols[0]]["last_size"] == 7
        assert snaps[symbols[0]]["ts"] >= started  # stamped when it was read
        health = await feed.get("/healthz")
        assert health["status"] == "ok" and health["stale_symbols"] == 5
        (source,) = health["sources"]
        assert source["state"] == "ended" and source["reason"] == "end of input"
        assert source["ticks_in"] == len(ticks) + 1 and source["ticks_rejected"] == 1
        await feed.wait_log(rf"stdin: line {bad_line} rejected: line is not valid JSON")
        # Ended, and still serving: a new subscriber gets the last state, then "stale".
        async with connect(feed.ws) as ws:
            await ws.send(
                orjson.dumps({"op": "subscribe", "symbols": symbols[:1], "id": 2}).decode()
            )
            assert (await receive(ws))["type"] == "subscribed"
            snapshot = await receive(ws)
            assert snapshot["data"][0]["seq"] == counts[symbols[0]]
            status = await receive(ws)
            assert status["type"] == "status" and status["state"] == "stale"
        assert await feed.stop() == 0


async def test_bad_lines_are_rejected_counted_and_logged_sparingly() -> None:
    good = b'{"type":"quote","symbol":"ZZZ","bid":1.5,"ask":1.6,"bid_size":1,"ask_size":2}'
    lines = [good, b'{"type":"trade","symbol":"ZZZ","price":-1,"size":1}']  # line 2: price
    lines += [b'{"type":"trade","symbol":"ZZZ","price":2.0,"size":1,"id":9}']  # line 3: field
    lines += [b'{"type":"trade","symbol":"ZZZ","price":2.5,"size":3,"pad":"' + b"x" * 300 + b'"}']
    lines += [b"[1,2"] * 40  # lines 5..44: not JSON
    lines += [good, b"", b"   ", good]  # blank lines are skipped, not rejected
    async with serve("--source", "stdin", "--set", "stdin.max_line=200") as feed:
        await feed.write(b"\r\n".join(lines) + b"\r\n")
        await feed.end_input()
        await feed.wait_log("source stdin ended")
        source = await feed.source()
        assert source["ticks_in"] == 3
        assert source["ticks_rejected"] == 43
        assert source["lines_too_long"] == 1
        assert (await feed.snapshots(["ZZZ"]))["ZZZ"]["seq"] == 3
        await feed.wait_log(r"more line\(s\) rejected, not shown \(the last: line 44\)")
        rejected = [line for line in feed.log if "rejected" in line]
        assert len(rejected) == 6  # five shown, then one summary
        assert "line 2 rejected (price): 'price' must be positive, got -1" in rejected[0]
        assert "line 3 rejected (id): unknown field 'id'" in rejected[1]
        assert "line 4 rejected: line is longer than 200 bytes (stdin.max_line)" in rejected[2]
        assert "line 5 rejected: line is not valid JSON" in rejected[3]


async def test_a_symbol_past_the_limit_is_rejected_and_the_others_applied() -> None:
    lines = [
        b'{"type":"trade","symbol":"%s","price":2.5,"size":1}' % name
        for name in (b"A1", b"A2", b"A3", b"A1", b"A3")
    ]
    async with serve("--source", "stdin", "--set", "limits.max_symbols=2") as feed:
        await feed.write(b"\n".join(lines) + b"\n")
        await feed.end_input()
        await feed.wait_log("source stdin ended")
        source = await feed.source()
        assert (source["ticks_in"], source["ticks_rejected"]) == (3, 2)
        assert await feed.get("/symbols") == ["A1", "A2"]
        await feed.wait_log(r"line 3 rejected \(symbol\): symbol 'A3' is new and the feed holds")


async def test_silence_turns_stale_and_the_next_tick_live() -> None:
    tick = b'{"type":"trade","symbol":"QQQ","price":3.25,"size":5}\n'
    async with serve("--source", "stdin", "--set", "stdin.stale_after=0.3") as feed:
        await feed.write(tick)
        await feed.wait_log("connecting -> live")
        async with connect(feed.ws) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "symbols": ["QQQ"], "id": 1}).decode())
            assert (await receive(ws))["type"] == "subscribed"
            assert (await receive(ws))["type"] == "snapshot"
            status = await receive(ws)  # waits for the silence
            assert status == {
                "type": "status",
                "state": "stale",
                "symbols": ["QQQ"],
                "reason": "no data from stdin for 0.3 s",
            }
            await feed.write(tick)
            frames = [await receive(ws), await receive(ws)]
            assert {"type": "status", "state": "live", "symbols": ["QQQ"]} in frames
            assert any(f["type"] == "update" and f["data"][0]["seq"] == 2 for f in frames)


@pytest.mark.parametrize("kind", ["file", "/dev/null"])
async def test_stdin_that_is_a_file_or_dev_null_is_read_to_its_end(
    kind: str, ticks: list[bytes], tmp_path: Path
) -> None:
    path = tmp_path / "ticks.ndjson"
    path.write_bytes(b"\n".join(ticks) + b"\n")
    fd = os.open(path if kind == "file" else os.devnull, os.O_RDONLY)
    try:
        async with serve("--source", "stdin", stdin=fd) as feed:
            await feed.wait_log("source stdin ended")
            health = await feed.get("/healthz")
            assert health["sources"][0]["state"] == "ended"
            assert health["ticks"] == (len(ticks) if kind == "file" else 0)
            assert await feed.stop() == 0
        assert not any("Traceback" in line for line in feed.log)
    finally:
        os.close(fd)


@given(
    lines=st.lists(st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"")), min_size=1),
    cuts=st.lists(st.integers(0, 600), max_size=12),
    newline_at_end=st.booleans(),
    whole_first=st.booleans(),
)
def test_lines_split_across_reads_come_out_whole_and_numbered(
    lines: list[bytes], cuts: list[int], newline_at_end: bool, whole_first: bool
) -> None:
    """Whether each read is offered to `whole` first (as the source does) or not."""
    limit = 16
    data = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    splitter = LineSplitter(limit)
    got: dict[int, bytes] = {}
    too_long: list[int] = []
    bounds = [0, *sorted(cut for cut in cuts if cut < len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        read = data[start:end]
        chunk = splitter.whole(read) if whole_first else None
        if chunk is None:
            chunk = splitter.feed(read)
        got.update((chunk.first + i, line) for i, line in enumerate(chunk.lines))
        too_long += chunk.too_long
    last = splitter.finish()
    complete = lines if newline_at_end else lines[:-1]
    for number, line in enumerate(complete, 1):
        assert got.get(number, b"") == (b"" if len(line) > limit else line)
    assert len(got) <= len(complete)
    expected_long = [n for n, line in enumerate(lines, 1) if len(line) > limit]
    assert too_long == expected_long
    tail = None if newline_at_end else lines[-1]
    if tail is None or len(tail) > limit or not tail.strip():
        assert last is None
    else:
        assert last == (tail, len(lines))
