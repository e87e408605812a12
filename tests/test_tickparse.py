"""Producer ticks: every rule names the bad tick and its field, and the good ticks still pass."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feed.symbols import SymbolTable
from feed.tickparse import (
    MessageError,
    Parsed,
    Reject,
    SymbolRejected,
    encode_binary,
    parse_binary,
    parse_columnar,
    parse_lines,
    parse_message,
    parse_objects,
)
from feed.ticks import QUOTE, TICK_DTYPE, TRADE

NOW = 1_764_300_000_999_000_000
TS = 1_764_300_000_123_456_789
INT64_MAX = 2**63 - 1
REFUSED = "HALTED"
TRADE_TICK: dict[str, Any] = {
    "type": "trade",
    "symbol": "AAPL",
    "ts": TS,
    "price": 189.12,
    "size": 100,
}
QUOTE_TICK: dict[str, Any] = {
    "type": "quote",
    "symbol": "MSFT",
    "ts": TS + 1,
    "bid": 402.49,
    "ask": 402.51,
    "bid_size": 300,
    "ask_size": 200,
}
DELETE = object()


class Market:
    """An intern callable: a symbol table that refuses REFUSED and records every call."""

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self.table = SymbolTable(names)
        self.calls: list[str] = []

    def __call__(self, name: str) -> int:
        self.calls.append(name)
        if name == REFUSED:
            raise SymbolRejected(f"symbol {name!r} is owned by source simulator")
        return self.table.add(name)


def tick(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    result = dict(base)
    for key, value in changes.items():
        if value is DELETE:
            del result[key]
        else:
            result[key] = value
    return result


def columnar(ticks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The columnar batch of tick objects (every tick has a ts, or none has)."""
    symbols: list[Any] = []
    sym: list[int] = []
    for t in ticks:
        name = t["symbol"]
        if isinstance(name, str) and name in symbols:
            sym.append(symbols.index(name))
        else:
            sym.append(len(symbols))
            symbols.append(name)
    message: dict[str, Any] = {
        "type": "batch",
        "symbols": symbols,
        "sym": sym,
        "kind": [TRADE if t["type"] == "trade" else QUOTE for t in ticks],
    }
    if any("ts" in t for t in ticks):
        message["ts"] = [t["ts"] for t in ticks]
    for key in ("price", "size", "bid", "ask", "bid_size", "ask_size"):
        message[key] = [t.get(key, 0) for t in ticks]
    return message | extra


def row(sym: int, t: dict[str, Any]) -> tuple[Any, ...]:
    """The expected batch row of a valid tick, independently of the parser."""
    ts = t.get("ts", NOW)
    if t["type"] == "trade":
        return (sym, TRADE, ts, float(t["price"]), t["size"], math.nan, math.nan, 0, 0)
    return (
        sym,
        QUOTE,
        ts,
        math.nan,
        0,
        float(t["bid"]),
        float(t["ask"]),
        t["bid_size"],
        t["ask_size"],
    )


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def only(rejects: list[Reject]) -> Reject:
    assert len(rejects) == 1, rejects
    return rejects[0]


# -- the rules, one bad tick between two good ones --------------------------------------------

