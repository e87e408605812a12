"""Protocol v1: what clients send, what the server answers, and how it is framed.

Pure functions and values, no I/O: requests are parsed from text into typed values or a
`ProtocolError` carrying the error code the client will see; server messages are encoded to bytes
once and written as they are. Every code a client can see (error codes, close codes) is defined
here and specified in docs/protocol.md.
"""

from __future__ import annotations

import reprlib
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

RequestId = int | str | None


class CloseCode(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    """The server is shutting down."""
    POLICY_VIOLATION = 1008
    """The client sent control messages faster than allowed."""
    MESSAGE_TOO_BIG = 1009
    """A client message exceeded the maximum size."""
    TRY_AGAIN_LATER = 1013
    """The server is at its connection limit."""
    SLOW_CONSUMER = 4008
    """The client read nothing while its socket stayed full for longer than allowed."""


class ErrorCode(StrEnum):
    """Codes of error frames; the connection stays open after each."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    BAD_SYMBOLS = "bad_symbols"
    UNKNOWN_SYMBOL = "unknown_symbol"
    TOO_MANY_SYMBOLS = "too_many_symbols"
    NOT_ENTITLED = "not_entitled"
    BINARY_NOT_SUPPORTED = "binary_not_supported"


class ProtocolError(Exception):
    """A request the server cannot serve; becomes an error frame, never a disconnect."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Subscribe:
    symbols: tuple[str, ...]
    id: RequestId = None
    throttle_ms: int = 0
    """At most one update per symbol per this many ms (0: every one)."""
    fields: tuple[str, ...] | None = None
    """The snapshot fields wanted (None: all)."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    symbols: tuple[str, ...]
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId = None


Request = Subscribe | Unsubscribe | Ping

OPS: Final = ("subscribe", "unsubscribe", "ping")
MAX_ID_LENGTH: Final = 64
MAX_SYMBOL_LENGTH: Final = 64


def parse_request(data: str | bytes) -> Request:
    """Parse one client text frame.

    Raises ProtocolError with the request's id (when one could be read) for anything malformed.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"a request must be a JSON object, got {type(obj).__name__}"
        )
    request_id = obj.get("id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, int | str)
        or (isinstance(request_id, str) and len(request_id) > MAX_ID_LENGTH)
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'id' must be an integer or a string of at most {MAX_ID_LENGTH} characters",
        )
    op = obj.get("op")
    if op == "ping":
        return Ping(request_id)
    if op == "subscribe":
        return Subscribe(
            _symbols(obj, request_id),
            request_id,
            _throttle(obj, request_id),
            _fields(obj, request_id),
        )
    if op == "unsubscribe":
        return Unsubscribe(_symbols(obj, request_id), request_id)
    if op is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing 'op'", request_id)
    raise ProtocolError(
        ErrorCode.UNKNOWN_OP,
        f"unknown op {_short(op)}; expected one of {', '.join(OPS)}",
        request_id,
    )


def _symbols(obj: dict[str, Any], request_id: RequestId) -> tuple[str, ...]:
    symbols = obj.get("symbols")
    if not isinstance(symbols, list) or not symbols:
        raise ProtocolError(
            ErrorCode.BAD_SYMBOLS, "'symbols' must be a non-empty list of strings", request_id
        )
    for symbol in symbols:
        if not isinstance(symbol, str) or not symbol or len(symbol) > MAX_SYMBOL_LENGTH:
            raise ProtocolError(
                ErrorCode.BAD_SYMBOLS,
                f"each symbol must be a string of 1 to {MAX_SYMBOL_LENGTH} characters, "
                f"got {_short(symbol)}",
                request_id,
            )
    return tuple(dict.fromkeys(symbols))  # de-duplicated, order kept


MAX_THROTTLE_MS: Final = 60_000

SNAPSHOT_FIELD_NAMES: Final = (
    "symbol", "seq", "ts", "last", "last_size", "bid", "ask", "bid_size", "ask_size", "open",
    "high", "low", "volume", "vwap", "trades", "epoch",
)  # fmt: skip
"""feed.coalescer.SNAPSHOT_FIELDS (tests check they agree), without importing numpy here."""


def _throttle(obj: dict[str, Any], request_id: RequestId) -> int:
    value = obj.get("throttle_ms", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THROTTLE_MS:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'throttle_ms' must be an integer from 0 to {MAX_THROTTLE_MS}, got {_short(value)}",
            request_id,
        )
    return value


