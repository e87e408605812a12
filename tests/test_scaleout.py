"""Scale-out over NATS, for real: a private `nats-server -js`, `feed ingest` fed NDJSON on its
stdin, and `feed gateway` processes, with WebSocket clients on the gateways (docs/scaling.md).

The symbols include a dot, a space, a slash and a wildcard, which must each stay one subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats as nats_py
import pytest
from hypothesis import given
from hypothesis import strategies as st

import feed.client
from feed import bus
from tests.scaleout import (
    Nats,
    Role,
    Tap,
    Watcher,
    need_nats,
    quote,
    reap,
    spawn,
    start_gateway,
    start_ingest,
    trade,
)

SYMBOLS = ["AAPL", "FX.EUR/USD", "BTC USD", "ES*>", "MSFT"]

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
async def _reaped() -> AsyncIterator[None]:
    """Nothing a test started outlives it, even when it fails half-way."""
    yield
    await reap()


@contextlib.asynccontextmanager
async def running(*roles: Role) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for role in roles:
            await role.proc.stop()


async def feed_ticks(ingest: Role, rounds: int, start: float = 100.0) -> dict[str, int]:
    """`rounds` of one trade and one quote per symbol; the seq each symbol then reaches."""
    lines = []
    for n in range(rounds):
        for i, symbol in enumerate(SYMBOLS):
            price = start + i + n / 100
            lines.append(trade(symbol, price))
            lines.append(quote(symbol, price - 0.01, price + 0.01))
    await ingest.proc.write(b"\n".join(lines) + b"\n")
    return dict.fromkeys(SYMBOLS, 2 * rounds)


def plus(seqs: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {name: seqs[name] + more[name] for name in seqs}


async def stored(nats: Nats, seqs: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Wait until the stream holds these seqs (a NATS client of the test's own); its snapshots."""
    tap = await Tap.open(nats)
    try:
        await tap.until_seqs(seqs)
        return dict(tap.latest)
    finally:
        await tap.close()


@given(st.text(min_size=1, max_size=64))
def test_every_symbol_name_is_one_subject_token_and_comes_back(name: str) -> None:
    token = bus.encode_symbol(name)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert all(ord(c) < 127 for c in token)
    assert bus.decode_symbol(token) == name
    subjects = bus.Subjects("feed")
    assert subjects.symbol_of(subjects.snap(name)) == name


async def test_two_gateways_converge_and_a_late_gateway_starts_with_every_symbol(
    nats: Nats,
) -> None:
    ingest = await start_ingest(nats)
    seqs = await feed_ticks(ingest, 3)
    await stored(nats, seqs)
    g1, g2 = await start_gateway(nats), await start_gateway(nats)
    async with running(g1, g2, ingest):
        clients = [await Watcher.connect(g.ws_url, SYMBOLS) for g in (g1, g2, g1, g2)]
        seqs = plus(seqs, await feed_ticks(ingest, 50, start=200.0))
        for client in clients:
            await client.until(lambda c: c.has_seqs(seqs), what=f"seqs {seqs}")
        first = clients[0].latest
        assert all(client.latest == first for client in clients[1:])
        assert first["FX.EUR/USD"]["last"] == pytest.approx(201.49)
        assert first["FX.EUR/USD"]["trades"] == 53
        # A gateway started now answers with the newest state of every symbol at once.
        g3 = await start_gateway(nats)
        async with running(g3):
            late = await Watcher.connect(g3.ws_url, SYMBOLS)
            assert late.first_snapshot == first
            assert sorted(await g3.get("/symbols")) == sorted(SYMBOLS)
            await late.close()
        for client in clients:
            await client.close()