# (tick, field, a word of the reason, whether the columnar form can say it too)
RULES: list[tuple[Any, str | None, str, bool]] = [
    (5, None, "object", False),
    ([TRADE_TICK], None, "object", False),
    ("trade", None, "object", False),
    (None, None, "object", False),
    (tick(TRADE_TICK, type=DELETE), "type", "missing", False),
    (tick(TRADE_TICK, type="cancel"), "type", "unknown", False),
    (tick(TRADE_TICK, type=None), "type", "unknown", False),
    (tick(TRADE_TICK, id=7), "id", "unknown", False),
    (tick(TRADE_TICK, bid=1.0), "bid", "unknown", False),
    (tick(QUOTE_TICK, venue="XNAS"), "venue", "unknown", False),
    (tick(QUOTE_TICK, price=1.0), "price", "unknown", False),
    (tick(TRADE_TICK, symbol=DELETE), "symbol", "missing", False),
    (tick(TRADE_TICK, price=DELETE), "price", "missing", False),
    (tick(TRADE_TICK, size=DELETE), "size", "missing", False),
    (tick(QUOTE_TICK, bid=DELETE), "bid", "missing", False),
    (tick(QUOTE_TICK, ask=DELETE), "ask", "missing", False),
    (tick(QUOTE_TICK, bid_size=DELETE), "bid_size", "missing", False),
    (tick(QUOTE_TICK, ask_size=DELETE), "ask_size", "missing", False),
    (tick(TRADE_TICK, ts=None), "ts", "integer", False),
    (tick(TRADE_TICK, price="189.12"), "price", "number", True),
    (tick(TRADE_TICK, price=True), "price", "number", True),
    (tick(TRADE_TICK, price=None), "price", "number", True),
    (tick(TRADE_TICK, price=[1.0]), "price", "number", True),
    (tick(QUOTE_TICK, bid=False), "bid", "number", True),
    (tick(QUOTE_TICK, ask="402.51"), "ask", "number", True),
    (tick(TRADE_TICK, size=1.5), "size", "integer", True),
    (tick(TRADE_TICK, size=100.0), "size", "integer", True),
    (tick(TRADE_TICK, size=True), "size", "integer", True),
    (tick(QUOTE_TICK, bid_size=300.0), "bid_size", "integer", True),
    (tick(QUOTE_TICK, ask_size="200"), "ask_size", "integer", True),
    (tick(TRADE_TICK, ts=1.5e18), "ts", "integer", True),
    (tick(TRADE_TICK, ts="1764300000123456789"), "ts", "integer", True),
    (tick(TRADE_TICK, ts=True), "ts", "integer", True),
    (tick(TRADE_TICK, price=math.nan), "price", "finite", True),
    (tick(TRADE_TICK, price=math.inf), "price", "finite", True),
    (tick(QUOTE_TICK, bid=-math.inf), "bid", "finite", True),
    (tick(QUOTE_TICK, ask=math.inf), "ask", "finite", True),
    (tick(TRADE_TICK, price=10**400), "price", "too large", True),
    (tick(TRADE_TICK, price=0), "price", "positive", True),
    (tick(TRADE_TICK, price=0.0), "price", "positive", True),
    (tick(TRADE_TICK, price=-189.12), "price", "positive", True),
    (tick(QUOTE_TICK, bid=0.0), "bid", "positive", True),
    (tick(QUOTE_TICK, ask=-1), "ask", "positive", True),
    (tick(TRADE_TICK, size=0), "size", "positive", True),
    (tick(TRADE_TICK, size=-100), "size", "positive", True),
    (tick(QUOTE_TICK, bid_size=-1), "bid_size", "negative", True),
    (tick(QUOTE_TICK, ask_size=-200), "ask_size", "negative", True),
    (tick(TRADE_TICK, size=2**63), "size", "int64", True),
    (tick(QUOTE_TICK, bid_size=2**64 + 5), "bid_size", "int64", True),
    (tick(QUOTE_TICK, ask_size=-(2**63) - 1), "ask_size", "int64", True),
    (tick(TRADE_TICK, ts=2**63), "ts", "int64", True),
    (tick(QUOTE_TICK, bid=402.52), "bid", "crossed", True),
    (tick(QUOTE_TICK, bid=403, ask=402), "bid", "crossed", True),
    (tick(TRADE_TICK, ts=0), "ts", "positive", True),
    (tick(QUOTE_TICK, ts=-TS), "ts", "positive", True),
    (tick(TRADE_TICK, symbol=7), "symbol", "string", True),
    (tick(TRADE_TICK, symbol=None), "symbol", "string", True),
    (tick(TRADE_TICK, symbol=["AAPL"]), "symbol", "string", True),
    (tick(TRADE_TICK, symbol=""), "symbol", "empty", True),
    (tick(TRADE_TICK, symbol="A" * 65), "symbol", "64", True),
    (tick(TRADE_TICK, symbol="AA\x00PL"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="AAPL\x1f"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="AAPL\t"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="\x7fAAPL"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="AAPL\x85"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="AA\x9fPL"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="AA\u200bPL"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol="\ufeffAAPL"), "symbol", "control", True),
    (tick(TRADE_TICK, symbol=" AAPL"), "symbol", "whitespace", True),
    (tick(TRADE_TICK, symbol="AAPL "), "symbol", "whitespace", True),
    (tick(TRADE_TICK, symbol="AAPL\u00a0"), "symbol", "whitespace", True),
    (tick(TRADE_TICK, symbol="\u3000AAPL"), "symbol", "whitespace", True),
    (tick(TRADE_TICK, symbol=REFUSED), "symbol", "owned by source simulator", True),
]


@pytest.mark.parametrize(("bad", "field", "word", "_"), RULES)
def test_a_bad_tick_is_named_and_the_others_pass(
    bad: Any, field: str | None, word: str, _: bool
) -> None:
    market = Market()
    batch, rejects = parse_objects([TRADE_TICK, bad, QUOTE_TICK], market, NOW, first_index=10)
    reject = only(rejects)
    assert (reject.index, reject.field) == (11, field)
    assert word in reject.reason
    assert same(batch, np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE))


@pytest.mark.parametrize(
    ("bad", "field", "word"), [(bad, field, word) for bad, field, word, ok in RULES if ok]
)
def test_a_bad_value_in_a_batch_is_named_the_same_way(bad: Any, field: str, word: str) -> None:
    objects = [TRADE_TICK, bad, QUOTE_TICK]
    batch, rejects = parse_columnar(columnar(objects), Market(), NOW)
    reject = only(rejects)
    assert (reject.index, reject.field) == (1, field)
    assert word in reject.reason
    assert reject.reason == only(parse_objects(objects, Market(), NOW)[1]).reason
    assert same(batch, np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE))


