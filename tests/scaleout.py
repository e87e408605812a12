"""Real processes for the scale-out tests: a private `nats-server -js` on a free port with its
store in a temporary directory, and `feed ingest` / `feed gateway` run as their command lines.

Each process's stderr is read as it comes; `wait_for(pattern)` waits, with a timeout, for a
line that matches (a start-up line, a log line), so nothing waits on a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats as nats_py
import orjson
import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api

from feed import bus

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)


def need_nats() -> str:
    if NATS_SERVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nats-server is missing under CI=true (.ci/run installs it)")
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    return NATS_SERVER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A child process whose stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while True:
            raw = await stream.readline()
            if not raw:
                break
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, pattern: str, timeout: float = 15.0, count: int = 1) -> re.Match[str]:
        """The `count`-th line that matches `pattern`."""
        compiled = re.compile(pattern)

        def found() -> re.Match[str] | None:
            seen = 0
            for line in self.lines:
                match = compiled.search(line)
                if match:
                    seen += 1
                    if seen == count:
                        return match
            return None

        async def wait() -> re.Match[str]:
            async with self._changed:
                while True:
                    match = found()
                    if match:
                        return match
                    if self._reader.done():
                        raise AssertionError(
                            f"{self.name} exited ({self.process.returncode}) before "
                            f"{pattern!r}:\n" + "\n".join(self.lines[-30:])
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no line matching {pattern!r} in {timeout} s:\n"
                + "\n".join(self.lines[-30:])
            ) from None

    async def write(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(data)
        await stdin.drain()

    async def wait(self, timeout: float = 15.0) -> int:
        """Its exit code, once it ends by itself."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        assert self.process.returncode is not None
        return self.process.returncode


SPAWNED: list[Proc] = []
"""Every process started, so that `reap` stops what a failing test left running."""


async def spawn(name: str, *args: str, stdin: bool = False) -> Proc:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    proc = Proc(process, name)
    SPAWNED.append(proc)
    return proc


async def reap() -> None:
    """Stop every process still running (a test that failed half-way); SIGKILL after 5 s."""
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.process.returncode is None:
            await proc.stop(timeout=5.0)


class Nats:
    """A private nats-server with JetStream, which the test may kill and start again."""

    def __init__(self, store: Path, *options: str) -> None:
        self.port = free_port()
        self.store = store
        self.options = options
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await spawn(
            "nats-server",
            need_nats(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store),
            *self.options,
        )
        await self.proc.wait_for("Server is ready")

    async def kill(self) -> None:
        assert self.proc is not None
        await self.proc.stop(signal.SIGKILL)
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop()
            self.proc = None


class Role:
    """`feed ingest` or `feed gateway` as a process, and the URL it serves."""

    def __init__(self, proc: Proc, base: str) -> None:
        self.proc = proc
        self.base = base  # http://host:port

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            return await response.json()


def bus_args(nats: Nats, *more: str) -> list[str]:
    return ["--set", f"bus.url={nats.url}", *more]


async def start_ingest(nats: Nats, node: str = "a", *more: str) -> Role:
    proc = await spawn(
        f"ingest {node}",
        sys.executable,
        "-m",
        "feed",
        "ingest",
        "--port",
        "0",
        "--source",
        "stdin",
        *bus_args(nats, "--set", f"bus.node={node}", "--set", "bus.heartbeat_interval=0.2"),
        *more,
        stdin=True,
    )
    match = await proc.wait_for(r"listening on (http://\S+)/ ")
    await proc.wait_for(r"(restored \d+ symbol|nothing stored)")
    return Role(proc, match.group(1))


async def start_gateway(nats: Nats, *more: str) -> Role:
    proc = await spawn(
        "gateway",
        sys.executable,
        "-m",
        "feed",
        "gateway",
        "--port",
        "0",
        *bus_args(nats, "--set", "bus.stale_after=1"),
        *more,
    )
    match = await proc.wait_for(r"listening on ws://(\S+)/ws")
    return Role(proc, "http://" + match.group(1))