def _fields(obj: dict[str, Any], request_id: RequestId) -> tuple[str, ...] | None:
    if "fields" not in obj or obj["fields"] is None:
        return None
    fields = obj["fields"]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "'fields' must be a list of snapshot field names", request_id
        )
    unknown = [f for f in fields if f not in SNAPSHOT_FIELD_NAMES]
    if unknown:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"unknown field(s) {', '.join(_short(f) for f in unknown[:5])}; known: "
            f"{', '.join(SNAPSHOT_FIELD_NAMES)}",
            request_id,
        )
    return tuple(dict.fromkeys(fields))


_REPR = reprlib.Repr()
"""Short and bounded: a deeply nested value (a thousand levels fit in 4 KiB) never recurses."""
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40
_REPR.maxlist = _REPR.maxdict = 4


def _short(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- server messages --------------------------------------------------------------------------


def _with_id(message: dict[str, Any], request_id: RequestId) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def subscribed(request_id: RequestId, symbols: list[str] | tuple[str, ...]) -> bytes:
    return orjson.dumps(_with_id({"type": "subscribed"}, request_id) | {"symbols": symbols})


def unsubscribed(request_id: RequestId, symbols: list[str] | tuple[str, ...]) -> bytes:
    return orjson.dumps(_with_id({"type": "unsubscribed"}, request_id) | {"symbols": symbols})


def pong(request_id: RequestId, ts: int) -> bytes:
    return orjson.dumps(_with_id({"type": "pong"}, request_id) | {"ts": ts})


def error(code: ErrorCode, message: str, request_id: RequestId = None) -> bytes:
    return orjson.dumps(
        _with_id({"type": "error"}, request_id) | {"code": code.value, "message": message}
    )


def status(state: str, symbols: list[str], reason: str | None = None) -> bytes:
    """`stale` (with why) or `live` again, for the symbols a connection holds."""
    message: dict[str, Any] = {"type": "status", "state": state, "symbols": symbols}
    if reason is not None:
        message["reason"] = reason
    return orjson.dumps(message)


def heartbeat(ts: int) -> bytes:
    return b'{"type":"heartbeat","ts":%d}' % ts


def snapshot_frame(payloads: list[bytes]) -> bytes:
    """The answer to a subscribe: the current state of each symbol, already encoded."""
    return b'{"type":"snapshot","data":[' + b",".join(payloads) + b"]}"


_UPDATE_HEAD: Final = b'{"type":"update","data":['
_TAIL: Final = b"]}"


def update_frame(payloads: list[bytes]) -> bytes:
    """Pending snapshots of a connection, several per frame: frames, not bytes, cost most."""
    if len(payloads) == 1:
        return _UPDATE_HEAD + payloads[0] + _TAIL
    return _UPDATE_HEAD + b",".join(payloads) + _TAIL


def encode_update(snapshot: dict[str, Any]) -> bytes:
    """The update message that carries `snapshot` alone, in one encoding (the same bytes as
    `update_frame([encode_snapshot(snapshot)])`)."""
    return orjson.dumps({"type": "update", "data": [snapshot]})


def update_payload(message: bytes) -> bytes:
    """The snapshot inside an update message of one snapshot, as `encode_snapshot` gives it."""
    return message[_PAYLOAD_START:-_PAYLOAD_END]


_PAYLOAD_START: Final = len(_UPDATE_HEAD)
_PAYLOAD_END: Final = len(_TAIL)


def encode_snapshot(snapshot: dict[str, Any]) -> bytes:
    """Encode one snapshot; done once per change, the same bytes go to every subscriber.

    Copied to its size: orjson leaves each result in an 8 KiB allocation, and the market keeps
    one per symbol (8 MB for 1,000 symbols instead of 250 KB)."""
    return bytes(memoryview(orjson.dumps(snapshot)))


# -- framing ----------------------------------------------------------------------------------

_TEXT_FIN: Final = 0x81


_SHORT_HEADERS: Final = tuple(bytes((0x81, n)) for n in range(126))


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, unfragmented text frame (server to client)."""
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, length)
    return struct.pack("!BBQ", _TEXT_FIN, 127, length)


def text_frame(message: bytes) -> bytes:
    """`message` as one unmasked, unfragmented text frame, ready for the transport."""
    return text_frame_header(len(message)) + message