@pytest.mark.parametrize(
    "good",
    [
        tick(TRADE_TICK, price=189),  # an integer where a number is wanted
        tick(TRADE_TICK, price=5e-324, size=INT64_MAX, ts=INT64_MAX),
        tick(TRADE_TICK, ts=1),
        tick(QUOTE_TICK, bid=402.5, ask=402.5),  # locked, not crossed
        tick(QUOTE_TICK, bid_size=0, ask_size=0),
        tick(TRADE_TICK, symbol="A" * 64),
        tick(TRADE_TICK, symbol="BRK.B"),
        tick(TRADE_TICK, symbol="BRK B"),
        tick(TRADE_TICK, symbol="ÆON-日本"),
        tick(TRADE_TICK, ts=DELETE),
    ],
)
def test_edges_that_are_fine(good: dict[str, Any]) -> None:
    expected = np.array([row(0, good)], dtype=TICK_DTYPE)
    batch, rejects = parse_objects([good], Market(), NOW)
    assert rejects == []
    assert same(batch, expected)
    batch, rejects = parse_columnar(columnar([good]), Market(), NOW)
    assert rejects == []
    assert same(batch, expected)


def test_a_tick_breaking_several_rules_is_named_once_for_the_first() -> None:
    bad = tick(QUOTE_TICK, symbol="", ts=0, bid=-1, ask_size=-1, extra=1)
    assert only(parse_objects([bad], Market(), NOW)[1]).field == "extra"
    bad = tick(QUOTE_TICK, symbol="", ts=0, bid=-1, ask_size=-1)
    assert only(parse_objects([bad], Market(), NOW)[1]).field == "symbol"
    assert only(parse_columnar(columnar([bad]), Market(), NOW)[1]).field == "symbol"
    bad = tick(QUOTE_TICK, ts=0, bid=-1, ask_size=-1)
    assert only(parse_columnar(columnar([bad]), Market(), NOW)[1]).field == "ts"
    bad = tick(QUOTE_TICK, bid=-1, ask_size=-1)
    assert only(parse_columnar(columnar([bad]), Market(), NOW)[1]).field == "bid"


def test_reasons_name_the_value_shortened() -> None:
    reject = only(parse_objects([tick(TRADE_TICK, price="9" * 1000)], Market(), NOW)[1])
    assert reject.reason.startswith("'price' must be a number, got '9999")
    assert reject.reason.endswith("...")
    assert len(reject.reason) < 80
    reject = only(parse_objects([tick(TRADE_TICK, **{"x" * 100: 1})], Market(), NOW)[1])
    assert reject.field is not None and len(reject.field) <= 40
    assert reject.to_json() == {"index": 0, "field": reject.field, "reason": reject.reason}


def test_reason_wording() -> None:
    def reason(t: Any) -> str:
        return only(parse_objects([t], Market(), NOW)[1]).reason

    assert reason(3) == "a tick must be a JSON object, got a number"
    assert reason(tick(TRADE_TICK, type="cancel")) == (
        "unknown type 'cancel': a tick is a 'trade' or a 'quote'"
    )
    assert reason(tick(TRADE_TICK, id=7)) == (
        "unknown field 'id' in a trade (its fields: type, symbol, ts, price, size)"
    )
    assert reason(tick(QUOTE_TICK, ask=DELETE)) == "missing field 'ask' in a quote"
    assert reason(tick(TRADE_TICK, price=-1.5)) == "'price' must be positive, got -1.5"
    assert reason(tick(TRADE_TICK, size=0)) == "'size' must be positive, got 0"
    assert reason(tick(QUOTE_TICK, bid_size=-3)) == "'bid_size' must not be negative, got -3"
    assert reason(tick(QUOTE_TICK, bid=402.6)) == ("crossed quote: bid 402.6 is above ask 402.51")
    assert reason(tick(TRADE_TICK, symbol="A\x07")) == (
        "'symbol' must not contain control characters, got U+0007 in 'A\\x07'"
    )
    assert reason(tick(TRADE_TICK, symbol=REFUSED)) == (
        "symbol 'HALTED' is owned by source simulator"
    )


# -- symbols and intern -----------------------------------------------------------------------


