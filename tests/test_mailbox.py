"""Conflation: whatever the interleaving of updates and drains, a connection ends at the newest
snapshot of every symbol and is never sent the same snapshot twice."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from feed.mailbox import Mailbox

# An operation is either ("update", symbol) or ("drain", None).
operations = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.integers(0, 5)),
        st.tuples(st.just("drain"), st.none()),
    ),
    max_size=200,
)


@given(operations)
def test_last_sent_is_newest_and_nothing_is_sent_twice(ops: list[tuple[str, int | None]]) -> None:
    """The market holds each symbol's newest version; a drain sends what it holds then."""
    mailbox = Mailbox()
    version: dict[int, int] = {}
    sent: list[tuple[int, int]] = []
    for op, sym in ops:
        if op == "update":
            assert sym is not None
            version[sym] = version.get(sym, 0) + 1
            mailbox.put(sym)
            assert len(mailbox) <= 6  # bounded by the number of symbols
        else:
            sent.extend((s, version[s]) for s in mailbox.take())
    sent.extend((s, version[s]) for s in mailbox.take())  # the client catches up

    assert len(sent) == len(set(sent)), "a snapshot was sent twice"
    last_sent: dict[int, int] = {}
    for sym_, v in sent:
        assert v > last_sent.get(sym_, 0), "an older snapshot followed a newer one"
        last_sent[sym_] = v
    assert last_sent == version
    updates = sum(1 for op, _ in ops if op == "update")
    assert mailbox.delivered + mailbox.conflated == updates
    assert mailbox.delivered == len(sent)


def test_pending_symbols_keep_the_order_they_first_became_pending() -> None:
    mailbox = Mailbox()
    for sym in (3, 1, 3, 2, 1):
        mailbox.put(sym)
    assert mailbox.take() == [3, 1, 2]
    assert (mailbox.conflated, mailbox.delivered) == (2, 3)


def test_discard_forgets_pending() -> None:
    mailbox = Mailbox()
    mailbox.put(1)
    mailbox.put(2)
    mailbox.discard([1, 3])
    assert mailbox.take() == [2]
    assert not mailbox
