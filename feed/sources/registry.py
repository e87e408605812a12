"""The registry of source kinds: a kind's name to its config section and its factory.

A kind registers itself when its module is imported (`feed.sources` imports the built-in ones);
the config validates its section (`[replay]`, `[binance]`, ...) with the key named, and the
server builds the sources the config lists from here. Adding a kind edits neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feed.config import Config
    from feed.sources.base import Source


@dataclass(frozen=True)
class SourceKind:
    name: str
    """The kind's name: in `source.kinds`, and the name of its config section."""
    settings: type[Any]
    """The frozen dataclass of its config section; every field has a default."""
    create: Callable[[Any, Config], Source]
    """Builds the source from its section (and the whole config, for shared limits). Raises
    `feed.config.ConfigError` naming the key for a value that is only wrong in context."""
    enabled: Callable[[Any, Any], bool] | None = None
    """Runs without being listed in `source.kinds` when this says so (the producer endpoint,
    whenever a token is set)."""


KINDS: dict[str, SourceKind] = {}


def register(kind: SourceKind) -> SourceKind:
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(f"source kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def names() -> str:
    return ", ".join(KINDS)


def _load_builtins() -> None:
    import feed.sources  # noqa: F401  (its import registers the built-in kinds)


def create_all(config: Config) -> list[Source]:
    """The sources the config asks for: those listed in `source.kinds`, in that order, then
    those that enable themselves."""
    _load_builtins()
    sources = [KINDS[name].create(config.section(name), config) for name in config.source.kinds]
    for name, kind in KINDS.items():
        if (
            name not in config.source.kinds
            and kind.enabled
            and kind.enabled(config.section(name), config)
        ):
            sources.append(kind.create(config.section(name), config))
    return sources
