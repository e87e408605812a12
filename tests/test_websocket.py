"""Protocol v1 over real sockets: what a dashboard sees."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import struct
import time

import aiohttp
import numpy as np
import pytest

from feed import sweeper as sweeper_module
from feed import ticks
from feed.coalescer import SNAPSHOT_FIELDS
from tests.conftest import StartFeed, recv, recv_until, subscribe


async def test_subscribe_gets_the_current_state_then_updates(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, ["AAPL"])
    feed.trade("AAPL", 190.25, 300)
    await recv(ws)  # the trade was folded
    _, snapshot = await subscribe(ws, ["AAPL", "MSFT"], request_id=2)
    by_symbol = {s["symbol"]: s for s in snapshot["data"]}
    assert list(by_symbol) == ["AAPL", "MSFT"]
    assert all(list(s) == list(SNAPSHOT_FIELDS) for s in snapshot["data"])
    aapl_seq = by_symbol["AAPL"]["seq"]
    assert aapl_seq == 1 and by_symbol["AAPL"]["last"] == 190.25
    assert by_symbol["MSFT"]["seq"] == 0 and by_symbol["MSFT"]["last"] is None

    before = time.time_ns()
    feed.trade("AAPL", 191.0, 100)
    update = await recv_until(ws, lambda f: f["type"] == "update")
    (aapl,) = update["data"]
    assert aapl["symbol"] == "AAPL"
    assert aapl["seq"] > aapl_seq
    assert aapl["last"] == 191.0 and aapl["last_size"] == 100
    assert aapl["ts"] >= before


async def test_several_snapshots_share_one_frame(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, ["AAPL", "MSFT", "NVDA"])
    feed.push(ticks.trades([0, 1, 2, 0], [1.0, 2.0, 3.0, 1.5], [1, 1, 1, 1], ts=time.time_ns()))
    update = await recv(ws)
    assert update["type"] == "update"
    assert sorted(s["symbol"] for s in update["data"]) == ["AAPL", "MSFT", "NVDA"]
    aapl = next(s for s in update["data"] if s["symbol"] == "AAPL")
    assert aapl["last"] == 1.5 and aapl["trades"] == 2  # coalesced: one snapshot per symbol


async def test_no_update_for_unsubscribed_symbols_after_the_answer(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, ["AAPL", "MSFT"])
    await ws.send_json({"op": "unsubscribe", "symbols": ["AAPL"], "id": 2})
    feed.trade("AAPL", 10.0)  # may be folded before or after the answer is written
    answer = await recv_until(ws, lambda f: f["type"] == "unsubscribed")
    assert answer == {"type": "unsubscribed", "id": 2, "symbols": ["AAPL"]}
    for price in (11.0, 12.0):
        feed.trade("AAPL", price)
    feed.trade("MSFT", 400.0)
    update = await recv(ws)
    assert [s["symbol"] for s in update["data"]] == ["MSFT"]


async def test_ping_pong(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    before = time.time_ns()
    await ws.send_json({"op": "ping", "id": 3})
    pong = await recv(ws)
    assert pong["type"] == "pong" and pong["id"] == 3
    assert before <= pong["ts"] <= time.time_ns()


@pytest.mark.parametrize(
    ("message", "code", "request_id"),
    [
        ("not json", "bad_json", None),
        ('"a string"', "bad_request", None),
        ('{"op":"fly","id":1}', "unknown_op", 1),
        ('{"op":"subscribe","symbols":["AAPL","NOPE","ZZZ"],"id":2}', "unknown_symbol", 2),
        ('{"op":"subscribe","symbols":"AAPL","id":3}', "bad_symbols", 3),
        ('{"op":"unsubscribe","symbols":["NOPE"],"id":4}', "unknown_symbol", 4),
        ('{"op":"subscribe","symbols":["AAPL","MSFT","NVDA"],"id":5}', "too_many_symbols", 5),
    ],
)
async def test_errors_are_answered_and_the_connection_lives_on(
    start_feed: StartFeed, message: str, code: str, request_id: int | None
) -> None:
    feed = await start_feed(limits={"max_symbols_per_connection": 2})
    ws = await feed.ws()
    await ws.send_str(message)
    error = await recv(ws)
    assert error["type"] == "error" and error["code"] == code
    assert error.get("id") == request_id
    assert isinstance(error["message"], str) and error["message"]
    if code == "unknown_symbol":
        assert "NOPE" in error["message"]
    # Still open and served.
    await subscribe(ws, ["AAPL"])


async def test_too_many_symbols_counts_what_is_already_held(start_feed: StartFeed) -> None:
    feed = await start_feed(limits={"max_symbols_per_connection": 2})
    ws = await feed.ws()
    await subscribe(ws, ["AAPL", "MSFT"])
    await subscribe(ws, ["MSFT"], request_id=2)  # already held: no growth
    await ws.send_json({"op": "subscribe", "symbols": ["NVDA"], "id": 3})
    error = await recv(ws)
    assert error["code"] == "too_many_symbols" and "limit is 2" in error["message"]


async def test_binary_frames_get_an_error(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await ws.send_bytes(b"\x00\x01")
    error = await recv(ws)
    assert error["code"] == "binary_not_supported"
    await ws.send_json({"op": "ping", "id": 1})
    assert (await recv(ws))["type"] == "pong"


async def test_oversized_message_closes_with_1009(start_feed: StartFeed) -> None:
    feed = await start_feed(limits={"max_message_size": 256})
    ws = await feed.ws()
    await ws.send_json({"op": "subscribe", "symbols": ["AAPL"] * 100})
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1009


async def test_flooding_control_messages_closes_with_1008(start_feed: StartFeed) -> None:
    feed = await start_feed(limits={"control_rate": 5.0, "control_burst": 5})
    ws = await feed.ws()
    for i in range(30):
        await ws.send_json({"op": "ping", "id": i})
    pongs = 0
    while True:
        message = await ws.receive(timeout=5)
        if message.type is not aiohttp.WSMsgType.TEXT:
            break
        pongs += 1
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    assert 5 <= pongs < 30


async def test_connection_limit_answers_503_until_a_slot_frees(start_feed: StartFeed) -> None:
    feed = await start_feed(limits={"max_connections": 2})
    first = await feed.ws()
    await feed.ws()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await feed.ws()
    assert info.value.status == 503
    async with feed.client.get("/ws") as response:
        assert response.status == 503
        body = await response.json()
        assert body["error"] == "too_many_connections"
        assert response.headers["Retry-After"] == "1"
    await first.close()
    hub_connections = 2
    deadline = time.monotonic() + 5
    while hub_connections >= 2 and time.monotonic() < deadline:  # the server notices the close
        async with feed.client.get("/healthz") as response:
            hub_connections = (await response.json())["connections"]
    third = await feed.ws()
    await third.send_json({"op": "ping"})
    assert (await recv(third))["type"] == "pong"


async def test_idle_connections_get_heartbeats(start_feed: StartFeed) -> None:
    feed = await start_feed(websocket={"heartbeat_interval": 0.2})
    ws = await feed.ws()
    first = await recv(ws, heartbeats=True)
    second = await recv(ws, heartbeats=True)
    assert first["type"] == second["type"] == "heartbeat"
    assert second["ts"] - first["ts"] >= 0.1e9


async def test_every_idle_connection_gets_heartbeats_when_sweeping_one_per_turn(
    start_feed: StartFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper yields to the event loop between slices (heartbeats are writes, and
    thousands at once would hold every update up); sliced to one connection, none is missed."""
    monkeypatch.setattr(sweeper_module, "SWEEP_BUDGET", 0.0)
    feed = await start_feed(websocket={"heartbeat_interval": 0.2})
    clients = [await feed.ws() for _ in range(30)]
    beats = await asyncio.wait_for(
        asyncio.gather(*(recv(ws, heartbeats=True) for ws in clients)), timeout=10
    )
    assert all(beat["type"] == "heartbeat" for beat in beats)


