"""`GET /metrics`: the feed's counters in the Prometheus text format, read when scraped.

Nothing here runs on the hot path but one histogram observation per batch (the tick-to-send
latency, through `Pipeline.observers`). Everything else is read at scrape time from what the
parts of the node (`feed.server.Node`) already count: the hub's totals (summed in C over its
connections, as `/stats` does), the registry's sizes, each source's status, the bus's state and
counters, the collector's pauses. Each application has its own `CollectorRegistry` (an embedding
program, or a test, may run several), and a scrape renders synchronously, never awaiting: about
1 ms with 1,000 connections, 6 ms with 10,000 (benchmarks/README.md, "Metrics"). No metric
has a per-symbol label: a market of 100,000 symbols would make a page no one scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from feed.loopwatch import BUCKETS
from feed.protocol import ErrorCode
from feed.sources.base import SourceState

if TYPE_CHECKING:
    from feed.server import Node

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: from 100 µs (a tick through an idle feed) to 10 s (a feed far behind)."""

BUS_STATES = {
    "ingest": ("connecting", "restoring", "connected", "disconnected"),
    "gateway": ("connecting", "reading", "connected", "live", "disconnected"),
}
"""What `BusSink.state` (ingest) and `Follower.state` (gateway) can be."""


class FeedMetrics:
    """The metrics of one node: its registry, the latency histogram and the collector."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.enabled = node.config.metrics.enabled
        self.registry = CollectorRegistry(auto_describe=False)
        self.snapshots = 0
        """Snapshots the pipeline's folds changed (serve, ingest)."""
        self.last_render = 0.0
        """Seconds the previous scrape took to render."""
        self.latency = Histogram(
            "feed_tick_to_send_seconds",
            "From the newest tick of a batch (its ts) to its snapshots handed to the sink: "
            "written to the subscribers' sockets (serve) or queued for NATS (ingest); "
            "one observation per batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._observe = self.latency.observe
        self.registry.register(_Collector(self))
        if self.enabled and node.pipeline is not None:
            node.pipeline.observers.append(self.observe)

    def observe(self, syms: list[int], newest_ns: int) -> None:
        """One batch handed to the sink (a `Pipeline` observer)."""
        self.snapshots += len(syms)
        self._observe(max(0.0, (time.time_ns() - newest_ns) / 1e9))

    def render(self) -> bytes:
        started = time.perf_counter()
        body = generate_latest(self.registry)
        self.last_render = time.perf_counter() - started
        return body


METRICS = web.AppKey("metrics", FeedMetrics)


async def handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    if not metrics.enabled:
        return web.Response(status=404, text="metrics are off (metrics.enabled = false)\n")
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily, rows: Iterable[tuple[list[str], float]]
) -> Metric:
    for labels, value in rows:
        family.add_metric(labels, value)
    return family


