"""`GET /metrics` (Prometheus text format) on real servers, and JSON logs from a real `feed serve`.

The page is parsed with prometheus_client's own parser; each value checked is one an operator
would watch, moved by what a client or a source really did.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feed.logs import JsonFormatter
from feed.server import PIPELINE
from tests.conftest import Feed, StartFeed, recv, recv_until, subscribe
from tests.scaleout import (
    Nats,
    Tap,
    Watcher,
    spawn,
    start_gateway,
    start_ingest,
    trade,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of the page by (name, labels); fails if the page is not the text format."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(feed: Feed) -> Samples:
    async with feed.client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return parse(await response.text())


async def scrape_url(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        return parse(await response.text())


async def until_connections(feed: Feed, count: int, timeout: float = 5.0) -> Samples:
    """Scrape until the connections gauge reads `count` (the server notices a close a moment
    after the client's close handshake); each try is a real request."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(feed)
        if value(samples, "feed_connections") == count:
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"feed_connections stayed {value(samples, 'feed_connections')}")


async def test_the_page_counts_what_clients_and_sources_do(start_feed: StartFeed) -> None:
    feed = await start_feed()
    before = await scrape(feed)
    (source,) = {dict(labels)["source"] for name, labels in before if name == "feed_ticks_total"}
    assert value(before, "feed_role", role="serve") == 1
    assert value(before, "feed_symbols") == 4
    assert value(before, "feed_connections") == 0
    assert value(before, "feed_subscriptions") == 0
    assert value(before, "feed_tick_to_send_seconds_count") == 0
    assert value(before, "feed_errors_total", code="bad_json") == 0

    ws = await feed.ws()
    await subscribe(ws, ["AAPL", "MSFT"])
    other = await feed.ws()
    await subscribe(other, ["AAPL"])
    subscribed = await scrape(feed)
    assert value(subscribed, "feed_connections") == 2
    assert value(subscribed, "feed_connections_accepted_total") == 2
    assert value(subscribed, "feed_subscriptions") == 3
    assert value(subscribed, "feed_subscribed_symbols") == 2

    feed.trade("AAPL", 101.5)
    await recv_until(ws, lambda frame: frame["type"] == "update")
    ticked = await scrape(feed)
    assert value(ticked, "feed_ticks_total", source=source) == 1
    assert value(ticked, "feed_market_ticks_total") == 1
    assert value(ticked, "feed_snapshots_total") == 1
    assert value(ticked, "feed_tick_to_send_seconds_count") == 1  # one batch, one observation
    assert value(ticked, "feed_tick_to_send_seconds_bucket", le="+Inf") == 1
    assert 0 <= value(ticked, "feed_tick_to_send_seconds_sum") < 60
    sent = value(ticked, "feed_frames_sent_total")
    assert sent > value(subscribed, "feed_frames_sent_total")
    assert value(ticked, "feed_bytes_sent_total") > value(subscribed, "feed_bytes_sent_total")

    await ws.send_str("{not json")
    assert (await recv(ws))["code"] == "bad_json"
    await ws.send_json({"op": "subscribe", "symbols": ["NOPE"], "id": 2})
    assert (await recv(ws))["code"] == "unknown_symbol"
    await ws.send_bytes(b"\x00")
    assert (await recv(ws))["code"] == "binary_not_supported"
    errors = await scrape(feed)
    assert value(errors, "feed_errors_total", code="bad_json") == 1
    assert value(errors, "feed_errors_total", code="unknown_symbol") == 1
    assert value(errors, "feed_errors_total", code="binary_not_supported") == 1
    assert value(errors, "feed_errors_total", code="unknown_op") == 0
    assert value(errors, "feed_connections") == 2  # an error frame leaves the connection open

    await other.close()
    one = await until_connections(feed, 1)
    assert value(one, "feed_subscriptions") == 2
    await ws.close()
    none = await until_connections(feed, 0)
    assert value(none, "feed_subscriptions") == 0
    assert value(none, "feed_connections_accepted_total") == 2
    # The page renders itself, and says how long the one before took.
    assert value(none, "feed_metrics_render_seconds") > 0


async def test_rate_limited_and_full_count(start_feed: StartFeed) -> None:
    feed = await start_feed(limits={"max_connections": 1, "control_rate": 1, "control_burst": 1})
    ws = await feed.ws()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await feed.ws()
    await ws.send_json({"op": "ping", "id": 1})
    await ws.send_json({"op": "ping", "id": 2})  # over the burst: closed with 1008
    message = await ws.receive(timeout=5)
    while message.type is aiohttp.WSMsgType.TEXT:
        message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    samples = await until_connections(feed, 0)
    assert value(samples, "feed_rejected_full_total") == 1
    assert value(samples, "feed_connections_closed_total", reason="rate_limited") == 1
    assert value(samples, "feed_connections_closed_total", reason="slow_consumer") == 0


async def test_metrics_can_be_turned_off(start_feed: StartFeed) -> None:
    feed = await start_feed(metrics={"enabled": False})
    async with feed.client.get("/metrics") as response:
        assert response.status == 404
    assert feed.app[PIPELINE].observers == []  # nothing at all per batch