def trade(symbol: str, price: float, size: int = 100) -> bytes:
    return orjson.dumps(
        {"type": "trade", "symbol": symbol, "price": price, "size": size, "ts": time.time_ns()}
    )


def quote(symbol: str, bid: float, ask: float) -> bytes:
    return orjson.dumps(
        {
            "type": "quote",
            "symbol": symbol,
            "bid": bid,
            "ask": ask,
            "bid_size": 100,
            "ask_size": 200,
            "ts": time.time_ns(),
        }
    )


class Watcher:
    """A WebSocket client of a gateway that keeps what it saw: each symbol's newest snapshot,
    every (epoch, seq) in order, and the statuses."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.ws = ws
        self.session = session
        self.latest: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[tuple[int, int]]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.first_snapshot: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Condition()
        self._reader: asyncio.Future[None] | None = None

    @classmethod
    async def connect(cls, url: str, symbols: list[str]) -> Watcher:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url)
        watcher = cls(ws, session)
        await ws.send_json({"op": "subscribe", "symbols": symbols, "id": 1})
        answer = await ws.receive_json(timeout=10)
        assert answer == {"type": "subscribed", "id": 1, "symbols": symbols}, answer
        snapshot = await ws.receive_json(timeout=10)
        assert snapshot["type"] == "snapshot", snapshot
        for snap in snapshot["data"]:
            watcher.first_snapshot[snap["symbol"]] = snap
            watcher._take(snap)
        watcher._reader = asyncio.ensure_future(watcher._read())
        return watcher

    def _take(self, snap: dict[str, Any]) -> None:
        self.latest[snap["symbol"]] = snap
        self.versions.setdefault(snap["symbol"], []).append((snap["epoch"], snap["seq"]))

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(message.data)
            async with self._changed:
                if frame["type"] in ("update", "snapshot"):
                    for snap in frame["data"]:
                        self._take(snap)
                elif frame["type"] == "status":
                    self.statuses.append(frame)
                self._changed.notify_all()

    async def until(self, predicate: Any, timeout: float = 15.0, what: str = "") -> None:
        async def wait() -> None:
            async with self._changed:
                while not predicate(self):
                    await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            seqs = {name: snap["seq"] for name, snap in self.latest.items()}
            raise AssertionError(
                f"not seen in {timeout} s: {what}; seqs {seqs}; statuses {self.statuses[-5:]}"
            ) from None

    def has_seqs(self, want: dict[str, int]) -> bool:
        return all(self.latest.get(name, {}).get("seq") == seq for name, seq in want.items())

    def status_seen(self, state: str, reason: str = "", since: int = 0) -> bool:
        return any(
            status["state"] == state and reason in status.get("reason", "")
            for status in self.statuses[since:]
        )

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


class Tap:
    """What the stream holds and what is published, seen from a NATS client of the test's own:
    the newest stored snapshot of each symbol first (last per subject), then each new one."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Condition()
        self._nc: Any = None

    @classmethod
    async def open(cls, nats: Nats) -> Tap:
        tap = cls()
        tap._nc = await nats_py.connect(nats.url)
        js = tap._nc.jetstream()  # the stream exists: start_ingest waited for its restore
        await js.subscribe(
            "feed.snap.>",
            cb=tap._take,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        return tap

    async def _take(self, msg: Msg) -> None:
        async with self._changed:
            snap = orjson.loads(msg.data)
            assert bus.Subjects("feed").symbol_of(msg.subject) == snap["symbol"]
            self.latest[snap["symbol"]] = snap
            self._changed.notify_all()

    async def until_seqs(self, want: dict[str, int], timeout: float = 15.0) -> None:
        def done() -> bool:
            return all(self.latest.get(k, {}).get("seq") == v for k, v in want.items())

        async def wait() -> None:
            async with self._changed:
                while not done():
                    await self._changed.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            got = {k: v.get("seq") for k, v in self.latest.items()}
            raise AssertionError(f"stream holds {got}, not {want}") from None

    async def close(self) -> None:
        await self._nc.close()
