"""Bursts spread over turns of the event loop: handshakes and requests a few per turn, in
order, and a fan-out flushed a slice at a time, with nothing lost."""

from __future__ import annotations

import asyncio

import pytest

from feed import hub as hub_module
from feed.turns import PerTurn
from tests.conftest import StartFeed


async def test_admits_a_few_per_turn_first_come_first_admitted() -> None:
    gate = PerTurn(3)
    turn = 0
    admitted: list[tuple[int, int]] = []

    def count_turns() -> None:
        nonlocal turn
        turn += 1
        if len(admitted) < 10:
            asyncio.get_running_loop().call_soon(count_turns)

    async def caller(n: int) -> None:
        if not gate.enter():
            await gate.admit()
        admitted.append((n, turn))

    asyncio.get_running_loop().call_soon(count_turns)
    async with asyncio.timeout(5):
        await asyncio.gather(*(caller(n) for n in range(10)))
    assert [n for n, _ in admitted] == list(range(10))
    per_turn: dict[int, int] = {}
    for _, at in admitted:
        per_turn[at] = per_turn.get(at, 0) + 1
    assert max(per_turn.values()) <= 3
    assert len(per_turn) >= 4  # 10 callers, 3 a turn
    assert gate.deferred == 7


async def test_a_caller_cancelled_while_waiting_leaves_the_queue() -> None:
    gate = PerTurn(1)
    first, second, third = (asyncio.create_task(gate.admit()) for _ in range(3))
    await asyncio.sleep(0)  # first admitted; second and third wait for later turns
    assert first.done() and not second.done() and len(gate.waiting) == 2
    second.cancel()
    async with asyncio.timeout(5):
        await third  # admitted on a later turn, not held up by the cancelled one
    assert second.cancelled()


async def test_a_fan_out_in_slices_loses_nothing(
    start_feed: StartFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no time at all per slice, every fan-out flushes a few writers and leaves the rest
    for the next turns: each client still ends with the newest trade."""
    monkeypatch.setattr(hub_module, "FLUSH_SLICE", 0.0)
    monkeypatch.setattr(hub_module, "FLUSH_CHECK", 2)
    feed = await start_feed()
    clients = [await feed.raw() for _ in range(20)]
    for client in clients:
        await client.send({"op": "subscribe", "symbols": ["AAPL"], "id": 1})
        assert (await client.recv())["type"] == "subscribed"
        assert (await client.recv())["type"] == "snapshot"
    for price in range(100, 131):
        feed.trade("AAPL", float(price))
        await asyncio.sleep(0)
    for client in clients:
        last = 0.0
        while last != 130.0:
            frame = await client.recv()
            if frame["type"] == "update":
                last = frame["data"][0]["last"]
        client.close()
