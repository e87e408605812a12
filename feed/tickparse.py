"""Ticks from producers: validated into a batch, every bad tick named, nothing else lost.

Used by the producer WebSocket endpoint `/ingest`, the stdin source and the replay source. Pure:
no I/O and no clock (the caller passes `now_ns`, the stamp of ticks that carry no `ts`).

One bad tick never costs the others: a tick that breaks a rule becomes a `Reject` (its index,
the field, a sentence naming the problem and the value) and is not applied; the other ticks of
the message are parsed and returned in message order. Only a message that cannot be read at all
(not JSON, not one of the shapes below) raises `MessageError`, and then no tick of it is used.

A WebSocket text message (`parse_message`) is UTF-8 JSON per RFC 8259: no NaN or Infinity
literal, no number too large for a double such as 1e400; a message holding one is a
MessageError. It takes one of three forms.

1. One tick, form "object"; its reject has index 0. Any JSON object whose type is neither
   "ticks" nor "batch" is read as one tick, so `{"type":"cancel"}` is a reject, not an error.

       {"type":"trade","symbol":"AAPL","ts":1764300000123456789,"price":189.12,"size":100}
       {"type":"quote","symbol":"MSFT","ts":1764300000123499000,
        "bid":402.49,"ask":402.51,"bid_size":300,"ask_size":200}

   A trade has exactly the keys type, symbol, ts, price, size; a quote exactly type, symbol, ts,
   bid, ask, bid_size, ask_size. All are required except `ts`: a tick without one is stamped
   `now_ns` (`"ts": null` is not an absent ts but a wrong type). Any other key, `id` included,
   is an unknown field: a tick object carries no id.
   - symbol: a string of 1 to 64 characters, with no character of Unicode category Cc or Cf
     (U+0000-U+001F, U+007F-U+009F, U+200B, U+FEFF, ...) and no leading or trailing
     whitespace;
   - ts: an integer, ns since the epoch, 1 to 2**63 - 1;
   - price, bid, ask: a number (an integer is accepted), finite, greater than 0;
   - size: an integer, 1 to 2**63 - 1; bid_size, ask_size: an integer, 0 to 2**63 - 1;
   - bid <= ask: a crossed quote is rejected on field `bid` (bid == ask is accepted).
   true and false are not numbers, and 100.0 is not an integer.

2. An array of ticks, form "array"; a reject's index is the tick's position in the array:

       [{"type":"trade",...}, {"type":"quote",...}]

   or the same array in an envelope whose id the producer's acknowledgement can carry, also
   form "array", the index being the position in "ticks":

       {"type":"ticks","id":7,"ticks":[{"type":"trade",...}, {"type":"quote",...}]}

   The envelope has the keys type ("ticks"), ticks (an array, required) and id (optional), and
   no other. An array may be empty.

3. A columnar batch, form "columnar"; a reject's index is the tick's position in the columns:

       {"type":"batch","id":"b-17","symbols":["AAPL","MSFT"],
        "sym":[0,1,0],"kind":[0,1,0],
        "ts":[1764300000123456789,1764300000123499000,1764300000123512000],
        "price":[189.12,0,189.13],"size":[100,0,5],
        "bid":[0,402.49,0],"ask":[0,402.51,0],"bid_size":[0,300,0],"ask_size":[0,200,0]}

   Keys: type ("batch"), symbols (an array of names, required), sym and kind (required), id
   (optional), ts (optional: without it every tick is stamped `now_ns`), price and size (for
   trades) and bid, ask, bid_size, ask_size (for quotes), and no other. Tick i is
   `kind[i]` (0 trade, 1 quote) of symbol `symbols[sym[i]]` with the values of column i. Every
   column is an array as long as sym. A cell of a column that its tick's kind does not use is
   ignored, whatever it holds (0 by convention), and the columns of a kind that no tick of the
   batch has may be left out; the columns of a kind present are required. Names may repeat in
   symbols; a name that no otherwise valid tick uses is neither checked nor interned.
   MessageError: an unknown key, symbols or a column that is not an array, a column of another
   length than sym, a missing column.
   Rejects: kind not 0 or 1 (field `kind`), sym not an integer index into symbols (field
   `sym`), and the rules of form 1 on symbols[sym[i]] (field `symbol`) and on the cells of ts,
   price, size, bid, ask, bid_size, ask_size (field: the column's name).

The id of an envelope or a batch is an integer or a string of at most 64 characters (null: no
id); anything else is a MessageError. `Parsed.id` is that id, None for the other forms.

`parse_lines` reads the NDJSON interchange format (`feed simulate` writes it): one tick object
per line, the reject index being the line number; a line that is not JSON is a reject with
field None rather than an error.

Symbols: a name is checked before `intern` sees it, and `intern` is called only for a tick that
is otherwise valid, once per distinct name per call at most; a `SymbolRejected` it raises is a
reject, on field `symbol` with the exception's text as the reason, of every tick of that name in
the call. Any other exception of `intern` propagates.

A bad tick gets one reject, for the first rule it breaks in this order: is an object; type;
unknown field; missing field (in a batch: kind, then sym); then symbol, ts, price, size, bid,
ask, bid_size, ask_size, crossed quote, and last `intern`.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import orjson

from feed.protocol import MAX_ID_LENGTH, MAX_SYMBOL_LENGTH
from feed.ticks import QUOTE, TICK_DTYPE, TRADE


class SymbolRejected(Exception):
    """Raised by an `Intern` callable: this source may not tick this symbol. str() is the reason
    the producer sees ("symbol limit of 10000 reached", "symbol X is owned by source Y")."""


Intern = Callable[[str], int]
"""Symbol name to market index; may raise SymbolRejected."""

Form = Literal["object", "array", "columnar", "binary"]
MessageId = int | str | None


@dataclass(frozen=True, slots=True)
class Reject:
    """One tick that was not applied."""

    index: int
    """0-based position of the tick in its message (or as the caller numbers it; line numbers
    for `parse_lines`)."""
    field: str | None
    """The offending field; None when the tick as a whole is wrong (not an object, not JSON)."""
    reason: str
    """A sentence naming the problem and the value (values shortened to 40 characters)."""

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


class MessageError(ValueError):
    """The whole message is unusable (not JSON, not one of the accepted shapes); str() is the
    reason. No tick of it was parsed."""


class NotJson(MessageError):
    """The message is not valid JSON (or not UTF-8) at all."""


@dataclass(frozen=True, slots=True)
class Parsed:
    batch: np.ndarray
    """TICK_DTYPE, the good ticks only, in message order, `sym` from `intern`."""
    rejects: list[Reject]
    """In index order, at most one per tick."""
    id: MessageId
    """The message's id (envelope or batch forms), else None."""
    form: Form