class _Collector:
    """Reads the node's counters when scraped (a `prometheus_client` Collector)."""

    def __init__(self, metrics: FeedMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        node = metrics.node
        market = node.market
        yield _labelled(
            GaugeMetricFamily("feed_role", "1 for the role of this process", labels=["role"]),
            [([node.role], 1.0)],
        )
        yield _gauge("feed_symbols", "Symbols the market holds", len(market.symbols))
        yield _counter("feed_market_ticks", "Ticks folded into the market", market.ticks)
        yield _counter(
            "feed_market_batches",
            "Batches folded (serve, ingest) or snapshots taken from the bus (gateway)",
            market.batches,
        )
        if node.pipeline is not None:
            yield from self._pipeline(node)
        if node.follower is not None:
            yield _counter(
                "feed_snapshots",
                "Snapshots changed: by the folds (serve, ingest), taken from the bus (gateway)",
                node.follower.counters["applied"],
            )
        if node.hub is not None:
            yield from self._hub(node)
        for part in (node.publisher, node.follower):
            if part is not None:
                yield from self._bus(node.role, part.stats())
        yield from self._gc(node)
        yield from self._loop(node)
        limits = node.config.limits
        yield _labelled(
            GaugeMetricFamily(
                "feed_limit",
                "The configured limits (limits.*), for alerts relative to them",
                labels=["key"],
            ),
            [
                (["max_connections"], float(limits.max_connections)),
                (["max_symbols"], float(limits.max_symbols)),
                (["max_symbols_per_connection"], float(limits.max_symbols_per_connection)),
                (["slow_consumer_timeout"], limits.slow_consumer_timeout),
                (["control_rate"], limits.control_rate),
            ],
        )
        yield _gauge(
            "feed_metrics_render_seconds",
            "Seconds the previous scrape of /metrics took to render",
            metrics.last_render,
        )

    def _pipeline(self, node: Node) -> Iterator[Metric]:
        pipeline = node.pipeline
        assert pipeline is not None
        statuses = pipeline.source_status()
        yield _labelled(
            CounterMetricFamily("feed_ticks", "Ticks accepted per source", labels=["source"]),
            (([s["name"]], s["ticks_in"]) for s in statuses),
        )
        yield _labelled(
            CounterMetricFamily(
                "feed_ticks_rejected", "Ticks refused per source", labels=["source"]
            ),
            (([s["name"]], s["ticks_rejected"]) for s in statuses),
        )
        yield _labelled(
            GaugeMetricFamily(
                "feed_source_state",
                "1 for the state each source is in, 0 for the others",
                labels=["source", "state"],
            ),
            (
                ([s["name"], state.value], 1.0 if s["state"] == state.value else 0.0)
                for s in statuses
                for state in SourceState
            ),
        )
        yield _counter(
            "feed_rejected_batches", "Batches the market refused", pipeline.rejected_batches
        )
        yield _counter(
            "feed_snapshots",
            "Snapshots changed: by the folds (serve, ingest), taken from the bus (gateway)",
            self.metrics.snapshots,
        )
        if node.hub is None:
            stale = len(pipeline.stale_symbols)
            yield _gauge("feed_stale_symbols", "Symbols whose source is quiet or away", stale)

    def _hub(self, node: Node) -> Iterator[Metric]:
        hub = node.hub
        assert hub is not None
        stats = hub.stats()  # totals summed in C, not a loop over connections here
        counters = hub.counters
        held, subscriptions = hub.registry.sizes()
        yield _gauge("feed_connections", "Open WebSocket connections", stats["connections"])
        yield _gauge(
            "feed_connections_stalled",
            "Connections whose socket was full at the last try (updates wait, conflated)",
            stats["stalled"],
        )
        yield _counter(
            "feed_connections_accepted", "WebSocket connections accepted", stats["accepted"]
        )
        yield _gauge(
            "feed_subscriptions", "Symbol subscriptions, over every connection", subscriptions
        )
        yield _gauge("feed_subscribed_symbols", "Symbols with at least one subscriber", held)
        yield _counter(
            "feed_frames_sent",
            "WebSocket frames sent, to every connection since start (closed ones included)",
            stats["frames_sent_total"],
        )
        yield _counter(
            "feed_bytes_sent",
            "Bytes sent, to every connection since start (closed ones included)",
            stats["bytes_sent_total"],
        )
        yield _counter(
            "feed_updates_conflated",
            "Updates replaced by a newer one before they were sent (slow consumers)",
            stats["conflated"],
        )
        yield _labelled(
            CounterMetricFamily(
                "feed_connections_closed",
                "Connections the server closed, by why",
                labels=["reason"],
            ),
            (
                (["slow_consumer"], counters["closed_slow"]),
                (["rate_limited"], counters["closed_rate_limited"]),
                (["too_big"], counters["closed_too_big"]),
            ),
        )
        yield _counter(
            "feed_rejected_full",
            "WebSocket upgrades refused with 503: at limits.max_connections",
            counters["rejected_full"],
        )
        yield _labelled(
            CounterMetricFamily(
                "feed_errors", "Error frames sent to clients, by code", labels=["code"]
            ),
            (([code.value], counters.get(f"error_{code}", 0)) for code in ErrorCode),
        )
        yield _gauge("feed_stale_symbols", "Symbols whose source is quiet or away", len(hub.stale))

    def _bus(self, role: str, stats: dict[str, Any]) -> Iterator[Metric]:
        state = stats["state"]
        states = BUS_STATES.get(role, ())
        if state not in states:
            states = (*states, state)
        yield _labelled(
            GaugeMetricFamily(
                "feed_bus_state",
                "1 for the state of the NATS connection, 0 for the others",
                labels=["state"],
            ),
            (([name], 1.0 if name == state else 0.0) for name in states),
        )
        for key, documentation in _BUS_COUNTERS.items():
            if key in stats:
                yield _counter(f"feed_bus_{key}", documentation, stats[key])
        if "pending" in stats:
            yield _gauge(
                "feed_bus_pending", "Symbols waiting to be published on NATS", stats["pending"]
            )
        if "nodes" in stats:
            yield _gauge("feed_bus_nodes", "Ingest nodes heard on the bus", len(stats["nodes"]))

    def _gc(self, node: Node) -> Iterator[Metric]:
        watch = node.gc
        generations = [str(n) for n in range(len(watch.collections))]
        yield _labelled(
            CounterMetricFamily(
                "feed_gc_collections", "Cyclic collections, by generation", labels=["generation"]
            ),
            zip(([g] for g in generations), watch.collections, strict=True),
        )
        yield _labelled(
            CounterMetricFamily(
                "feed_gc_pause_seconds",
                "Seconds the cyclic collector held the process, by generation",
                labels=["generation"],
            ),
            zip(([g] for g in generations), watch.seconds, strict=True),
        )
        yield _labelled(
            GaugeMetricFamily(
                "feed_gc_longest_pause_seconds",
                "The longest pause of each generation so far",
                labels=["generation"],
            ),
            zip(([g] for g in generations), watch.longest, strict=True),
        )

    def _loop(self, node: Node) -> Iterator[Metric]:
        watch = node.loop
        family = HistogramMetricFamily(
            "feed_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 20 ms: how long it was held",
        )
        cumulative, buckets = 0, []
        for bound, count in zip([*BUCKETS, float("inf")], watch.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([], buckets, watch.total)
        yield family
        yield _gauge(
            "feed_event_loop_lag_longest_seconds",
            "The longest the event loop was held so far",
            watch.longest,
        )


_BUS_COUNTERS = {
    "published": "Snapshots published on NATS (ingest)",
    "heartbeats": "Heartbeats published (ingest)",
    "received": "Snapshots received from NATS (gateway)",
    "applied": "Snapshots from NATS newer than the one held, taken (gateway)",
    "older": "Snapshots from NATS no newer than the one held, dropped (gateway)",
    "slow_consumer": "Times NATS dropped messages for this slow consumer (gateway, re-read)",
    "reads": "Reads of the newest snapshots (gateway: start-up, reconnection, slow consumer)",
    "read_failures": "Reads of the newest snapshots that failed and were retried (gateway)",
    "owner_conflicts": "Symbols seen published by two live ingest nodes (gateway)",
    "disconnects": "NATS disconnections",
    "reconnects": "NATS reconnections",
}
