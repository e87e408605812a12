"""Bursts spread over turns of the event loop: handshakes and requests a few per turn, in
order, and a fan-out flushed a slice at a time, with nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

import pytest

from feed import hub as hub_module
from feed.turns import PerTurn
from tests.conftest import StartFeed


def count_turns(more: Callable[[], bool]) -> list[int]:
    """Count the loop's turns from the next one on, while `more()`: `[turns so far]`."""
    turns = [0]

    def tick() -> None:
        turns[0] += 1
        if more():
            asyncio.get_running_loop().call_soon(tick)

    asyncio.get_running_loop().call_soon(tick)
    return turns


async def test_admits_a_few_per_turn_first_come_first_admitted() -> None:
    gate = PerTurn(3)
    admitted: list[tuple[int, int]] = []
    turn = count_turns(lambda: len(admitted) < 10)

    async def caller(n: int) -> None:
        if not gate.enter():
            await gate.admit()
        admitted.append((n, turn[0]))

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


async def test_calls_and_callers_share_the_turns_in_order() -> None:
    """A protocol's callbacks (which cannot await) wait their turn in line with the callers
    that await it, `limit` of them a turn."""
    gate = PerTurn(2)
    order: list[str] = []
    turns = count_turns(lambda: len(order) < 6)

    async def caller(name: str) -> None:
        await gate.admit()
        order.append(name)

    gate.call(partial(order.append, "call 1"))  # room this turn: called at once
    assert order == ["call 1"]
    task = asyncio.ensure_future(caller("await 2"))
    await asyncio.sleep(0)
    gate.call(partial(order.append, "call 3"))
    gate.call(partial(order.append, "call 4"))
    later = asyncio.ensure_future(caller("await 5"))
    await asyncio.sleep(0)
    gate.call(partial(order.append, "call 6"))
    async with asyncio.timeout(5):
        await asyncio.gather(task, later)
        while len(order) < 6:
            await asyncio.sleep(0)
    assert order == ["call 1", "await 2", "call 3", "call 4", "await 5", "call 6"]
    assert gate.taken == 6 and gate.deferred >= 2
    assert turns[0] >= 3


async def test_the_already_served_have_a_line_of_their_own() -> None:
    """Newcomers waiting in line do not hold up a connection already served: it has `limit`
    admissions a turn of its own."""
    gate = PerTurn(1)
    order: list[str] = []
    gate.call(partial(order.append, "first"))  # this turn's room
    for n in range(3):
        gate.call(partial(order.append, f"newcomer {n}"))  # one a turn, from the next on
    gate.call(partial(order.append, "served"), ahead=True)  # the other line: at once
    assert order == ["first", "served"]
    async with asyncio.timeout(5):
        await gate.admit(ahead=True)  # that line's room is taken: the next turn
        order.append("served again")
        while len(order) < 6:
            await asyncio.sleep(0)
    assert order.index("served again") < order.index("newcomer 1")
    assert order[2:] == ["newcomer 0", "served again", "newcomer 1", "newcomer 2"]


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