_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_TRADE_KEYS: Final = ("type", "symbol", "ts", "price", "size")
_QUOTE_KEYS: Final = ("type", "symbol", "ts", "bid", "ask", "bid_size", "ask_size")
_ENVELOPE_KEYS: Final = ("type", "id", "ticks")
_TRADE_COLUMNS: Final = ("price", "size")
_QUOTE_COLUMNS: Final = ("bid", "ask", "bid_size", "ask_size")
_COLUMNS: Final = ("sym", "kind", "ts", *_TRADE_COLUMNS, *_QUOTE_COLUMNS)
_BATCH_KEYS: Final = ("type", "id", "symbols", *_COLUMNS)
_INTEGER_FIELDS: Final = frozenset({"ts", "size", "bid_size", "ask_size"})
_MINIMUM: Final = {"ts": 1, "size": 1, "bid_size": 0, "ask_size": 0}


class _Invalid(Exception):
    """A tick breaks a rule (internal: becomes a Reject)."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason


# -- the API ----------------------------------------------------------------------------------


def parse_message(data: bytes | str, intern: Intern, now_ns: int) -> Parsed:
    """Parse one producer message in any of the three forms (see the module docstring).

    Raises MessageError when the message is not JSON or not one of the shapes; a bad tick is
    a Reject in the result, never an exception.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise NotJson(f"message is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if isinstance(obj, list):
        batch, rejects = parse_objects(obj, intern, now_ns)
        return Parsed(batch, rejects, None, "array")
    if not isinstance(obj, dict):
        raise MessageError(
            f"a message must be a tick object, an array of ticks or a batch, got {_json_type(obj)}"
        )
    kind = obj.get("type")
    if kind == "batch":
        batch, rejects = _columnar(obj, intern, now_ns, exact=_may_hold_booleans(data))
        return Parsed(batch, rejects, _message_id(obj), "columnar")
    if kind == "ticks":
        _only_keys(obj, _ENVELOPE_KEYS, "a 'ticks' message")
        message_id = _message_id(obj)
        ticks = obj.get("ticks")
        if not isinstance(ticks, list):
            raise MessageError(f"'ticks' must be an array of tick objects, got {_json_type(ticks)}")
        batch, rejects = parse_objects(ticks, intern, now_ns)
        return Parsed(batch, rejects, message_id, "array")
    batch, rejects = parse_objects([obj], intern, now_ns)
    return Parsed(batch, rejects, None, "object")


BINARY_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "sym": np.dtype("<i4"),
    "kind": np.dtype("u1"),
    "ts": np.dtype("<i8"),
    "price": np.dtype("<f8"),
    "size": np.dtype("<i8"),
    "bid": np.dtype("<f8"),
    "ask": np.dtype("<f8"),
    "bid_size": np.dtype("<i8"),
    "ask_size": np.dtype("<i8"),
}
"""The type of each column of a binary batch, little-endian, in this order when present."""
_BINARY_HEADER_KEYS: Final = ("type", "id", "symbols", "n", "columns")
_HEADER_LENGTH: Final = np.dtype("<u4")


