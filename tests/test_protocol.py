"""Parsing client messages and encoding server messages, without a socket."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feed import protocol
from feed.protocol import ErrorCode, Ping, ProtocolError, Subscribe, Unsubscribe


def test_subscribe_unsubscribe_ping() -> None:
    assert protocol.parse_request('{"op":"subscribe","symbols":["AAPL","MSFT"],"id":1}') == (
        Subscribe(("AAPL", "MSFT"), 1)
    )
    assert protocol.parse_request(b'{"op":"unsubscribe","symbols":["AAPL"],"id":"x"}') == (
        Unsubscribe(("AAPL",), "x")
    )
    assert protocol.parse_request('{"op":"ping","id":3}') == Ping(3)
    assert protocol.parse_request('{"op":"ping"}') == Ping(None)


def test_duplicate_symbols_are_folded_in_order() -> None:
    request = protocol.parse_request('{"op":"subscribe","symbols":["B","A","B"]}')
    assert request == Subscribe(("B", "A"))


@pytest.mark.parametrize(
    ("text", "code", "request_id"),
    [
        ("{nope", ErrorCode.BAD_JSON, None),
        ("[1,2]", ErrorCode.BAD_REQUEST, None),
        ('{"symbols":["A"],"id":4}', ErrorCode.BAD_REQUEST, 4),
        ('{"op":"dance","id":5}', ErrorCode.UNKNOWN_OP, 5),
        ('{"op":"subscribe","id":6}', ErrorCode.BAD_SYMBOLS, 6),
        ('{"op":"subscribe","symbols":[],"id":7}', ErrorCode.BAD_SYMBOLS, 7),
        ('{"op":"subscribe","symbols":"AAPL","id":8}', ErrorCode.BAD_SYMBOLS, 8),
        ('{"op":"subscribe","symbols":[1],"id":9}', ErrorCode.BAD_SYMBOLS, 9),
        ('{"op":"subscribe","symbols":[""]}', ErrorCode.BAD_SYMBOLS, None),
        ('{"op":"ping","id":[1]}', ErrorCode.BAD_REQUEST, None),
        ('{"op":"ping","id":true}', ErrorCode.BAD_REQUEST, None),
    ],
)
def test_malformed_requests_name_the_problem(
    text: str, code: ErrorCode, request_id: object
) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request(text)
    assert info.value.code is code
    assert info.value.request_id == request_id
    assert info.value.message


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_input_parses_or_raises_a_protocol_error(data: str | bytes) -> None:
    try:
        request = protocol.parse_request(data)
    except ProtocolError as exc:
        assert exc.code in ErrorCode
        frame = orjson.loads(protocol.error(exc.code, exc.message, exc.request_id))
        assert frame["type"] == "error" and frame["code"] == exc.code.value
    else:
        assert isinstance(request, Subscribe | Unsubscribe | Ping)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["op", "symbols", "id", "extra"]) | st.text(max_size=5),
        json_values | st.sampled_from(["subscribe", "unsubscribe", "ping"]),
        max_size=5,
    )
)
def test_any_json_object_parses_or_raises_a_protocol_error(obj: dict[str, object]) -> None:
    try:
        request = protocol.parse_request(orjson.dumps(obj))
    except ProtocolError as exc:
        assert exc.code in ErrorCode
    else:
        assert obj["op"] in ("subscribe", "unsubscribe", "ping")
        assert request.id == obj.get("id")
        if not isinstance(request, Ping):
            assert list(request.symbols) == list(dict.fromkeys(obj["symbols"]))  # type: ignore[call-overload]


def test_server_messages() -> None:
    assert orjson.loads(protocol.subscribed(1, ["A"])) == {
        "type": "subscribed",
        "id": 1,
        "symbols": ["A"],
    }
    assert orjson.loads(protocol.unsubscribed(None, [])) == {"type": "unsubscribed", "symbols": []}
    assert orjson.loads(protocol.pong(3, 42)) == {"type": "pong", "id": 3, "ts": 42}
    assert orjson.loads(protocol.heartbeat(7)) == {"type": "heartbeat", "ts": 7}
    assert orjson.loads(protocol.error(ErrorCode.UNKNOWN_OP, "no", 2)) == {
        "type": "error",
        "id": 2,
        "code": "unknown_op",
        "message": "no",
    }
    snaps = [b'{"symbol":"A"}', b'{"symbol":"B"}']
    assert orjson.loads(protocol.update_frame(snaps)) == {
        "type": "update",
        "data": [{"symbol": "A"}, {"symbol": "B"}],
    }
    assert orjson.loads(protocol.snapshot_frame([])) == {"type": "snapshot", "data": []}


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 10**6])
def test_text_frame_header_lengths(length: int) -> None:
    header = protocol.text_frame_header(length)
    assert header[0] == 0x81  # FIN + text
    if length < 126:
        assert header[1] == length and len(header) == 2
    elif length < 65536:
        assert header[1] == 126 and int.from_bytes(header[2:4]) == length
    else:
        assert header[1] == 127 and int.from_bytes(header[2:10]) == length


def test_an_encoded_snapshot_occupies_about_its_own_size() -> None:
    """The market keeps one encoded snapshot per symbol; orjson's own result sits in an 8 KiB
    allocation, which for 10,000 symbols would be 80 MB of mostly empty memory."""
    snapshot = {"symbol": "AAPL", "seq": 7, "ts": 1_700_000_000_000_000_000, "last": 190.25}
    tracemalloc.start()
    try:
        payloads = [protocol.encode_snapshot(snapshot) for _ in range(100)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 100 * (len(payloads[0]) + 100) + 2_000  # the objects, the list, no slack
