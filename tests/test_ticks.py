"""The NDJSON tick format round-trips, and bad lines are named."""

from __future__ import annotations

import numpy as np
import pytest

from feed import ticks
from feed.ticks import TickFormatError

SYMBOLS = ["AAPL", "MSFT"]
INDEX = {name: i for i, name in enumerate(SYMBOLS)}


def test_round_trip() -> None:
    batch = np.concatenate(
        [
            ticks.trades([0, 1], [189.12, 402.5], [100, 7], ts=[10, 11]),
            ticks.quotes([1], [402.49], [402.51], [300], [200], ts=12),
        ]
    )
    text = ticks.to_ndjson(batch, SYMBOLS)
    assert text.count(b"\n") == 3
    assert text.splitlines()[0] == (
        b'{"type":"trade","symbol":"AAPL","ts":10,"price":189.12,"size":100}'
    )
    back = ticks.from_ndjson(text.splitlines(), INDEX)
    assert back.tobytes() == batch.tobytes()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "line 2: not valid JSON"),
        (b"[]", "line 2: a tick must be a JSON object"),
        (b'{"type":"trade","symbol":"ZZZ","ts":1,"price":1,"size":1}', "unknown symbol 'ZZZ'"),
        (b'{"type":"trade","symbol":"AAPL","ts":1,"price":"1","size":1}', "field 'price'"),
        (b'{"type":"trade","symbol":"AAPL","ts":1,"price":1,"size":1.5}', "field 'size'"),
        (b'{"type":"trade","symbol":"AAPL","ts":1,"price":-1,"size":1}', "must not be negative"),
        (b'{"type":"quote","symbol":"AAPL","ts":1,"bid":1,"ask":2,"bid_size":1}', "ask_size"),
        (b'{"type":"cancel","symbol":"AAPL","ts":1}', "field 'type'"),
    ],
)
def test_bad_lines_are_named(line: bytes, message: str) -> None:
    with pytest.raises(TickFormatError, match=message):
        ticks.from_ndjson([b"", line], INDEX)