def parse_binary(data: bytes, intern: Intern, now_ns: int) -> Parsed:
    """Parse a binary batch (a WebSocket binary message), form "binary": the columnar form with
    its columns as raw little-endian arrays instead of JSON numbers, for the highest rates.

        uint32 LE   H, the length of the header
        H bytes     the header, UTF-8 JSON:
                    {"type":"batch","id":7,"symbols":["AAPL","MSFT"],"n":3,
                     "columns":["sym","kind","ts","price","size"]}
        columns     for each name in "columns", in the order of BINARY_DTYPES, n values:
                    sym int32, kind uint8, ts int64, price float64, size int64,
                    bid float64, ask float64, bid_size int64, ask_size int64

    `columns` must hold sym and kind, may leave out ts (every tick stamped `now_ns`) and the
    columns of a kind no tick has, and must list them in the order above. Every rule of the
    columnar form applies, and its rejects read the same. MessageError: a header that is not
    JSON or not this shape, or a length that is not the header's plus its columns'.
    """
    view = memoryview(data)
    if len(view) < 4:
        raise MessageError("a binary batch starts with the 4-byte length of its header")
    size = int(np.frombuffer(view[:4], dtype=_HEADER_LENGTH)[0])
    if 4 + size > len(view):
        raise MessageError(f"a binary batch's header is {size} bytes, longer than the message")
    try:
        header = orjson.loads(view[4 : 4 + size])
    except orjson.JSONDecodeError as exc:
        raise NotJson(f"the header is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(header, dict) or header.get("type") != "batch":
        raise MessageError('a binary batch\'s header is a JSON object with "type":"batch"')
    _only_keys(header, _BINARY_HEADER_KEYS, "a binary batch's header")
    message_id = _message_id(header)
    symbols = header.get("symbols")
    if not isinstance(symbols, list):
        raise MessageError(f"'symbols' must be an array of names, got {_json_type(symbols)}")
    n = header.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise MessageError(f"'n' must be the number of ticks, got {_short(n)}")
    names = header.get("columns")
    order = list(BINARY_DTYPES)
    if (
        not isinstance(names, list)
        or not all(isinstance(name, str) and name in BINARY_DTYPES for name in names)
        or sorted(names, key=order.index) != names
        or len(set(names)) != len(names)
        or "sym" not in names
        or "kind" not in names
    ):
        raise MessageError(
            f"'columns' must name sym, kind and any of {', '.join(order[2:])}, in that order, "
            f"got {_short(names)}"
        )
    expected = 4 + size + n * sum(BINARY_DTYPES[name].itemsize for name in names)
    if len(view) != expected:
        raise MessageError(
            f"a binary batch of {n} ticks with columns {', '.join(names)} is {expected} bytes, "
            f"got {len(view)}"
        )
    arrays: dict[str, np.ndarray] = {}
    offset = 4 + size
    for name in names:
        dtype = BINARY_DTYPES[name]
        arrays[name] = np.frombuffer(view, dtype=dtype, count=n, offset=offset)
        offset += n * dtype.itemsize
    if n == 0:
        return Parsed(np.array([], dtype=TICK_DTYPE), [], message_id, "binary")
    kind = arrays["kind"].astype(np.int64)
    is_trade = kind == TRADE
    is_quote = kind == QUOTE
    for key in (
        *(_TRADE_COLUMNS if is_trade.any() else ()),
        *(_QUOTE_COLUMNS if is_quote.any() else ()),
    ):
        if key not in arrays:
            what = "trades" if key in _TRADE_COLUMNS else "quotes"
            raise MessageError(f"a batch with {what} needs the column {key!r}")
    columns: dict[str, _Column] = {"kind": (kind, None)}
    for name, array in arrays.items():
        if name != "kind":
            target = np.int64 if name in _INTEGER_FIELDS or name == "sym" else np.float64
            columns[name] = (array.astype(target), None)
    cells = _LazyCells(arrays)
    batch, rejects = _assemble(columns, cells, symbols, is_trade, is_quote, intern, now_ns)
    return Parsed(batch, rejects, message_id, "binary")


def encode_binary(
    batch: np.ndarray,
    symbols: Sequence[str],
    message_id: MessageId = None,
    *,
    with_ts: bool = True,
) -> bytes:
    """A batch (TICK_DTYPE, `sym` indexing `symbols`) as a binary batch message: what a Python
    producer sends for the highest rates. `with_ts=False` leaves the stamping to the feed."""
    kinds = batch["kind"]
    names = ["sym", "kind"]
    if with_ts:
        names.append("ts")
    if (kinds == TRADE).any():
        names += _TRADE_COLUMNS
    if (kinds == QUOTE).any():
        names += _QUOTE_COLUMNS
    header: dict[str, Any] = {"type": "batch", "symbols": list(symbols), "n": len(batch)}
    if message_id is not None:
        header["id"] = message_id
    header["columns"] = names
    head = orjson.dumps(header)
    parts = [np.array([len(head)], dtype=_HEADER_LENGTH).tobytes(), head]
    for name in names:
        column = batch[name]
        if name in _TRADE_COLUMNS or name in _QUOTE_COLUMNS:
            column = np.nan_to_num(column, nan=0.0) if column.dtype.kind == "f" else column
        parts.append(np.ascontiguousarray(column, dtype=BINARY_DTYPES[name]).tobytes())
    return b"".join(parts)


class _LazyCells(Mapping[str, Sequence[Any]]):
    """A binary batch's columns as Python values, made only when a reject needs its wording."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._arrays = arrays
        self._lists: dict[str, list[Any]] = {}

    def __getitem__(self, key: str) -> list[Any]:
        if key not in self._lists:
            self._lists[key] = self._arrays[key].tolist()
        return self._lists[key]

    def __iter__(self) -> Any:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


def _may_hold_booleans(data: bytes | str) -> bool:
    """Whether the JSON text may hold a true or a false (a quick scan, about 1 ns a tick).

    A bare true has a "u" and a bare false an "f", and no key of a batch has either letter: a
    batch without them holds no booleans, and its columns can skip the exact check of each
    cell's type (a boolean is the one wrong type numpy's inferred dtype does not show)."""
    if isinstance(data, str):
        return "u" in data or "f" in data
    return b"u" in data or b"f" in data


def parse_objects(
    objs: Sequence[Any], intern: Intern, now_ns: int, first_index: int = 0
) -> tuple[np.ndarray, list[Reject]]:
    """Tick objects (decoded JSON) to a batch of the good ones and a Reject per bad one.

    The i-th object's reject has index `first_index + i`.
    """
    return _parse(enumerate(objs, first_index), intern, now_ns)


def parse_lines(
    lines: Iterable[bytes | str], intern: Intern, now_ns: int, first_line: int = 1
) -> tuple[np.ndarray, list[Reject]]:
    """NDJSON interchange lines, one tick object each, to a batch and rejects.

    A reject's index is the line number (the first line is `first_line`); blank lines are
    skipped; a line that is not JSON (a truncated last line, say) is a reject with field None.
    Feed a long file in chunks, passing the number of each chunk's first line.
    """
    rows, rejects = parse_lines_rows(lines, intern, now_ns, first_line, {})
    return np.array(rows, dtype=TICK_DTYPE), rejects


def parse_lines_rows(
    lines: Iterable[bytes | str],
    intern: Intern,
    now_ns: int,
    first_line: int = 1,
    known: dict[str, int] | None = None,
) -> tuple[list[Row], list[Reject]]:
    """`parse_lines`, the good ticks as rows rather than a numpy batch: for the few ticks that
    arrive at a time at low rates, where building an array costs more than the rest.

    `known` (name to index), when given, is the caller's cache of names already checked and
    interned, kept across calls: a name in it is neither checked nor interned again, and the
    names this call interns are added. Only for a caller whose `intern` does nothing else.
    """
    pairs: list[tuple[int, Any]] = []
    unreadable: list[Reject] = []
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            pairs.append((number, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            unreadable.append(
                Reject(number, None, f"line is not valid JSON: {exc.msg} at character {exc.pos}")
            )
    rows, rejects = _parse_rows(pairs, intern, now_ns, {} if known is None else known)
    if unreadable:
        rejects = sorted(rejects + unreadable, key=lambda reject: reject.index)
    return rows, rejects


def parse_columnar(
    obj: Mapping[str, Any], intern: Intern, now_ns: int
) -> tuple[np.ndarray, list[Reject]]:
    """A decoded columnar batch (form 3 of the module docstring) to a batch and rejects.

    Raises MessageError for a batch of the wrong shape (unknown key, a column that is not an
    array, columns of different lengths, a column missing); a bad value is a Reject.
    """
    return _columnar(obj, intern, now_ns, exact=True)


# -- tick objects -----------------------------------------------------------------------------


Row = tuple[int, int, int, float, int, float, float, int, int]
"""One tick as the fields of TICK_DTYPE, in order (what `Coalescer.apply_rows` folds)."""


def _parse(
    pairs: Iterable[tuple[int, Any]], intern: Intern, now_ns: int
) -> tuple[np.ndarray, list[Reject]]:
    rows, rejects = _parse_rows(pairs, intern, now_ns, {})
    return np.array(rows, dtype=TICK_DTYPE), rejects


def _parse_rows(
    pairs: Iterable[tuple[int, Any]], intern: Intern, now_ns: int, known: dict[str, int]
) -> tuple[list[Row], list[Reject]]:
    # The loop accepts the common well-formed tick with a few type checks and comparisons; any
    # tick it does not accept goes to _check, which decides and words the reason.
    rows: list[Row] = []
    rejects: list[Reject] = []
    add = rows.append
    refused: dict[str, str] = {}
    nan = math.nan
    inf = math.inf
    top = _INT64_MAX
    for index, obj in pairs:
        if type(obj) is dict:
            kind = obj.get("type")
            symbol = obj.get("symbol")
            ts = obj.get("ts")
            width = 5
            if ts is None:
                ts = now_ns
                width = 4
            if kind == "trade":
                price = obj.get("price")
                size = obj.get("size")
                if (
                    len(obj) == width
                    and type(symbol) is str
                    and type(price) is float
                    and 0.0 < price < inf
                    and type(size) is int
                    and 0 < size <= top
                    and type(ts) is int
                    and 0 < ts <= top
                ):
                    sym = known.get(symbol)
                    if sym is None:
                        sym = _first_sight(symbol, intern, known, refused)
                    if sym is not None:
                        add((sym, TRADE, ts, price, size, nan, nan, 0, 0))
                        continue
            elif kind == "quote":
                bid = obj.get("bid")
                ask = obj.get("ask")
                bid_size = obj.get("bid_size")
                ask_size = obj.get("ask_size")
                if (
                    len(obj) == width + 2
                    and type(symbol) is str
                    and type(bid) is float
                    and type(ask) is float
                    and 0.0 < bid <= ask < inf
                    and type(bid_size) is int
                    and 0 <= bid_size <= top
                    and type(ask_size) is int
                    and 0 <= ask_size <= top
                    and type(ts) is int
                    and 0 < ts <= top
                ):
                    sym = known.get(symbol)
                    if sym is None:
                        sym = _first_sight(symbol, intern, known, refused)
                    if sym is not None:
                        add((sym, QUOTE, ts, nan, 0, bid, ask, bid_size, ask_size))
                        continue
        try:
            name, row = _check(obj, now_ns, known)
            sym = known.get(name)
            if sym is None:
                sym = _intern(name, intern, known, refused)
            add((sym, *row))
        except _Invalid as bad:
            rejects.append(Reject(index, bad.field, bad.reason))
    return rows, rejects


def _check(obj: Any, now_ns: int, known: Mapping[str, int]) -> tuple[str, tuple[Any, ...]]:
    """The tick's symbol name and its row without `sym`; raises _Invalid at the first broken
    rule."""
    if not isinstance(obj, Mapping):
        raise _Invalid(None, f"a tick must be a JSON object, got {_json_type(obj)}")
    if "type" not in obj:
        raise _Invalid("type", "missing field 'type'")
    kind = obj["type"]
    keys: tuple[str, ...]
    if kind == "trade":
        keys = _TRADE_KEYS
    elif kind == "quote":
        keys = _QUOTE_KEYS
    else:
        raise _Invalid("type", f"unknown type {_short(kind)}: a tick is a 'trade' or a 'quote'")
    for key in obj:
        if key not in keys:
            raise _Invalid(
                _field_name(key),
                f"unknown field {_short(key)} in a {kind} (its fields: {', '.join(keys)})",
            )
    for key in keys:
        if key != "ts" and key not in obj:
            raise _Invalid(key, f"missing field {key!r} in a {kind}")
    name = obj["symbol"]
    if not (type(name) is str and name in known):
        problem = _name_problem(name)
        if problem is not None:
            raise _Invalid("symbol", problem)
    ts = _integer_value("ts", obj["ts"]) if "ts" in obj else now_ns
    if kind == "trade":
        price = _number_value("price", obj["price"])
        size = _integer_value("size", obj["size"])
        return name, (TRADE, ts, price, size, math.nan, math.nan, 0, 0)
    bid = _number_value("bid", obj["bid"])
    ask = _number_value("ask", obj["ask"])
    bid_size = _integer_value("bid_size", obj["bid_size"])
    ask_size = _integer_value("ask_size", obj["ask_size"])
    if bid > ask:
        raise _Invalid("bid", _crossed(obj["bid"], obj["ask"]))
    return name, (QUOTE, ts, math.nan, 0, bid, ask, bid_size, ask_size)


def _first_sight(
    name: str, intern: Intern, known: dict[str, int], refused: dict[str, str]
) -> int | None:
    """The index of a name not yet seen by this call of the parser, or None when the name is
    bad or refused (the slow path then words the reject)."""
    if name in refused or _name_problem(name) is not None:
        return None
    try:
        return _intern(name, intern, known, refused)
    except _Invalid:
        return None


def _intern(name: str, intern: Intern, known: dict[str, int], refused: dict[str, str]) -> int:
    """`intern(name)` once per call of the parser; a refusal is remembered as well."""
    reason = refused.get(name)
    if reason is None:
        try:
            sym = intern(name)
        except SymbolRejected as exc:
            reason = refused[name] = str(exc) or f"symbol {_short(name)} is rejected"
        else:
            known[name] = sym
            return sym
    raise _Invalid("symbol", reason)


# -- the rules, one value at a time (reasons are worded here only) ----------------------------


def _number_value(field: str, value: Any) -> float:
    problem = _number_problem(field, value)
    if problem is not None:
        raise _Invalid(field, problem)
    return float(value)


def _integer_value(field: str, value: Any) -> int:
    problem = _integer_problem(field, value)
    if problem is not None:
        raise _Invalid(field, problem)
    return int(value)


def _number_problem(field: str, value: Any) -> str | None:
    """What is wrong with `value` as a price, bid or ask, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{field!r} must be a number, got {_short(value)}"
    try:
        number = float(value)
    except OverflowError:
        return f"{field!r} is too large, got {_short(value)}"
    if not math.isfinite(number):
        return f"{field!r} must be finite, got {_short(value)}"
    if number <= 0:
        return f"{field!r} must be positive, got {_short(value)}"
    return None