def test_intern_is_called_once_per_name_and_only_for_otherwise_valid_ticks() -> None:
    market = Market()
    ticks = [
        tick(TRADE_TICK, symbol="NEW", price=-1),  # bad: NEW must not become a symbol
        tick(TRADE_TICK, symbol="AAPL"),
        tick(QUOTE_TICK, symbol="AAPL"),
        tick(TRADE_TICK, symbol=REFUSED),
        tick(QUOTE_TICK, symbol=REFUSED),
        tick(QUOTE_TICK, symbol="NEW", bid=1.0, ask=0.5),  # crossed: still no NEW
    ]
    batch, rejects = parse_objects(ticks, market, NOW)
    assert market.calls == ["AAPL", REFUSED]
    assert [(r.index, r.field) for r in rejects] == [
        (0, "price"),
        (3, "symbol"),
        (4, "symbol"),
        (5, "bid"),
    ]
    assert batch["sym"].tolist() == [0, 0]
    market = Market()
    _, rejects = parse_columnar(columnar(ticks), market, NOW)
    assert market.calls == ["AAPL", REFUSED]
    assert [(r.index, r.field) for r in rejects] == [
        (0, "price"),
        (3, "symbol"),
        (4, "symbol"),
        (5, "bid"),
    ]


def test_each_call_asks_intern_again() -> None:
    market = Market()
    parse_objects([TRADE_TICK], market, NOW)
    parse_objects([TRADE_TICK, TRADE_TICK], market, NOW)
    assert market.calls == ["AAPL", "AAPL"]


def test_other_exceptions_of_intern_propagate() -> None:
    def broken(name: str) -> int:
        raise KeyError(name)

    with pytest.raises(KeyError):
        parse_objects([TRADE_TICK], broken, NOW)


def test_market_indices_come_from_intern() -> None:
    market = Market(("X", "Y", "MSFT", "AAPL"))
    batch, _ = parse_objects([TRADE_TICK, QUOTE_TICK], market, NOW)
    assert batch["sym"].tolist() == [3, 2]
    batch, _ = parse_columnar(columnar([TRADE_TICK, QUOTE_TICK]), market, NOW)
    assert batch["sym"].tolist() == [3, 2]


# -- ts is optional ---------------------------------------------------------------------------


def test_a_tick_without_ts_is_stamped_now() -> None:
    objects = [tick(TRADE_TICK, ts=DELETE), QUOTE_TICK, tick(QUOTE_TICK, ts=DELETE)]
    batch, rejects = parse_objects(objects, Market(), NOW)
    assert rejects == []
    assert batch["ts"].tolist() == [NOW, TS + 1, NOW]
    message = columnar([tick(TRADE_TICK, ts=DELETE), tick(QUOTE_TICK, ts=DELETE)])
    assert "ts" not in message
    batch, rejects = parse_columnar(message, Market(), NOW)
    assert rejects == []
    assert batch["ts"].tolist() == [NOW, NOW]


# -- the three forms of a message -------------------------------------------------------------


def test_one_tick_object() -> None:
    parsed = parse_message(orjson.dumps(TRADE_TICK), Market(), NOW)
    assert (parsed.form, parsed.id, parsed.rejects) == ("object", None, [])
    assert same(parsed.batch, np.array([row(0, TRADE_TICK)], dtype=TICK_DTYPE))
    parsed = parse_message(orjson.dumps(tick(TRADE_TICK, id=3)).decode(), Market(), NOW)
    assert (parsed.form, parsed.id, len(parsed.batch)) == ("object", None, 0)
    assert only(parsed.rejects) == Reject(0, "id", only(parsed.rejects).reason)
    parsed = parse_message(b'{"symbol":"AAPL"}', Market(), NOW)
    assert (parsed.form, only(parsed.rejects).field) == ("object", "type")


def test_an_array_of_ticks_with_or_without_an_envelope() -> None:
    expected = np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE)
    parsed = parse_message(orjson.dumps([TRADE_TICK, QUOTE_TICK]), Market(), NOW)
    assert (parsed.form, parsed.id, parsed.rejects) == ("array", None, [])
    assert same(parsed.batch, expected)
    for message_id in (7, "ack-7"):
        envelope = {"type": "ticks", "id": message_id, "ticks": [TRADE_TICK, 5, QUOTE_TICK]}
        parsed = parse_message(orjson.dumps(envelope), Market(), NOW)
        assert (parsed.form, parsed.id) == ("array", message_id)
        assert only(parsed.rejects).index == 1
        assert same(parsed.batch, expected)
    parsed = parse_message(b'{"type":"ticks","ticks":[]}', Market(), NOW)
    assert (parsed.form, parsed.id, len(parsed.batch), parsed.rejects) == ("array", None, 0, [])
    parsed = parse_message(b"[]", Market(), NOW)
    assert (parsed.form, len(parsed.batch)) == ("array", 0)


def test_a_columnar_batch() -> None:
    message = columnar([TRADE_TICK, QUOTE_TICK, TRADE_TICK], id="b-17")
    parsed = parse_message(orjson.dumps(message), Market(), NOW)
    assert (parsed.form, parsed.id, parsed.rejects) == ("columnar", "b-17", [])
    expected = [row(0, TRADE_TICK), row(1, QUOTE_TICK), row(0, TRADE_TICK)]
    assert same(parsed.batch, np.array(expected, dtype=TICK_DTYPE))
    parsed = parse_message(orjson.dumps(columnar([TRADE_TICK], id=None)), Market(), NOW)
    assert parsed.id is None
    empty = {"type": "batch", "symbols": [], "sym": [], "kind": []}
    parsed = parse_message(orjson.dumps(empty), Market(), NOW)
    assert (len(parsed.batch), parsed.rejects) == (0, [])


