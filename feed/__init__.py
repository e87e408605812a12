"""feed: a live market-data feed. Ticks in, conflated per-symbol snapshots out over WebSockets."""

__version__ = "0.1.0"