def _integer_problem(field: str, value: Any) -> str | None:
    """What is wrong with `value` as a ts or a size, or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{field!r} must be an integer, got {_short(value)}"
    if not _INT64_MIN <= value <= _INT64_MAX:
        return f"{field!r} is outside the int64 range, got {_short(value)}"
    if value < _MINIMUM[field]:
        if _MINIMUM[field] > 0:
            return f"{field!r} must be positive, got {value}"
        return f"{field!r} must not be negative, got {value}"
    return None


def _crossed(bid: Any, ask: Any) -> str:
    return f"crossed quote: bid {_short(bid)} is above ask {_short(ask)}"


def _name_problem(name: Any) -> str | None:
    """What is wrong with `name` as a symbol, or None."""
    if not isinstance(name, str):
        return f"'symbol' must be a string, got {_short(name)}"
    if not name:
        return "'symbol' must not be empty"
    if len(name) > MAX_SYMBOL_LENGTH:
        return (
            f"'symbol' must be at most {MAX_SYMBOL_LENGTH} characters, "
            f"got {len(name)}: {_short(name)}"
        )
    if not (name.isascii() and name.isprintable()):
        for char in name:
            if unicodedata.category(char) in ("Cc", "Cf"):
                return (
                    f"'symbol' must not contain control characters, "
                    f"got U+{ord(char):04X} in {_short(name)}"
                )
    if name != name.strip():
        return f"'symbol' must not begin or end with whitespace, got {_short(name)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_name(key: Any) -> str:
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


# -- message shapes ---------------------------------------------------------------------------


def _only_keys(obj: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    for key in obj:
        if key not in keys:
            raise MessageError(f"unknown key {_short(key)} in {what} (its keys: {', '.join(keys)})")


def _message_id(obj: Mapping[str, Any]) -> MessageId:
    message_id = obj.get("id")
    if message_id is not None and (
        isinstance(message_id, bool)
        or not isinstance(message_id, int | str)
        or (isinstance(message_id, str) and len(message_id) > MAX_ID_LENGTH)
    ):
        raise MessageError(
            f"'id' must be an integer or a string of at most {MAX_ID_LENGTH} characters, "
            f"got {_short(message_id)}"
        )
    return message_id


# -- columnar batches -------------------------------------------------------------------------


def _columnar(
    obj: Mapping[str, Any], intern: Intern, now_ns: int, *, exact: bool
) -> tuple[np.ndarray, list[Reject]]:
    """Form 3, validated a column at a time. `exact`: check each cell's type (False only when
    the caller knows no cell is a boolean; other wrong types show in numpy's inferred dtype)."""
    if obj.get("type") != "batch":
        raise MessageError(f"a batch has type 'batch', got {_short(obj.get('type'))}")
    _only_keys(obj, _BATCH_KEYS, "a batch")
    _message_id(obj)
    symbols = obj.get("symbols")
    if not isinstance(symbols, list):
        raise MessageError(f"'symbols' must be an array of names, got {_json_type(symbols)}")
    n = len(_cells(obj, "sym", None))
    cells = {key: _cells(obj, key, n) for key in _COLUMNS if key in ("sym", "kind") or key in obj}
    if n == 0:
        return np.array([], dtype=TICK_DTYPE), []

    # The happy path: each rule as one vector operation over the batch; which rule a rejected
    # tick broke is worked out afterwards, for the rejected ticks only (_broken, _cell_reason).
    columns: dict[str, _Column] = {"kind": _column(cells["kind"], True, exact)}
    kind, kind_bad = columns["kind"]
    is_trade = kind == TRADE
    is_quote = kind == QUOTE
    if kind_bad is not None:
        is_trade &= ~kind_bad
        is_quote &= ~kind_bad
    trades = bool(is_trade.any())
    quotes = bool(is_quote.any())
    for key in (*(_TRADE_COLUMNS if trades else ()), *(_QUOTE_COLUMNS if quotes else ())):
        if key not in cells:
            what = "trades" if key in _TRADE_COLUMNS else "quotes"
            raise MessageError(f"a batch with {what} needs the column {key!r}")
        columns[key] = _column(cells[key], key in _INTEGER_FIELDS, exact)
    for key in ("sym", "ts"):
        if key in cells:
            columns[key] = _column(cells[key], True, exact)
    return _assemble(columns, cells, symbols, is_trade, is_quote, intern, now_ns)