def test_a_batch_may_omit_the_columns_of_an_absent_kind() -> None:
    trades = {"type": "batch", "symbols": ["AAPL"], "sym": [0], "kind": [0], "ts": [TS]}
    batch, rejects = parse_columnar(trades | {"price": [189.12], "size": [100]}, Market(), NOW)
    assert rejects == []
    assert same(batch, np.array([row(0, TRADE_TICK)], dtype=TICK_DTYPE))
    quotes = columnar([QUOTE_TICK])
    del quotes["price"], quotes["size"]
    batch, rejects = parse_columnar(quotes, Market(), NOW)
    assert rejects == []
    assert same(batch, np.array([row(0, QUOTE_TICK)], dtype=TICK_DTYPE))


def test_the_cells_a_kind_does_not_use_are_ignored() -> None:
    message = columnar([TRADE_TICK, QUOTE_TICK])
    message["bid"][0] = "junk"
    message["bid_size"][0] = -1
    message["price"][1] = None
    message["size"][1] = True
    batch, rejects = parse_columnar(message, Market(), NOW)
    assert rejects == []
    assert same(batch, np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE))


@pytest.mark.parametrize(
    ("change", "field", "word"),
    [
        ({"kind": [0, 2, 1]}, "kind", "0 (trade) or 1 (quote)"),
        ({"kind": [0, -1, 1]}, "kind", "0 (trade)"),
        ({"kind": [0, 1.0, 1]}, "kind", "got 1.0"),
        ({"kind": [0, "quote", 1]}, "kind", "0 (trade)"),
        ({"kind": [0, True, 1]}, "kind", "got True"),
        ({"sym": [0, 2, 1]}, "sym", "(0 to 1), got 2"),
        ({"sym": [0, -1, 1]}, "sym", "(0 to 1), got -1"),
        ({"sym": [0, 1.0, 1]}, "sym", "integer"),
        ({"sym": [0, None, 1]}, "sym", "integer"),
        ({"sym": [0, False, 1]}, "sym", "integer"),
        ({"sym": [0, 2**63, 1]}, "sym", "0 to 1"),
    ],
)
def test_a_bad_kind_or_sym_in_a_batch_is_named(
    change: dict[str, Any], field: str, word: str
) -> None:
    message = columnar([TRADE_TICK, TRADE_TICK, QUOTE_TICK]) | change
    parsed = parse_message(orjson.dumps(message), Market(), NOW)  # booleans: the exact path
    for batch, rejects in (
        parse_columnar(message, Market(), NOW),
        (parsed.batch, parsed.rejects),
    ):
        reject = only(rejects)
        assert (reject.index, reject.field) == (1, field)
        assert word in reject.reason
        assert same(batch, np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE))


def test_booleans_in_a_json_batch_are_not_numbers() -> None:
    message = columnar([TRADE_TICK, tick(TRADE_TICK, size=True), QUOTE_TICK])
    message["ask_size"][0] = False  # ignored: a trade's quote cell
    parsed = parse_message(orjson.dumps(message), Market(), NOW)
    assert (only(parsed.rejects).index, only(parsed.rejects).field) == (1, "size")
    assert len(parsed.batch) == 2


def test_a_batch_with_no_symbols_rejects_every_tick() -> None:
    message = {"type": "batch", "symbols": [], "sym": [0], "kind": [0], "price": [1], "size": [1]}
    reject = only(parse_columnar(message, Market(), NOW)[1])
    assert (reject.field, reject.reason) == (
        "sym",
        "'sym' must index 'symbols', which is empty, got 0",
    )


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"type": "trades"}, "type 'batch'"),
        ({"extra": []}, "unknown key 'extra'"),
        ({"id": True}, "'id'"),
        ({"id": 1.5}, "'id'"),
        ({"id": "x" * 65}, "'id'"),
        ({"symbols": "AAPL"}, "'symbols'"),
        ({"symbols": None}, "'symbols'"),
        ({"sym": None}, "'sym' must be an array"),
        ({"kind": 0}, "'kind' must be an array"),
        ({"price": [1.0]}, "length of 'sym' (2), 'price' has 1"),
        ({"ts": [1, 2, 3]}, "'ts' has 3"),
        ({"ask_size": [0, 0, 0]}, "'ask_size' has 3"),
        ({"ts": None}, "'ts' must be an array"),
    ],
)
def test_a_batch_of_the_wrong_shape_is_a_message_error(change: dict[str, Any], word: str) -> None:
    message = columnar([TRADE_TICK, QUOTE_TICK]) | change
    with pytest.raises(MessageError, match=re.escape(word)):
        parse_columnar(message, Market(), NOW)
    if message["type"] == "batch":
        with pytest.raises(MessageError, match=re.escape(word)):
            parse_message(orjson.dumps(message), Market(), NOW)


