"""The HTTP side: symbols, snapshots in the same shape as the WebSocket, health and stats."""

from __future__ import annotations

from feed.coalescer import SNAPSHOT_FIELDS
from tests.conftest import SYMBOLS, StartFeed, recv, subscribe


async def test_symbols(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with feed.client.get("/symbols") as response:
        assert response.status == 200
        assert await response.json() == SYMBOLS


async def test_snapshot_has_the_websocket_shape(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, ["MSFT"])
    feed.trade("MSFT", 401.5, 20)
    update = await recv(ws)
    async with feed.client.get("/snapshot?symbols=MSFT,AAPL") as response:
        assert response.status == 200
        body = await response.json()
    assert [s["symbol"] for s in body] == ["MSFT", "AAPL"]
    assert body[0] == update["data"][0]
    assert all(list(s) == list(SNAPSHOT_FIELDS) for s in body)


async def test_snapshot_errors(start_feed: StartFeed) -> None:
    feed = await start_feed()
    async with feed.client.get("/snapshot") as response:
        assert response.status == 400
        assert (await response.json())["error"] == "bad_symbols"
    async with feed.client.get("/snapshot?symbols=AAPL,NOPE") as response:
        assert response.status == 404
        body = await response.json()
        assert body["error"] == "unknown_symbol" and "NOPE" in body["message"]


async def test_healthz_and_stats(start_feed: StartFeed) -> None:
    feed = await start_feed()
    ws = await feed.ws()
    await subscribe(ws, ["AAPL"])
    feed.trade("AAPL", 1.0)
    await recv(ws)
    async with feed.client.get("/healthz") as response:
        assert response.status == 200
        health = await response.json()
    (source,) = health.pop("sources")
    assert health == {
        "status": "ok",
        "role": "serve",
        "pipeline": "running",
        "symbols": len(SYMBOLS),
        "stale_symbols": 0,
        "connections": 1,
        "ticks": 1,
    }
    assert source["kind"] == "push" and source["state"] == "live"
    assert source["ticks_in"] == 1 and source["ticks_rejected"] == 0
    assert source["last_tick_ns"] > 0
    async with feed.client.get("/stats?connections=1") as response:
        stats = await response.json()
    assert stats["market"]["ticks"] == 1
    (conn,) = stats["hub"]["per_connection"]
    assert conn["pending"] == 0 and conn["frames_sent"] == 3  # subscribed, snapshot, update