def _assemble(
    columns: dict[str, _Column],
    cells: Mapping[str, Sequence[Any]],
    symbols: list[Any],
    is_trade: np.ndarray,
    is_quote: np.ndarray,
    intern: Intern,
    now_ns: int,
) -> tuple[np.ndarray, list[Reject]]:
    """A batch's columns, converted and checked for shape, validated into the good ticks and
    the rejects (`cells`: the columns as the producer sent them, for the wording of reasons)."""
    trades = bool(is_trade.any())
    quotes = bool(is_quote.any())
    n = len(columns["kind"][0])
    slots = max(len(symbols), 1)  # per-symbol arrays, never empty so that 0 can index them
    sym, sym_bad = columns["sym"]
    sym_ok = (sym >= 0) & (sym < len(symbols))
    if sym_bad is not None:
        sym_ok &= ~sym_bad
    sym_at = np.where(sym_ok, sym, 0)
    bad_name_at = np.zeros(slots, dtype=bool)
    named = _used(sym[sym_ok], slots)
    bad_name_at[[s for s in named if _name_problem(symbols[s]) is not None]] = True
    good = np.zeros(n, dtype=bool)
    if trades:
        good |= is_trade & _positive(columns["price"]) & _at_least(columns["size"], 1)
    if quotes:
        quote_ok = _positive(columns["bid"]) & _positive(columns["ask"])
        quote_ok &= columns["bid"][0] <= columns["ask"][0]
        quote_ok &= _at_least(columns["bid_size"], 0) & _at_least(columns["ask_size"], 0)
        good |= is_quote & quote_ok
    good &= sym_ok
    good &= ~bad_name_at[sym_at]
    if "ts" in columns:
        good &= _at_least(columns["ts"], 1)

    used = _used(sym[good], slots)
    indices: list[int] = []
    refusals: dict[int, str] = {}  # symbol slot: why intern refused it
    known: dict[str, int] = {}
    refused: dict[str, str] = {}
    for s in used:
        name = symbols[s]
        index = known.get(name)
        if index is None:
            try:
                index = _intern(name, intern, known, refused)
            except _Invalid as bad:
                refusals[s] = bad.reason
                index = 0
        indices.append(index)
    table = np.zeros(slots, dtype=np.int64)
    table[used] = indices
    refused_at = np.zeros(slots, dtype=bool)
    if refusals:
        refused_at[list(refusals)] = True
        good &= ~refused_at[sym_at]

    rejects: list[Reject] = []
    values = {key: column for key, (column, _) in columns.items()}
    if not good.all():
        rejected = np.flatnonzero(~good)
        masks = _broken(columns, is_trade, is_quote, len(symbols), bad_name_at[sym_at])
        masks.append(("symbol", refused_at[sym_at]))
        first = np.stack([mask[rejected] for _, mask in masks]).argmax(axis=0)
        for index, which in zip(rejected.tolist(), first.tolist(), strict=True):
            field = masks[which][0]
            reason = _cell_reason(cells, symbols, index, field, refusals)
            rejects.append(Reject(index, field, reason))
        sym_at = sym_at[good]
        is_trade = is_trade[good]
        is_quote = is_quote[good]
        values = {key: column[good] for key, column in values.items()}

    batch = np.empty(len(sym_at), dtype=TICK_DTYPE)
    batch["sym"] = table[sym_at]
    batch["kind"] = values["kind"]
    batch["ts"] = values.get("ts", now_ns)
    for key, wanted, present in (
        ("price", is_trade, trades),
        ("size", is_trade, trades),
        ("bid", is_quote, quotes),
        ("ask", is_quote, quotes),
        ("bid_size", is_quote, quotes),
        ("ask_size", is_quote, quotes),
    ):
        unused = 0 if key in _INTEGER_FIELDS else np.nan
        batch[key] = np.where(wanted, values[key], unused) if present else unused
    return batch, rejects