# -- the bus roles ------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_ingest_and_gateway_show_the_bus(nats: Nats) -> None:
    ingest = await start_ingest(nats)
    gateway = None
    try:
        # The ingest node has nothing yet: its bus is connected, nothing published.
        first = await scrape_url(ingest.base)
        assert value(first, "feed_role", role="ingest") == 1
        assert value(first, "feed_bus_state", state="connected") == 1
        assert value(first, "feed_bus_state", state="disconnected") == 0
        assert value(first, "feed_bus_reconnects_total") == 0
        assert value(first, "feed_bus_published_total") == 0
        assert ("feed_connections", ()) not in first  # no hub in ingest

        await ingest.proc.write(trade("AAPL", 100.0) + b"\n" + trade("MSFT", 200.0) + b"\n")
        tap = await Tap.open(nats)
        try:
            await tap.until_seqs({"AAPL": 1, "MSFT": 1})  # stored: a gateway reads them first
        finally:
            await tap.close()
        gateway = await start_gateway(nats)
        watcher = await Watcher.connect(gateway.ws_url, ["AAPL", "MSFT"])
        await ingest.proc.write(trade("AAPL", 100.5) + b"\n")
        await watcher.until(lambda w: w.has_seqs({"AAPL": 2}), what="AAPL seq 2 at the gateway")

        fed = await scrape_url(ingest.base)
        assert value(fed, "feed_ticks_total", source="stdin") == 3
        assert value(fed, "feed_bus_published_total") >= 3
        assert value(fed, "feed_tick_to_send_seconds_count") >= 2
        assert value(fed, "feed_snapshots_total") == 3
        assert value(fed, "feed_stale_symbols") == 0

        served = await scrape_url(gateway.base)
        assert value(served, "feed_role", role="gateway") == 1
        assert value(served, "feed_bus_state", state="live") == 1
        assert value(served, "feed_bus_state", state="reading") == 0
        assert value(served, "feed_bus_received_total") >= 1  # live after the read: AAPL seq 2
        assert value(served, "feed_bus_slow_consumer_total") == 0
        assert value(served, "feed_bus_nodes") == 1
        assert value(served, "feed_snapshots_total") >= 1
        assert value(served, "feed_symbols") == 2
        assert value(served, "feed_connections") == 1
        assert value(served, "feed_subscriptions") == 2
        await watcher.close()
    finally:
        if gateway is not None:
            await gateway.proc.stop()
        await ingest.proc.stop()


# -- JSON logs ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_feed_serve_logs_json_lines() -> None:
    proc = await spawn(
        "feed serve",
        sys.executable,
        "-m",
        "feed",
        "serve",
        "--port",
        "0",
        "--symbols",
        "5",
        "--set",
        "log.format=json",
    )
    try:
        await proc.wait_for(r'"message":"listening on ws://')
    finally:
        assert await proc.stop() == 0
    await proc.wait_for(r'"message":"stopped"')
    assert len(proc.lines) >= 3
    for line in proc.lines:
        entry = orjson.loads(line)
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["ts"].endswith("Z")
        stamp = datetime.datetime.fromisoformat(entry["ts"])
        assert stamp.utcoffset() == datetime.timedelta(0)
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    loggers = {orjson.loads(line)["logger"] for line in proc.lines}
    assert "feed" in loggers


def test_json_lines_carry_the_exception() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("a bad tick")
    except ValueError:
        record = logging.getLogger("feed.test").makeRecord(
            "feed.test", logging.ERROR, __file__, 1, "failed on %s", ("AAPL",), sys.exc_info()
        )
    entry = orjson.loads(formatter.format(record))
    assert entry["message"] == "failed on AAPL"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "feed.test"
    assert "ValueError: a bad tick" in entry["exc_info"]
    assert "Traceback" in entry["exc_info"]
    assert "\n" not in formatter.format(record)  # one line, whatever the traceback


async def test_text_is_the_default() -> None:
    proc = await spawn(
        "feed serve", sys.executable, "-m", "feed", "serve", "--port", "0", "--symbols", "5"
    )
    try:
        await proc.wait_for(r"^\d{4}-\d\d-\d\d \S+ INFO feed: listening on ws://")
    finally:
        await proc.stop()
    assert not any(line.startswith("{") for line in proc.lines)


async def test_frames_sent_count_closed_connections_and_a_message_too_big_is_counted(
    start_feed: StartFeed,
) -> None:
    """Counters never go down when a client leaves (Prometheus would read a reset), and the
    1009 close that aiohttp makes for a message over the limit is counted."""
    feed = await start_feed(limits={"max_message_size": 64})
    ws = await feed.ws()
    await ws.send_json({"op": "ping", "id": 1})
    await ws.receive(timeout=5)
    before = value(await scrape(feed), "feed_frames_sent_total")
    await ws.close()
    big = await feed.ws()
    await big.send_str('{"op":"ping","pad":"' + "x" * 100 + '"}')
    closing = await big.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1009
    # Our close reply reaches the server before the scrape's connection does, and the server's
    # handler counts the close in the turn that reply wakes it: the scrape comes after.
    await big.close()
    samples = await scrape(feed)
    assert value(samples, "feed_frames_sent_total") >= before >= 1  # closed ones still count
    assert value(samples, "feed_connections_closed_total", reason="too_big") == 1


async def test_the_configured_limits_are_on_the_page(start_feed: StartFeed) -> None:
    feed = await start_feed(limits={"max_connections": 123})
    samples = await scrape(feed)
    assert value(samples, "feed_limit", key="max_connections") == 123
    assert value(samples, "feed_limit", key="slow_consumer_timeout") == 10.0