async def test_compression_is_off_by_default_even_when_offered(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws(compress=15)
    assert ws.compress == 0
    feed_on = await start_feed(websocket={"compress": True})
    ws_on = await feed_on.ws(compress=15)
    assert ws_on.compress == 15
    await subscribe(ws_on, ["AAPL"])


async def test_a_client_that_goes_away_is_forgotten(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, ["AAPL"])
    await ws.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        async with feed.client.get("/healthz") as response:
            if (await response.json())["connections"] == 0:
                break
    else:
        pytest.fail("the server still counts a closed connection")
    feed.push(ticks.trades(np.array([0]), [1.0], [1], ts=1))  # publishing to nobody is fine
    async with feed.client.get("/healthz") as response:
        assert (await response.json())["status"] == "ok"


async def test_a_peer_that_stops_answering_pings_is_closed(start_feed: StartFeed) -> None:
    feed = await start_feed(websocket={"ping_interval": 0.2, "heartbeat_interval": 0.05})
    silent = await feed.raw()  # answers no ping (it never reads)
    answering = await feed.ws()  # aiohttp's client answers pings while it receives

    async def keep_receiving() -> None:
        while True:
            assert (await recv(answering, heartbeats=True))["type"] == "heartbeat"

    receiving = asyncio.create_task(keep_receiving())
    await asyncio.wait_for(silent.reader.read(), 10)  # everything up to EOF: the server hung up
    assert silent.reader.at_eof()
    assert not receiving.done(), receiving
    receiving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiving
    await answering.send_json({"op": "ping", "id": 1})
    assert (await recv(answering))["type"] == "pong"
    silent.close()


async def test_clients_that_vanish_during_the_handshake_leave_no_error(
    start_feed: StartFeed, caplog: pytest.LogCaptureFixture
) -> None:
    feed = await start_feed()
    assert feed.server.port is not None
    key = base64.b64encode(os.urandom(16))
    for _ in range(20):
        _, writer = await asyncio.open_connection(feed.server.host, feed.server.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, right behind the upgrade request
    ws = await feed.ws()  # still serving
    await ws.send_json({"op": "ping", "id": 1})
    assert (await recv(ws))["type"] == "pong"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()
