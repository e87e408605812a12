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
    mailbox = Mailbox()
    version: dict[int, int] = {}
    sent: list[bytes] = []
    for op, sym in ops:
        if op == "update":
            assert sym is not None
            version[sym] = version.get(sym, 0) + 1
            mailbox.put(sym, f"{sym}:{version[sym]}".encode())
            assert len(mailbox) <= 6  # bounded by the number of symbols
        else:
            sent.extend(mailbox.take())
    sent.extend(mailbox.take())  # the client catches up

    assert len(sent) == len(set(sent)), "a snapshot was sent twice"
    last_sent: dict[int, int] = {}
    for payload in sent:
        sym_text, version_text = payload.decode().split(":")
        sym_, v = int(sym_text), int(version_text)
        assert v > last_sent.get(sym_, 0), "an older snapshot followed a newer one"
        last_sent[sym_] = v
    assert last_sent == version
    updates = sum(1 for op, _ in ops if op == "update")
    assert mailbox.delivered + mailbox.conflated == updates
    assert mailbox.delivered == len(sent)


def test_discard_forgets_pending() -> None:
    mailbox = Mailbox()
    mailbox.put(1, b"a")
    mailbox.put(2, b"b")
    mailbox.discard([1, 3])
    assert mailbox.take() == [b"b"]
    assert not mailbox