async def test_nats_killed_and_restarted_gives_stale_then_live_and_the_right_state(
    nats: Nats,
) -> None:
    ingest = await start_ingest(nats)
    seqs = await feed_ticks(ingest, 2)
    await stored(nats, seqs)
    gateway = await start_gateway(nats)
    async with running(gateway, ingest):
        client = await Watcher.connect(gateway.ws_url, SYMBOLS)
        await client.until(lambda c: c.has_seqs(seqs), what="the first ticks")
        await nats.kill()
        await client.until(lambda c: c.status_seen("stale", "bus"), what="stale (bus)")
        health = await gateway.get("/healthz")
        assert health["status"] == "failed" and health["stale_symbols"] == len(SYMBOLS)
        # Ticks while NATS is away are folded by the ingest node and sent once it is back.
        seqs = plus(seqs, await feed_ticks(ingest, 10, start=300.0))
        seen = len(client.statuses)
        await nats.start()
        await client.until(lambda c: c.status_seen("live", since=seen), what="live again")
        await client.until(lambda c: c.has_seqs(seqs), what=f"seqs {seqs} after the restart")
        assert client.latest["MSFT"]["last"] == pytest.approx(304.09)
        assert (await gateway.get("/healthz"))["status"] == "ok"
        stats = await gateway.get("/stats")
        assert stats["bus"]["reconnects"] >= 1 and stats["bus"]["reads"] >= 2
        await client.close()
    assert await gateway.proc.stop() == 0


async def test_a_restarted_ingest_node_carries_seq_on_and_nothing_goes_backwards(
    nats: Nats,
) -> None:
    ingest = await start_ingest(nats, "a")
    seqs = await feed_ticks(ingest, 5)
    await stored(nats, seqs)
    gateway = await start_gateway(nats)
    async with running(gateway):
        client = await Watcher.connect(gateway.ws_url, SYMBOLS)
        await client.until(lambda c: c.has_seqs(seqs), what="the first ticks")
        before = dict(client.latest)
        assert await ingest.proc.stop() == 0
        # Its heartbeat stops: after bus.stale_after (1 s here) its symbols are stale.
        await client.until(lambda c: c.status_seen("stale", "ingest node a"), what="stale")
        seen = len(client.statuses)
        ingest = await start_ingest(nats, "a")
        async with running(ingest):
            await ingest.proc.wait_for(rf"restored {len(SYMBOLS)} symbol")
            seqs = plus(seqs, await feed_ticks(ingest, 5, start=400.0))
            await client.until(lambda c: c.has_seqs(seqs), what=f"seqs {seqs} carried on")
            await client.until(lambda c: c.status_seen("live", since=seen), what="live")
        for name, versions in client.versions.items():
            assert versions == sorted(versions), name  # never backwards
            assert len({epoch for epoch, _ in versions}) == 1, name  # the same lineage
        after = client.latest
        for name in SYMBOLS:
            assert after[name]["trades"] == before[name]["trades"] + 5
            assert after[name]["volume"] == before[name]["volume"] + 500
            assert after[name]["low"] == before[name]["low"]  # the day's low carried on
            assert after[name]["epoch"] == before[name]["epoch"]
        await client.close()


async def test_a_purged_stream_starts_a_new_epoch_that_clients_can_tell(nats: Nats) -> None:
    ingest = await start_ingest(nats, "a")
    before = await stored(nats, await feed_ticks(ingest, 3))
    gateway = await start_gateway(nats)
    async with running(gateway), feed.client.connect(gateway.ws_url) as python_client:
        raw = await Watcher.connect(gateway.ws_url, SYMBOLS)
        await python_client.subscribe(SYMBOLS)
        await ingest.proc.stop()
        nc = await nats_py.connect(nats.url)
        await nc.jetstream().purge_stream("FEED")  # the state is truly lost
        await nc.close()
        ingest = await start_ingest(nats, "a")
        async with running(ingest):
            await ingest.proc.wait_for("nothing stored")
            await stored(nats, await feed_ticks(ingest, 1))
            # Clients still connected see seq start again, and the epoch says why.
            await raw.until(lambda c: c.has_seqs(dict.fromkeys(SYMBOLS, 2)), what="seq 2")
            for name, snap in raw.latest.items():
                assert before[name]["seq"] == 6 and snap["epoch"] > before[name]["epoch"]

            async def new_epoch() -> None:
                async for _snap in python_client:
                    held = [python_client.latest(name) for name in SYMBOLS]
                    if all(s is not None and s.seq == 2 for s in held):
                        return

            await asyncio.wait_for(new_epoch(), 10)
            assert {python_client.latest(n).epoch for n in SYMBOLS} == {  # type: ignore[union-attr]
                raw.latest["AAPL"]["epoch"]
            }
            # A gateway started now holds only the new lineage.
            late_gateway = await start_gateway(nats)
            async with running(late_gateway):
                late = await Watcher.connect(late_gateway.ws_url, SYMBOLS)
                assert late.first_snapshot == raw.latest
                await late.close()
        await raw.close()


