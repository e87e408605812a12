"""Connections' way in and out, a few per turn of the loop (feed.intake), through `feed serve`'s
own listener: a burst of upgrades, of requests and of resets is spread over turns, and every
client is still served, in order, and every lost one torn down."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from typing import Any

import orjson

from tests.conftest import Served, serve_as_feed
from tests.wsclient import RawClient


async def until(served: Served, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    """/stats once `check(stats)` holds (asked every 50 ms, failed after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await served.stats()
        if check(stats):
            return stats
        assert time.monotonic() < deadline, f"not reached in time: {stats}"
        await asyncio.sleep(0.05)


async def test_a_burst_of_upgrades_is_read_a_few_per_turn_and_every_client_is_served() -> None:
    async with serve_as_feed(limits={"opens_per_turn": 2}) as served:
        clients = await asyncio.gather(*(served.raw() for _ in range(60)))
        for client in clients:
            await client.send({"op": "subscribe", "symbols": ["AAPL"], "id": 7})
        for client in clients:
            assert await client.recv() == {"type": "subscribed", "id": 7, "symbols": ["AAPL"]}
            assert (await client.recv())["type"] == "snapshot"
        stats = await served.stats()
        assert stats["intake"]["opens_deferred"] > 0  # 60 at once, 2 a turn
        assert stats["intake"]["opens_waiting"] == 0
        assert stats["hub"]["connections"] == 60
        for client in clients:
            client.close()


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return (
        struct.pack("!BB", 0x81, 0x80 | len(payload))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def _eager(served: Served, n: int) -> RawClient:
    """A client that sends its upgrade and its subscribe in one write, before any answer."""
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (served.host, served.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {served.host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    subscribe = orjson.dumps({"op": "subscribe", "symbols": ["MSFT"], "id": n})
    writer.write(request + _masked(subscribe))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawClient(reader, writer)


async def test_what_a_waiting_connection_sent_with_its_upgrade_is_kept_in_order() -> None:
    """A connection not yet let in stops reading and keeps what it read: its request, and the
    frame that came with it, go on together on its turn."""
    async with serve_as_feed(limits={"opens_per_turn": 1}) as served:
        clients = await asyncio.gather(*(_eager(served, n) for n in range(40)))
        for n, client in enumerate(clients):
            assert await client.recv() == {"type": "subscribed", "id": n, "symbols": ["MSFT"]}
            assert (await client.recv())["type"] == "snapshot"
        assert (await served.stats())["intake"]["opens_deferred"] > 0
        for client in clients:
            client.close()


async def test_a_burst_of_requests_is_passed_on_a_few_reads_per_turn_in_order() -> None:
    async with serve_as_feed(limits={"reads_per_turn": 2, "control_burst": 500}) as served:
        clients = [await served.raw() for _ in range(20)]
        for client in clients:  # every client's ten requests back to back
            for n in range(10):
                await client.send({"op": "ping", "id": n})
        for client in clients:
            answers = [await client.recv() for _ in range(10)]
            assert [a["id"] for a in answers] == list(range(10))
            assert {a["type"] for a in answers} == {"pong"}
        assert (await served.stats())["intake"]["reads_deferred"] > 0
        for client in clients:
            client.close()


async def test_clients_reset_together_are_torn_down_a_few_per_turn_and_all_go() -> None:
    async with serve_as_feed(limits={"closes_per_turn": 2}) as served:
        clients = [await served.raw() for _ in range(60)]
        for client in clients:
            await client.send({"op": "subscribe", "symbols": ["AAPL"], "id": 1})
            assert (await client.recv())["type"] == "subscribed"
        await until(served, lambda s: s["hub"]["connections"] == 60)
        for client in clients:
            client.reset()
        stats = await until(served, lambda s: s["hub"]["connections"] == 0)
        assert stats["intake"]["closes_deferred"] > 0
        assert stats["intake"]["closes_waiting"] == 0
        again = await served.raw()  # and the server takes new clients as before
        await again.send({"op": "subscribe", "symbols": ["AAPL"], "id": 2})
        assert (await again.recv())["type"] == "subscribed"
        again.close()
