"""Who may see what (feed/auth.py): tokens as hashes, entitlements per symbol, Origins, and the
refusal to serve open on a non-loopback address; over real sockets and a real `feed serve`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import feed.client
from feed import config
from feed.config import ConfigError, load
from feed.server import create_app
from tests.conftest import StartFeed, recv

ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB = "alice-s3cret", "bob-t0ken"
SYMBOLS = ["AAPL", "MSFT", "FX.EURUSD", "FX.GBPUSD"]


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


AUTH = {
    "required": True,
    "origins": ["https://desk.example"],
    "tokens": [
        {"sha256": sha(ALICE), "read": ["AAPL", "FX.*"]},
        {"sha256": sha(BOB)},  # reads everything
    ],
}


async def test_no_or_a_bad_token_is_401_at_the_upgrade_and_on_every_data_route(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed(SYMBOLS, auth=AUTH)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ALICE}"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await feed.ws(headers=headers)
        assert refused.value.status == 401
        for path in ("/symbols", "/snapshot?symbols=AAPL", "/stats", "/metrics"):
            async with feed.client.get(path, headers=headers) as response:
                assert response.status == 401, path
                assert (await response.json())["error"] == "unauthorized"
                assert response.headers["WWW-Authenticate"] == "Bearer"
    async with feed.client.get("/healthz") as response:
        assert response.status == 200  # for load balancers, no token


async def test_a_token_reads_only_its_entitlements_and_the_connection_lives_on(
    start_feed: StartFeed,
) -> None:
    feed = await start_feed(SYMBOLS, auth=AUTH)
    ws = await feed.ws(headers={"Authorization": f"Bearer {ALICE}"})
    await ws.send_json({"op": "subscribe", "id": 1, "symbols": ["AAPL", "MSFT"]})
    error = await recv(ws)
    assert error == {
        "type": "error",
        "id": 1,
        "code": "not_entitled",
        "message": "not entitled to read: MSFT",
    }
    # A pattern holds what it matches within the entitlements only.
    await ws.send_json({"op": "subscribe", "id": 2, "symbols": ["*"]})
    answer = await recv(ws)
    assert answer["matched"] == ["AAPL", "FX.EURUSD", "FX.GBPUSD"]
    await recv(ws)  # the snapshot
    feed.trade("MSFT", 1.0)
    feed.trade("AAPL", 2.0)
    update = await recv(ws)
    assert [s["symbol"] for s in update["data"]] == ["AAPL"]
    async with feed.client.get("/symbols", params={"token": ALICE}) as response:
        assert await response.json() == ["AAPL", "FX.EURUSD", "FX.GBPUSD"]
    async with feed.client.get("/snapshot?symbols=MSFT", params={"token": ALICE}) as response:
        assert response.status == 403 and (await response.json())["error"] == "not_entitled"
    # One token's rights never reach another connection: bob reads MSFT on his own.
    other = await feed.ws(params={"token": BOB})
    await other.send_json({"op": "subscribe", "id": 3, "symbols": ["MSFT"]})
    assert (await recv(other))["type"] == "subscribed"


async def test_a_browser_from_an_origin_not_allowed_is_refused(start_feed: StartFeed) -> None:
    feed = await start_feed(SYMBOLS, auth=AUTH)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await feed.ws(headers={"Origin": "https://evil.example"}, params={"token": BOB})
    assert refused.value.status == 403
    ok = await feed.ws(headers={"Origin": "https://desk.example"}, params={"token": BOB})
    await ok.close()


async def test_the_python_client_takes_a_token(start_feed: StartFeed) -> None:
    served = await start_feed(SYMBOLS, auth=AUTH)
    url = f"ws://{served.server.host}:{served.server.port}/ws"
    async with feed.client.connect(url, token=ALICE) as client:
        await client.subscribe(["FX.EURUSD"])
        served.trade("FX.EURUSD", 1.1)
        async for snap in client:
            if snap.seq == 1:
                break
        assert client.latest("FX.EURUSD") is not None


def test_bad_token_tables_stop_start_up_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'auth.tokens\[0\].sha256' must be the hex SHA-256"):
        load(None, {"auth": {"tokens": [{"sha256": "abc"}]}})
    with pytest.raises(ConfigError, match=r"unknown config key 'auth.tokens\[0\].publsh'"):
        load(None, {"auth": {"tokens": [{"sha256": sha("x"), "publsh": []}]}})


def test_open_on_a_public_address_is_refused_unless_asked_for() -> None:
    command = [sys.executable, "-m", "feed", "serve", "--host", "0.0.0.0", "--port", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "refusing to serve on '0.0.0.0' without auth" in result.stderr
    assert "auth.allow_open" in result.stderr and "Traceback" not in result.stderr
    required = subprocess.run(
        [*command, "--set", "auth.required=true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert required.returncode == 2 and "no token is configured" in required.stderr


async def test_a_token_publishes_on_ingest_only_the_symbols_it_may(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    """[[auth.tokens]] with `publish` patterns open /ingest on their own (no ingest.tokens); a
    tick for a symbol outside them is rejected naming why, the others are folded."""
    carol = "carol-pr0ducer"
    tables = [{"sha256": sha(carol), "read": ["*"], "publish": ["FX.*"]}]
    settings = config.build({"auth": {"tokens": tables}, "simulator": {"symbols": 3, "rate": 10.0}})
    client = await aiohttp_client(create_app(settings))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ingest", params={"token": "nope"})
    assert refused.value.status == 401
    ws = await client.ws_connect("/ingest", headers={"Authorization": f"Bearer {carol}"})
    ticks = [
        {"type": "trade", "symbol": "FX.USDJPY", "price": 150.1, "size": 1},
        {"type": "trade", "symbol": "TSLA", "price": 250.0, "size": 1},
    ]
    await ws.send_json({"type": "ticks", "id": 1, "ticks": ticks})
    answer = await ws.receive_json(timeout=5)
    assert answer["accepted"] == 1 and answer["rejected_count"] == 1
    (reject,) = answer["rejected"]
    assert reject["field"] == "symbol" and "may not publish 'TSLA'" in reject["reason"]
    async with client.get("/symbols") as response:
        names = await response.json()
    assert "FX.USDJPY" in names and "TSLA" not in names
    await ws.close()
