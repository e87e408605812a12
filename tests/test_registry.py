from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from feed.registry import SubscriptionRegistry


def test_subscribe_unsubscribe_remove() -> None:
    registry: SubscriptionRegistry[str] = SubscriptionRegistry()
    assert registry.subscribe("a", [1, 2, 2]) == [1, 2]
    assert registry.subscribe("a", [2, 3]) == [3]
    assert registry.subscribe("b", [2]) == [2]
    assert set(registry.subscribers(2)) == {"a", "b"}
    assert registry.unsubscribe("a", [2, 9]) == [2]
    assert list(registry.subscribers(2)) == ["b"]
    assert registry.holds("a", 1) and not registry.holds("a", 2)
    registry.remove("a")
    assert "a" not in registry and list(registry.subscribers(1)) == []
    assert registry.count("b") == 1


ops = st.lists(
    st.tuples(
        st.sampled_from(["sub", "unsub", "remove"]),
        st.sampled_from("abc"),
        st.lists(st.integers(0, 6), max_size=4),
    ),
    max_size=60,
)


@given(ops)
def test_both_directions_agree(operations: list[tuple[str, str, list[int]]]) -> None:
    registry: SubscriptionRegistry[str] = SubscriptionRegistry()
    model: dict[str, set[int]] = {}
    for op, who, syms in operations:
        if op == "sub":
            registry.subscribe(who, syms)
            model.setdefault(who, set()).update(syms)
        elif op == "unsub":
            registry.unsubscribe(who, syms)
            model.get(who, set()).difference_update(syms)
        else:
            registry.remove(who)
            model.pop(who, None)
    for who, syms in model.items():
        assert set(registry.symbols_of(who)) == syms
    for sym in range(7):
        assert set(registry.subscribers(sym)) == {w for w, s in model.items() if sym in s}
