"""Where ticks come from: one family of sources behind `feed.sources.base.Source`, chosen by
kind name in the config (`source.kinds`), each kind with its own config section.

Importing this package registers the built-in kinds; `registry.create_all(config)` builds what a
config asks for.
"""

from feed.sources import binance as _binance  # noqa: F401  (registers its kind)
from feed.sources import coinbase as _coinbase  # noqa: F401  (registers its kind)
from feed.sources import ingest as _ingest  # noqa: F401  (registers its kind)
from feed.sources import registry
from feed.sources import replay as _replay  # noqa: F401  (registers its kind)
from feed.sources import simulator as _simulator  # noqa: F401  (registers its kind)
from feed.sources import stdin as _stdin  # noqa: F401  (registers its kind)
from feed.sources.base import BaseSource, Ingest, Source, SourceState, SymbolRejected

__all__ = ["BaseSource", "Ingest", "Source", "SourceState", "SymbolRejected", "registry"]