@pytest.mark.parametrize("missing", ["symbols", "sym", "kind", "price", "size", "bid", "ask_size"])
def test_a_batch_missing_a_column_it_needs_is_a_message_error(missing: str) -> None:
    message = columnar([TRADE_TICK, QUOTE_TICK])
    del message[missing]
    with pytest.raises(MessageError, match=missing):
        parse_columnar(message, Market(), NOW)


@pytest.mark.parametrize(
    ("data", "word"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"type":"trade","price":NaN}', "not valid JSON"),
        (b'{"type":"trade","price":1e400}', "not valid JSON"),
        (b"\xff", "not valid JSON"),
        ("\ud800", "not valid JSON"),
        (b"7", "got a number"),
        (b'"trade"', "got a string"),
        (b"null", "got null"),
        (b'{"type":"ticks"}', "'ticks' must be an array"),
        (b'{"type":"ticks","ticks":{}}', "'ticks' must be an array"),
        (b'{"type":"ticks","ticks":[],"more":1}', "unknown key 'more'"),
        (b'{"type":"ticks","ticks":[],"id":false}', "'id'"),
        (b'{"type":"ticks","ticks":[],"id":[1]}', "'id'"),
    ],
)
def test_an_unusable_message_is_a_message_error(data: bytes | str, word: str) -> None:
    with pytest.raises(MessageError, match=word):
        parse_message(data, Market(), NOW)


# -- NDJSON lines -----------------------------------------------------------------------------


def test_lines_skip_blanks_and_name_a_truncated_last_line() -> None:
    lines: list[bytes | str] = [
        orjson.dumps(TRADE_TICK),
        b"",
        b"   ",
        orjson.dumps(tick(TRADE_TICK, size=0)),
        orjson.dumps(QUOTE_TICK).decode() + "\n",
        b"[1]",
        orjson.dumps(QUOTE_TICK)[:30],
    ]
    batch, rejects = parse_lines(lines, Market(), NOW, first_line=101)
    assert [(r.index, r.field) for r in rejects] == [
        (104, "size"),
        (106, None),
        (107, None),
    ]
    assert "object" in rejects[1].reason
    assert rejects[2].reason.startswith("line is not valid JSON")
    assert same(batch, np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE))
    batch, rejects = parse_lines([], Market(), NOW)
    assert (len(batch), rejects) == (0, [])


def test_lines_read_what_the_interchange_format_writes() -> None:
    from feed import ticks

    written = np.array([row(0, TRADE_TICK), row(1, QUOTE_TICK)], dtype=TICK_DTYPE)
    batch, rejects = parse_lines(
        ticks.to_ndjson(written, ["AAPL", "MSFT"]).splitlines(), Market(), NOW
    )
    assert rejects == []
    assert same(batch, written)


# -- properties -------------------------------------------------------------------------------

NAMES = ("AAPL", "MSFT", "BRK.B", "ÆON", "X" * 64, "fut.ES")  # u, f: the exact type check
prices = st.floats(min_value=1e-6, max_value=1e9) | st.integers(1, 10**9)
sizes = st.integers(0, INT64_MAX)
stamps = st.integers(1, INT64_MAX)


@st.composite
def good_ticks(draw: st.DrawFn, ts: bool | None = None) -> dict[str, Any]:
    """A valid tick; with a ts when `ts` is True, without when False, either when None."""
    result: dict[str, Any] = {"symbol": draw(st.sampled_from(NAMES))}
    if ts or (ts is None and draw(st.booleans())):
        result["ts"] = draw(stamps)
    if draw(st.booleans()):
        result |= {"type": "trade", "price": draw(prices), "size": draw(st.integers(1, INT64_MAX))}
    else:
        bid = draw(prices)
        ask = draw(st.sampled_from([bid, bid + 0.01, bid * 1.5, bid + 1]))
        result |= {
            "type": "quote",
            "bid": bid,
            "ask": ask,
            "bid_size": draw(sizes),
            "ask_size": draw(sizes),
        }
    return result


