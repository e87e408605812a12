"""`feed publish`, run as a real process against a real `feed serve`, watched by a subscriber
that uses another WebSocket library (`websockets`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.test_cli import FEED, ROOT, Served, start_serve

TOKEN = "pub-token-1"
SIMULATE = ["simulate", "--symbols", "4", "--rate", "4000", "--duration", "1", "--fast"]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    feed = await start_serve("--source", "ingest", "--set", f"ingest.tokens={TOKEN},other")
    yield feed
    if feed.process.returncode is None:
        feed.process.kill()
        await feed.process.wait()


def ingest_url(served: Served) -> str:
    return served.url.removesuffix("/ws") + "/ingest"


async def publish(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *FEED,
        "publish",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    _, err = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def subscribed(served: Served, symbols: list[str]) -> ClientConnection:
    ws = await connect(served.url)
    await ws.send(orjson.dumps({"op": "subscribe", "symbols": symbols, "id": 1}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "snapshot"
    return ws


async def seqs_reach(ws: ClientConnection, wanted: dict[str, int], timeout: float = 10) -> None:
    """Receive updates until each symbol's seq is the one wanted (never above it)."""
    missing = dict(wanted)
    async with asyncio.timeout(timeout):
        while missing:
            frame: dict[str, Any] = orjson.loads(await ws.recv())
            for snap in frame.get("data", ()):
                symbol = snap["symbol"]
                assert snap["seq"] <= wanted[symbol]
                if snap["seq"] == missing.get(symbol):
                    del missing[symbol]


def tick(symbol: str, price: float = 10.0) -> bytes:
    return orjson.dumps({"type": "trade", "symbol": symbol, "price": price, "size": 1}) + b"\n"


async def test_simulate_piped_into_publish_reaches_a_subscriber(served: Served) -> None:
    url = ingest_url(served)
    simulated = subprocess.run(
        [*FEED, *SIMULATE], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    counts: dict[str, int] = {}
    for line in simulated.splitlines():
        symbol = orjson.loads(line)["symbol"]
        counts[symbol] = counts.get(symbol, 0) + 1
    assert len(counts) == 4
    # One tick per symbol first, so that the subscriber can subscribe before the flood.
    first = b"".join(tick(symbol) for symbol in counts)
    assert (await publish(url, "--token", TOKEN, stdin=first))[0] == 0
    ws = await subscribed(served, list(counts))

    # The documented pipeline, `feed simulate ... | feed publish URL --token T`, as two
    # processes joined by a pipe (the simulation is deterministic under its seed).
    read, write = os.pipe()
    simulate = subprocess.Popen([*FEED, *SIMULATE], cwd=ROOT, stdout=write)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        publisher = await asyncio.create_subprocess_exec(
            *FEED, "publish", url, "--token", TOKEN, "--batch", "100",
            cwd=ROOT, stdin=pipe, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    await seqs_reach(ws, {symbol: 1 + count for symbol, count in counts.items()})
    _, err = await asyncio.wait_for(publisher.communicate(), 30)
    assert simulate.wait(timeout=30) == 0
    assert publisher.returncode == 0, err
    total = sum(counts.values())
    assert f"{total} ticks in" in err.decode() and f"{total} accepted, 0 rejected" in err.decode()
    await ws.close()


async def test_a_tick_is_forwarded_before_stdin_ends(served: Served) -> None:
    url = ingest_url(served)
    assert (await publish(url, "--token", TOKEN, stdin=tick("PACE")))[0] == 0
    ws = await subscribed(served, ["PACE"])
    process = await asyncio.create_subprocess_exec(
        *FEED, "publish", url, "--token", TOKEN,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    for n in (2, 3):  # a batch of 1,000 would never fill: each tick goes on its own
        process.stdin.write(tick("PACE", 10.0 + n))
        await process.stdin.drain()
        await seqs_reach(ws, {"PACE": n})
    process.stdin.close()
    assert await asyncio.wait_for(process.wait(), 30) == 0
    await ws.close()


async def test_bad_ticks_exit_1_naming_line_field_and_reason(served: Served) -> None:
    lines = (
        tick("OKAY")
        + b'{"type":"trade","symbol":"OKAY","price":-1.5,"size":1}\n'
        + b"\n"
        + b"this is not json\n"
        + b'{"type":"quote","symbol":"OKAY","bid":2.0,"ask":1.0,"bid_size":1,"ask_size":1}\n'
        + tick("OKAY")
    )
    code, err = await publish(ingest_url(served), "--token", TOKEN, stdin=lines)
    assert code == 1, err
    assert "5 ticks in 1 messages" in err and "2 accepted, 3 rejected" in err
    assert "line 2: price: 'price' must be positive, got -1.5" in err
    assert "line 4: line is not valid JSON" in err
    assert "line 5: bid: crossed quote" in err
    assert "Traceback" not in err


async def test_a_wrong_token_exits_2_with_the_401(served: Served) -> None:
    code, err = await publish(ingest_url(served), "--token", "nope", stdin=tick("X"))
    assert code == 2
    assert "401 unauthorized: check --token" in err
    assert "Traceback" not in err


async def test_the_token_defaults_to_the_environment(served: Served) -> None:
    env = {"FEED_INGEST_TOKENS": "other,unused", "FEED_TOKEN": "nope"}
    code, err = await publish(ingest_url(served), stdin=tick("ENV"), env=env)
    assert code == 0, err
    env = {"FEED_INGEST_TOKENS": "", "FEED_TOKEN": TOKEN}
    code, err = await publish(ingest_url(served), stdin=tick("ENV"), env=env)
    assert code == 0, err


async def test_a_feed_that_is_not_there_exits_2() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ingest"
    code, err = await publish(url, "--token", TOKEN, stdin=tick("X"))
    assert code == 2
    assert f"feed publish: cannot connect to {url}:" in err
    assert "Traceback" not in err
    code, err = await publish(
        url, stdin=tick("X"), env={"FEED_INGEST_TOKENS": "", "FEED_TOKEN": ""}
    )
    assert code == 2 and "no token" in err


async def test_a_message_over_the_feed_limit_exits_2_naming_the_close() -> None:
    served = await start_serve(
        "--source", "ingest", "--set", f"ingest.tokens={TOKEN}",
        "--set", "ingest.max_message_size=300",
    )  # fmt: skip
    try:
        code, err = await publish(
            ingest_url(served), "--token", TOKEN, stdin=b"".join(tick(f"B{n}") for n in range(9))
        )
    finally:
        served.process.kill()
        await served.process.wait()
    assert code == 2
    assert "the feed closed the connection: 1009" in err and "lower --batch" in err
    assert "9 ticks unacknowledged" in err


def test_publish_is_listed_in_the_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "feed", "publish", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0
    assert "--token" in result.stdout and "--batch" in result.stdout


async def test_sigterm_closes_a_connected_producer_with_1001_and_stops_promptly(
    served: Served,
) -> None:
    producer = await connect(ingest_url(served) + f"?token={TOKEN}")
    await producer.send(tick("SIGT").decode())
    served.process.send_signal(signal.SIGTERM)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(producer.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert await asyncio.wait_for(served.process.wait(), 5) == 0
