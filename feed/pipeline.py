"""The producer pipeline: a source's batches folded into the market and fanned out.

One task, one batch at a time: fold (vectorized), encode each changed snapshot once, publish.
When fan-out runs late, the source's next batch simply carries more ticks (the simulator catches
up in one batch), so the market keeps its pace and the coalescer absorbs the difference.
"""

from __future__ import annotations

import asyncio
import logging

from feed.hub import Hub
from feed.market import Market
from feed.source import Source

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, source: Source, market: Market, hub: Hub) -> None:
        self.source = source
        self.market = market
        self.hub = hub
        self.rejected_batches = 0
        self.state = "starting"
        """starting, running, ended (the source is exhausted) or failed."""
        self._sync_symbols()

    def _sync_symbols(self) -> None:
        """Take in symbols the source added since the last batch (its list only grows)."""
        known = len(self.market.symbols)
        names = self.source.symbols
        if len(names) > known:
            self.market.symbols.extend(names[known:])

    async def run(self) -> None:
        self.state = "running"
        try:
            async for batch in self.source.stream():
                self._sync_symbols()
                try:
                    syms = self.market.apply(batch)
                except ValueError:
                    self.rejected_batches += 1
                    log.exception("rejected a batch of %d ticks from the source", len(batch))
                    continue
                if syms:
                    self.hub.publish(syms)
        except asyncio.CancelledError:
            self.state = "ended"
            raise
        except Exception:
            self.state = "failed"
            log.exception("the pipeline failed; serving the last state")
            return
        self.state = "ended"
        log.info("source ended after %d ticks; serving the last state", self.market.ticks)