_Column = tuple[np.ndarray, np.ndarray | None]
"""A column's values and the mask of its cells of a wrong type (None: there are none)."""


def _positive(column: _Column) -> np.ndarray:
    """Finite and above 0, of the right type."""
    values, bad = column
    ok = (values > 0) & (values < math.inf)
    return ok if bad is None else ok & ~bad


def _at_least(column: _Column, minimum: int) -> np.ndarray:
    values, bad = column
    ok = values >= minimum
    return ok if bad is None else ok & ~bad


def _broken(
    columns: Mapping[str, _Column],
    is_trade: np.ndarray,
    is_quote: np.ndarray,
    symbols: int,
    bad_name: np.ndarray,
) -> list[tuple[str, np.ndarray]]:
    """(field, mask of the ticks that break its rule), in the order rules are reported."""
    sym, sym_bad = columns["sym"]
    sym_out = (sym < 0) | (sym >= symbols)
    if sym_bad is not None:
        sym_out |= sym_bad
    masks = [("kind", ~(is_trade | is_quote)), ("sym", sym_out), ("symbol", bad_name & ~sym_out)]
    if "ts" in columns:
        masks.append(("ts", ~_at_least(columns["ts"], 1)))
    for key in (*_TRADE_COLUMNS, *_QUOTE_COLUMNS):
        if key in columns:
            wanted = is_trade if key in _TRADE_COLUMNS else is_quote
            if key in _INTEGER_FIELDS:
                ok = _at_least(columns[key], _MINIMUM[key])
            else:
                ok = _positive(columns[key])
            masks.append((key, wanted & ~ok))
    if "bid" in columns:
        masks.append(("bid", is_quote & (columns["bid"][0] > columns["ask"][0])))
    return masks