async def test_gateway_workers_share_the_port_and_serve_the_same_data(nats: Nats) -> None:
    ingest = await start_ingest(nats)
    seqs = await feed_ticks(ingest, 4)
    await stored(nats, seqs)
    supervisor = await spawn(
        "gateway --workers 2",
        sys.executable,
        "-m",
        "feed",
        "gateway",
        "--workers",
        "2",
        "--port",
        "0",
        "--set",
        f"bus.url={nats.url}",
    )
    match = await supervisor.wait_for(r"2 gateway workers sharing ws://(\S+)/ws")
    await supervisor.wait_for(r"listening on ws://", count=2)  # both workers hold the snapshots
    gateway = Role(supervisor, "http://" + match.group(1))
    async with running(gateway, ingest):
        clients = [await Watcher.connect(gateway.ws_url, SYMBOLS) for _ in range(24)]
        for client in clients:
            await client.until(lambda c: c.has_seqs(seqs), what="the ticks")
        assert all(client.latest == clients[0].latest for client in clients)
        # Each HTTP request is a new connection, which the kernel gives to either worker.
        per_worker: dict[int, int] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(400):
                async with s.get(gateway.base + "/stats") as response:
                    stats: dict[str, Any] = await response.json()
                per_worker[stats["pid"]] = stats["hub"]["connections"]
                if len(per_worker) == 2:
                    break
        assert len(per_worker) == 2, per_worker
        assert sum(per_worker.values()) == 24 and all(per_worker.values()), per_worker
        seqs = plus(seqs, await feed_ticks(ingest, 3, start=500.0))
        for client in clients:
            await client.until(lambda c: c.has_seqs(seqs), what="more ticks on both workers")
        for client in clients:
            await client.close()
    assert Counter("stopped" in line for line in supervisor.lines)[True] == 2


async def test_a_held_gateway_follows_only_the_symbols_its_clients_hold(nats: Nats) -> None:
    ingest = await start_ingest(nats)
    seqs = await feed_ticks(ingest, 2)
    await stored(nats, seqs)
    gateway = await start_gateway(nats, "--set", "bus.subscribe=held")
    async with running(gateway, ingest):
        a = await Watcher.connect(gateway.ws_url, ["AAPL", "MSFT"])
        await a.until(lambda c: c.has_seqs({"AAPL": 4, "MSFT": 4}), what="the stored state")
        newest = plus(seqs, await feed_ticks(ingest, 3, start=600.0))
        await a.until(lambda c: c.has_seqs({"AAPL": 10, "MSFT": 10}), what="live updates")
        await stored(nats, newest)
        # Nobody holds BTC USD: this gateway did not follow it...
        (unheld,) = await gateway.get("/snapshot?symbols=BTC%20USD")
        assert unheld["seq"] == 4
        # ...until a client subscribes: the newest is fetched for it at once, no tick needed.
        b = await Watcher.connect(gateway.ws_url, ["BTC USD"])
        await b.until(lambda c: c.has_seqs({"BTC USD": 10}), what="the newest, fetched")
        stats = await gateway.get("/stats")
        assert stats["bus"]["subscribe"] == "held" and stats["bus"]["fetched"] >= 1
        assert stats["bus"]["symbol_subscriptions"] == 3
        await a.close()
        await b.close()


async def test_a_gateway_that_falls_behind_nats_reads_again_and_ends_right(nats: Nats) -> None:
    names = [f"S{i:03d}" for i in range(500)]
    ingest = await start_ingest(nats)
    await ingest.proc.write(b"\n".join(trade(name, 10.0) for name in names) + b"\n")
    await stored(nats, dict.fromkeys(names, 1))
    # A subscription that may buffer 2 messages: any burst overflows it (nats-py drops, and
    # tells the gateway, which reads the newest of every symbol again).
    gateway = await start_gateway(nats, "--set", "bus.pending_messages=2")
    async with running(gateway, ingest):
        watched = [*names[:100], names[-1]]  # and the last written, read back below
        client = await Watcher.connect(gateway.ws_url, watched)
        rounds = 20
        lines = [trade(name, 10.0 + n) for n in range(rounds) for name in names]
        await ingest.proc.write(b"\n".join(lines) + b"\n")
        want = dict.fromkeys(watched, rounds + 1)
        await client.until(lambda c: c.has_seqs(want), timeout=30, what="the newest after drops")
        stats = await gateway.get("/stats")
        assert stats["bus"]["slow_consumer"] >= 1 and stats["bus"]["reads"] >= 2
        for versions in client.versions.values():
            assert versions == sorted(versions)
        (last,) = await gateway.get("/snapshot?symbols=S499")
        assert last["seq"] == rounds + 1 and last["last"] == 10.0 + rounds - 1
        await client.close()