# (field, kinds it applies to, how to break it, whether a batch can hold it): one rule broken each
MUTATIONS: list[tuple[str | None, tuple[str, ...], Any, bool]] = [
    (None, ("trade", "quote"), lambda t: [t], False),
    ("type", ("trade", "quote"), lambda t: tick(t, type="order"), False),
    ("type", ("trade", "quote"), lambda t: tick(t, type=DELETE), False),
    ("id", ("trade", "quote"), lambda t: tick(t, id=1), False),
    ("symbol", ("trade", "quote"), lambda t: tick(t, symbol=DELETE), False),
    ("symbol", ("trade", "quote"), lambda t: tick(t, symbol=""), True),
    ("symbol", ("trade", "quote"), lambda t: tick(t, symbol=" " + t["symbol"]), True),
    ("symbol", ("trade", "quote"), lambda t: tick(t, symbol=t["symbol"] + "\x00"), True),
    ("symbol", ("trade", "quote"), lambda t: tick(t, symbol=REFUSED), True),
    ("symbol", ("trade", "quote"), lambda t: tick(t, symbol=1), True),
    ("ts", ("trade", "quote"), lambda t: tick(t, ts=0), True),
    ("ts", ("trade", "quote"), lambda t: tick(t, ts=2**63), True),
    ("ts", ("trade", "quote"), lambda t: tick(t, ts=1.0), True),
    ("price", ("trade",), lambda t: tick(t, price=-t["price"]), True),
    ("price", ("trade",), lambda t: tick(t, price=math.nan), True),
    ("price", ("trade",), lambda t: tick(t, price=True), True),
    ("price", ("trade",), lambda t: tick(t, price=DELETE), False),
    ("size", ("trade",), lambda t: tick(t, size=0), True),
    ("size", ("trade",), lambda t: tick(t, size=float(t["size"])), True),
    ("bid", ("quote",), lambda t: tick(t, bid=0), True),
    ("bid", ("quote",), lambda t: tick(t, bid=t["ask"] * 2), True),
    ("ask", ("quote",), lambda t: tick(t, ask=math.inf), True),
    ("bid_size", ("quote",), lambda t: tick(t, bid_size=-1), True),
    ("ask_size", ("quote",), lambda t: tick(t, ask_size=2**63), True),
    ("ask_size", ("quote",), lambda t: tick(t, ask_size=None), True),
]


@st.composite
def bad_ticks(draw: st.DrawFn, in_batch: bool = False) -> tuple[Any, str | None]:
    """A tick that breaks exactly one rule, and the field its reject names."""
    base = draw(good_ticks(ts=True if in_batch else None))
    field, _, mutate, _ = draw(
        st.sampled_from([m for m in MUTATIONS if base["type"] in m[1] and (m[3] or not in_batch)])
    )
    return mutate(base), field


def expected_batch(ticks: list[dict[str, Any]]) -> np.ndarray:
    table = SymbolTable(NAMES)
    return np.array([row(table.add(t["symbol"]), t) for t in ticks], dtype=TICK_DTYPE)


@settings(max_examples=150)
@given(st.lists(st.tuples(st.booleans(), good_ticks(), bad_ticks()), max_size=30))
def test_a_mix_of_good_and_bad_ticks_keeps_exactly_the_good_ones(
    mix: list[tuple[bool, dict[str, Any], tuple[Any, str | None]]],
) -> None:
    objects = [good if is_good else bad for is_good, good, (bad, _) in mix]
    batch, rejects = parse_objects(objects, Market(NAMES), NOW)
    assert same(batch, expected_batch([good for is_good, good, _ in mix if is_good]))
    assert [(r.index, r.field) for r in rejects] == [
        (i, field) for i, (is_good, _, (_, field)) in enumerate(mix) if not is_good
    ]
    assert all(r.reason for r in rejects)


@settings(max_examples=150)
@given(st.lists(st.tuples(st.booleans(), good_ticks(ts=True), bad_ticks(True)), max_size=30))
def test_a_mix_of_good_and_bad_ticks_in_a_batch_keeps_exactly_the_good_ones(
    mix: list[tuple[bool, dict[str, Any], tuple[Any, str | None]]],
) -> None:
    objects = [good if is_good else bad for is_good, good, (bad, _) in mix]
    batch, rejects = parse_columnar(columnar(objects), Market(NAMES), NOW)
    assert same(batch, expected_batch([good for is_good, good, _ in mix if is_good]))
    assert [(r.index, r.field) for r in rejects] == [
        (i, field) for i, (is_good, _, (_, field)) in enumerate(mix) if not is_good
    ]
    assert [r.reason for r in rejects] == [
        r.reason for r in parse_objects(objects, Market(), NOW)[1]
    ]


@settings(max_examples=100)
@given(st.booleans().flatmap(lambda ts: st.lists(good_ticks(ts=ts), max_size=40)))
def test_the_columnar_and_the_array_form_of_the_same_ticks_give_the_same_batch(
    ticks: list[dict[str, Any]],
) -> None:
    array = parse_message(orjson.dumps(ticks), Market(NAMES), NOW)
    batch = parse_message(orjson.dumps(columnar(ticks)), Market(NAMES), NOW)
    assert array.rejects == batch.rejects == []
    assert same(array.batch, batch.batch)
    assert same(array.batch, expected_batch(ticks))


KEYS = (
    "type",
    "symbol",
    "ts",
    "price",
    "size",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "id",
    "ticks",
    "symbols",
    "sym",
    "kind",
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["trade", "quote", "batch", "ticks", "AAPL", "", " A"])
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=8)
    ),
    max_leaves=30,
)


