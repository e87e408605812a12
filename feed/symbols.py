"""The symbol table: names to the dense indices that ticks and the coalescer use."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


class SymbolTable(Sequence[str]):
    """An append-only mapping between symbol names and indices 0..n-1.

    Append-only so that an index handed out once (to a tick, a subscription, a cached payload)
    names the same symbol forever; new symbols can join while the feed runs.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self.extend(names)

    def add(self, name: str) -> int:
        """The index of `name`, adding it if new."""
        index = self._index.get(name)
        if index is None:
            index = len(self._names)
            self._names.append(name)
            self._index[name] = index
        return index

    def extend(self, names: Iterable[str]) -> None:
        for name in names:
            self.add(name)

    def get(self, name: str) -> int | None:
        return self._index.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self._names[index]

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    @property
    def lookup(self) -> dict[str, int]:
        """Name to index; read-only by convention."""
        return self._index