async def test_two_ingest_nodes_split_the_symbols_and_a_dead_one_stales_only_its_own(
    nats: Nats,
) -> None:
    a = await start_ingest(nats, "a")
    b = await start_ingest(nats, "b")
    await a.proc.write(trade("AAPL", 1.0) + b"\n" + trade("MSFT", 2.0) + b"\n")
    await b.proc.write(trade("BTC USD", 3.0) + b"\n" + trade("FX.EUR/USD", 4.0) + b"\n")
    await stored(nats, dict.fromkeys(["AAPL", "MSFT", "BTC USD", "FX.EUR/USD"], 1))
    gateway = await start_gateway(nats)
    async with running(gateway, a):
        client = await Watcher.connect(gateway.ws_url, ["AAPL", "MSFT", "BTC USD", "FX.EUR/USD"])
        nodes = (await gateway.get("/stats"))["bus"]["nodes"]
        assert nodes["a"]["symbols"] == 2 and nodes["b"]["symbols"] == 2
        await b.proc.stop()
        await client.until(lambda c: c.status_seen("stale", "ingest node b"), what="b stale")
        (status,) = [s for s in client.statuses if s["state"] == "stale"]
        assert sorted(status["symbols"]) == ["BTC USD", "FX.EUR/USD"]
        await a.proc.write(trade("AAPL", 1.5) + b"\n")
        await client.until(lambda c: c.has_seqs({"AAPL": 2}), what="a's symbols still live")
        assert [s for s in client.statuses if s["state"] == "stale"] == [status]
        # Node a takes BTC USD over: a new lineage (a newer epoch), live again at once.
        seen = len(client.statuses)
        old_epoch = client.latest["BTC USD"]["epoch"]
        await a.proc.write(trade("BTC USD", 9.0) + b"\n")
        await client.until(
            lambda c: c.latest["BTC USD"]["last"] == 9.0 and c.status_seen("live", since=seen),
            what="BTC USD taken over by a",
        )
        taken = client.latest["BTC USD"]
        assert taken["seq"] == 1 and taken["epoch"] > old_epoch
        stats = (await gateway.get("/stats"))["bus"]
        assert stats["nodes"]["a"]["symbols"] == 3 and stats["owner_conflicts"] == 0
        await client.close()


@pytest.mark.parametrize(
    ("server_options", "good", "bad"),
    [
        (
            ("--user", "feed", "--pass", "s3cret"),
            ("user=feed", "password=s3cret"),
            ("user=feed", "password=nope"),
        ),
        (("--auth", "t0ken"), ("token=t0ken",), ("token=nope",)),
    ],
    ids=["user-password", "token"],
)
async def test_the_roles_log_in_with_the_configured_credentials(
    tmp_path: Path, server_options: tuple[str, ...], good: tuple[str, ...], bad: tuple[str, ...]
) -> None:
    need_nats()
    server = Nats(tmp_path / "jetstream", *server_options)
    await server.start()
    try:
        creds = [arg for key in good for arg in ("--set", f"bus.{key}")]
        ingest = await start_ingest(server, "a", *creds)
        seqs = await feed_ticks(ingest, 1)
        gateway = await start_gateway(server, *creds)
        async with running(gateway, ingest):
            client = await Watcher.connect(gateway.ws_url, SYMBOLS)
            await client.until(lambda c: c.has_seqs(seqs), what="the ticks")
            await client.close()
            # Wrong credentials never get in: the gateway says so, and keeps trying.
            wrong = await spawn(
                "gateway, wrong credentials",
                sys.executable,
                "-m",
                "feed",
                "gateway",
                "--port",
                "0",
                "--set",
                f"bus.url={server.url}",
                *[arg for key in bad for arg in ("--set", f"bus.{key}")],
            )
            await wrong.wait_for(r"NATS at .*[Aa]uthorization")
            assert not any("listening on" in line for line in wrong.lines)
            await wrong.stop()
    finally:
        await server.stop()