def _used(syms: np.ndarray, slots: int) -> list[int]:
    """The distinct values of `syms`, indices in 0..slots-1, ascending."""
    return np.flatnonzero(np.bincount(syms, minlength=slots)).tolist()


def _cells(obj: Mapping[str, Any], key: str, n: int | None) -> list[Any]:
    if key not in obj:
        raise MessageError(f"a batch needs the column {key!r}")
    cells = obj[key]
    if not isinstance(cells, list):
        raise MessageError(f"batch column {key!r} must be an array, got {_json_type(cells)}")
    if n is not None and len(cells) != n:
        raise MessageError(
            f"batch columns must all have the length of 'sym' ({n}), {key!r} has {len(cells)}"
        )
    return cells


def _column(cells: list[Any], integer: bool, exact: bool) -> _Column:
    """The cells as int64 or float64, and the mask of cells of the wrong type or out of int64
    range (their value in the array is 0), None when there are none."""
    target = np.int64 if integer else np.float64
    allowed = (int,) if integer else (int, float)
    if not exact or set(map(type, cells)).issubset(allowed):
        try:
            # Inferred, not forced: a string, a null or an array among the cells shows in the
            # dtype instead of being converted; a too large integer raises or shows too.
            array = np.array(cells) if not exact else np.array(cells, dtype=target)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if array.ndim == 1 and (
                array.dtype == target or (not integer and array.dtype.kind in "iu")
            ):
                return array.astype(target, copy=False), None
    column = np.zeros(len(cells), dtype=target)
    bad = np.zeros(len(cells), dtype=bool)
    for i, cell in enumerate(cells):
        if type(cell) not in allowed or (integer and not _INT64_MIN <= cell <= _INT64_MAX):
            bad[i] = True
            continue
        try:
            column[i] = cell
        except OverflowError:
            bad[i] = True
    return column, bad


def _cell_reason(
    cells: Mapping[str, Sequence[Any]],
    symbols: list[Any],
    index: int,
    field: str,
    refusals: Mapping[int, str],
) -> str:
    """The reason of a rejected cell, worded by the same rules as for tick objects."""
    if field == "kind":
        return f"'kind' must be 0 (trade) or 1 (quote), got {_short(cells['kind'][index])}"
    sym = cells["sym"][index]
    if field == "sym":
        if isinstance(sym, bool) or not isinstance(sym, int):
            return f"'sym' must be an integer index into 'symbols', got {_short(sym)}"
        if not symbols:
            return f"'sym' must index 'symbols', which is empty, got {sym}"
        return f"'sym' must index 'symbols' (0 to {len(symbols) - 1}), got {sym}"
    if field == "symbol":
        problem = _name_problem(symbols[sym])
        return refusals[sym] if problem is None else problem  # a fine name: intern refused it
    value = cells[field][index]
    if field in _INTEGER_FIELDS:
        problem = _integer_problem(field, value)
    else:
        problem = _number_problem(field, value)
        if problem is None and field == "bid":
            return _crossed(value, cells["ask"][index])
    return problem or f"{field!r} is invalid, got {_short(value)}"