@st.composite
def near_batches(draw: st.DrawFn) -> Any:
    """A columnar batch with some of its columns and cells replaced by anything."""
    message = columnar(draw(st.lists(good_ticks(ts=True), min_size=1, max_size=5)))
    for key in draw(st.lists(st.sampled_from(sorted(message)), max_size=3)):
        if draw(st.booleans()):
            message[key] = draw(json_values)
        elif isinstance(message[key], list) and message[key]:
            cells = message[key]
            cells[draw(st.integers(0, len(cells) - 1))] = draw(json_values)
    return message


@settings(max_examples=300)
@given(
    st.binary(max_size=200)
    | json_values.map(orjson.dumps)
    | near_batches().map(orjson.dumps)
    | st.lists(json_values | good_ticks(), max_size=5).map(orjson.dumps)
)
def test_any_bytes_either_parse_or_raise_a_message_error(data: bytes) -> None:
    try:
        parsed = parse_message(data, Market(), NOW)
    except MessageError as exc:
        assert str(exc)
    else:
        assert isinstance(parsed, Parsed)
        assert parsed.batch.dtype == TICK_DTYPE
        assert all(isinstance(r.reason, str) and r.reason for r in parsed.rejects)
        assert [r.index for r in parsed.rejects] == sorted({r.index for r in parsed.rejects})


# -- the binary batch -------------------------------------------------------------------------


@given(st.booleans().flatmap(lambda ts: st.lists(good_ticks(ts=ts), max_size=40)))
def test_the_binary_and_the_array_form_of_the_same_ticks_give_the_same_batch(
    ticks: list[dict[str, Any]],
) -> None:
    array = parse_message(orjson.dumps(ticks), Market(NAMES), NOW)
    with_ts = all("ts" in t for t in ticks)
    binary = parse_binary(encode_binary(array.batch, NAMES, 5, with_ts=with_ts), Market(NAMES), NOW)
    assert binary.rejects == []
    assert binary.form == "binary" and binary.id == 5
    assert same(array.batch, binary.batch)


def test_a_bad_cell_of_a_binary_batch_is_named_like_in_a_json_batch() -> None:
    good = parse_message(orjson.dumps([TRADE_TICK, QUOTE_TICK, TRADE_TICK]), Market(), NOW).batch
    broken = good.copy()
    broken["price"][2] = -1.0
    broken["bid"][1] = 500.0  # crossed
    parsed = parse_binary(encode_binary(broken, ["AAPL", "MSFT"]), Market(), NOW)
    assert len(parsed.batch) == 1
    assert [(r.index, r.field) for r in parsed.rejects] == [(1, "bid"), (2, "price")]
    assert "crossed quote: bid 500.0 is above ask 402.51" in parsed.rejects[0].reason
    assert "'price' must be positive, got -1.0" in parsed.rejects[1].reason


def framed(header: bytes, body: bytes = b"") -> bytes:
    return len(header).to_bytes(4, "little") + header + body


@pytest.mark.parametrize(
    ("data", "word"),
    [
        (b"", "4-byte length"),
        (b"\xff\x00\x00\x00{}", "longer than the message"),
        (b"\x02\x00\x00\x00{x", "not valid JSON"),
        (b'\x0f\x00\x00\x00{"type":"tick"}', '"type":"batch"'),
        (framed(b'{"type":"batch","symbols":[],"n":1,"columns":["kind","sym"]}'), "in that order"),
        (
            framed(b'{"type":"batch","symbols":[],"n":1,"columns":["sym","kind"]}'),
            "is 69 bytes, got 64",
        ),
        (framed(b'{"type":"batch","symbols":[],"n":-1,"columns":["sym","kind"]}'), "'n' must"),
        (framed(b'{"type":"batch","symbols":[],"n":0,"columns":[],"x":1}'), "unknown key 'x'"),
    ],
)
def test_a_binary_batch_of_the_wrong_shape_is_a_message_error(data: bytes, word: str) -> None:
    with pytest.raises(MessageError, match=re.escape(word)):
        parse_binary(data, Market(), NOW)


@settings(max_examples=200)
@given(st.binary(max_size=120), st.integers(0, 200))
def test_any_binary_either_parses_or_raises_a_message_error(noise: bytes, cut: int) -> None:
    ticks = [TRADE_TICK, QUOTE_TICK]
    batch = parse_message(orjson.dumps(ticks), Market(), NOW).batch
    valid = encode_binary(batch, ["AAPL", "MSFT"], 1)
    for data in (noise, valid[:cut] + noise, valid[: len(valid) - 8] + noise[:8].ljust(8, b"\0")):
        try:
            parsed = parse_binary(data, Market(), NOW)
        except MessageError as exc:
            assert str(exc)
        else:
            assert parsed.batch.dtype == TICK_DTYPE
