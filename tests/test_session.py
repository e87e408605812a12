"""The session, sans I/O: requests in, actions out, no socket (feed/session.py).

And the writer's throttles, with a transport that keeps what it is given (feed/writer.py): what
a throttled subscription is sent, and when, read off the frames and the wake-ups it asks for.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from feed.config import LimitsConfig
from feed.protocol import CloseCode, ErrorCode
from feed.ratelimit import TokenBucket
from feed.session import Close, Hold, Release, Send, SendSnapshot, Session, TellStale
from feed.symbols import SymbolTable
from feed.views import view_of
from feed.writer import DEFAULT, Options, OptionsWriter, Writer

NAMES = ["AAPL", "MSFT", "BTC-USD", "BTC-EUR", "ETH-USD", "ES*>"]


def session(limits: LimitsConfig | None = None, names: list[str] = NAMES) -> Session:
    table = SymbolTable(names)
    limits = limits or LimitsConfig()
    return Session(
        table.lookup, table, limits, TokenBucket(limits.control_rate, limits.control_burst, 0.0)
    )


def request(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(a.message) for a in actions if isinstance(a, Send)]


def test_a_subscribe_answers_holds_sends_the_state_and_tells_what_is_stale() -> None:
    s = session()
    actions = s.receive(request(op="subscribe", symbols=["MSFT", "AAPL"], id=7), 0.0)
    assert [type(a) for a in actions] == [Send, Hold, SendSnapshot, TellStale]
    assert sent(actions) == [{"type": "subscribed", "id": 7, "symbols": ["MSFT", "AAPL"]}]
    assert actions[1] == Hold([1, 0], DEFAULT)
    assert s.held == {1: DEFAULT, 0: DEFAULT}


def test_options_are_parsed_into_a_throttle_and_a_view() -> None:
    s = session()
    actions = s.receive(
        request(op="subscribe", symbols=["AAPL"], throttle_ms=250, fields=["bid", "ask"]), 0.0
    )
    hold = actions[1]
    assert isinstance(hold, Hold)
    assert hold.options == Options(0.25, view_of(["bid", "ask"]))
    view = hold.options.view
    assert view is not None and view.fields == ("symbol", "seq", "ts", "bid", "ask", "epoch")
    # Subscribing again changes them.
    again = s.receive(request(op="subscribe", symbols=["AAPL"]), 1.0)
    assert again[1] == Hold([0], DEFAULT)


@settings(max_examples=200)
@given(
    st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.text(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(0, 9)),
    ),
    st.one_of(st.none(), st.lists(st.text(max_size=12), max_size=4), st.integers(0, 9), st.text()),
)
def test_bad_options_are_an_error_naming_the_key_and_nothing_changes(
    throttle: Any, fields: Any
) -> None:
    s = session()
    message: dict[str, Any] = {"op": "subscribe", "symbols": ["AAPL"], "throttle_ms": throttle}
    if fields is not None:
        message["fields"] = fields
    actions = s.receive(orjson.dumps(message), 0.0)
    good_throttle = isinstance(throttle, int) and not isinstance(throttle, bool)
    good_throttle = good_throttle and 0 <= throttle <= 60_000
    known = {"last", "bid", "ask", "seq", "ts", "symbol", "volume", "vwap", "epoch", "high"}
    good_fields = fields is None or (
        isinstance(fields, list) and all(isinstance(f, str) and f in known for f in fields)
    )
    if good_throttle and good_fields:
        assert isinstance(actions[1], Hold)
        return
    (error,) = sent(actions)
    assert error["type"] == "error" and error["code"] == ErrorCode.BAD_REQUEST
    assert ("throttle_ms" if not good_throttle else "field") in error["message"]
    assert s.held == {}


def test_a_pattern_holds_what_matches_now_and_what_appears_later() -> None:
    names = list(NAMES)
    s = session(names=names)
    actions = s.receive(request(op="subscribe", symbols=["BTC-*"], id=1), 0.0)
    (answer,) = sent(actions)
    assert answer == {
        "type": "subscribed",
        "id": 1,
        "symbols": ["BTC-*"],
        "matched": ["BTC-USD", "BTC-EUR"],
    }
    assert actions[1] == Hold([2, 3], DEFAULT)
    table = s.names
    assert isinstance(table, SymbolTable)
    new = table.add("BTC-JPY")
    other = table.add("SOL-USD")
    assert s.match_new(new) == DEFAULT and s.match_new(other) is None
    # A name the market holds is that symbol, even with a wildcard in it.
    exact = s.receive(request(op="subscribe", symbols=["ES*>"], id=2), 0.0)
    assert sent(exact) == [{"type": "subscribed", "id": 2, "symbols": ["ES*>"]}]
    # Unsubscribing the pattern lets go of what it matched.
    gone = s.receive(request(op="unsubscribe", symbols=["BTC-*"], id=3), 0.0)
    assert isinstance(gone[0], Release) and sorted(gone[0].syms) == [2, 3, new]
    assert s.match_new(table.add("BTC-GBP")) is None


def test_limits_count_what_patterns_match() -> None:
    s = session(LimitsConfig(max_symbols_per_connection=2))
    (error,) = sent(s.receive(request(op="subscribe", symbols=["*"], id=4), 0.0))
    assert error["code"] == ErrorCode.TOO_MANY_SYMBOLS and "limit is 2" in error["message"]
    assert s.held == {} and s.patterns == {}


def test_over_the_rate_the_session_asks_for_the_documented_close() -> None:
    s = session(LimitsConfig(control_rate=1, control_burst=2))
    ping = request(op="ping")
    assert isinstance(s.receive(ping, 0.0)[0], Send)
    assert isinstance(s.receive(ping, 0.0)[0], Send)
    (close,) = s.receive(ping, 0.0)
    assert close == Close(CloseCode.POLICY_VIOLATION, "more than 1 messages per second")


def test_unknown_symbols_are_an_error_and_hold_nothing() -> None:
    s = session()
    (error,) = sent(s.receive(request(op="subscribe", symbols=["AAPL", "NOPE"], id=5), 0.0))
    assert error == {
        "type": "error",
        "id": 5,
        "code": "unknown_symbol",
        "message": "unknown symbol(s): NOPE",
    }
    assert s.held == {}


# -- the writer's throttle ------------------------------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1)


class WebSocket:
    closed = False


class Frames:
    """The frames a writer asks for, as (symbol, view) lists, to read back."""

    def symbol_frame(self, sym: int) -> bytes:
        return orjson.dumps([[sym, None]])

    def frame(self, items: list[tuple[int, Any]]) -> bytes:
        return orjson.dumps([[s, v.fields if v else None] for s, v in items])

    update_frame = None

    @property
    def views(self) -> Frames:  # the market's views: here the same fake
        return self


def writer() -> tuple[Writer, Transport, list[float]]:
    transport = Transport()
    wakes: list[float] = []
    w = Writer(
        WebSocket(),  # type: ignore[arg-type]
        transport,  # type: ignore[arg-type]
        write_limit=65536,
        bucket=TokenBucket(1, 1, 0.0),
        now=0.0,
        wake=lambda _w, delay: wakes.append(delay),
    )
    return w, transport, wakes


def test_a_throttled_symbol_gets_one_update_per_interval_and_the_last_is_never_lost() -> None:
    w, transport, wakes = writer()
    w.set_options([0], Options(throttle=0.25))
    assert isinstance(w, OptionsWriter)
    frames = Frames()
    w.mailbox[0] = None
    assert w.flush(0.0, frames)  # type: ignore[arg-type]
    assert len(transport.frames) == 1 and wakes == []
    for t in (0.05, 0.10, 0.20):  # three more updates within the interval: held, conflated
        w.mailbox[0] = None
        w.flush(t, frames)  # type: ignore[arg-type]
    assert len(transport.frames) == 1
    assert w.throttled == 2 and wakes == [0.25 - 0.05]
    w.release(0.25)  # the interval ends: the newest goes out
    w.flush(0.25, frames)  # type: ignore[arg-type]
    assert len(transport.frames) == 2 and orjson.loads(transport.frames[1]) == [[0, None]]
    # An unthrottled symbol beside it is never held.
    w.mailbox[1] = None
    w.flush(0.26, frames)  # type: ignore[arg-type]
    assert orjson.loads(transport.frames[2]) == [[1, None]]


def test_dropping_the_options_sends_what_was_held_and_restores_the_plain_writer() -> None:
    w, transport, _ = writer()
    frames = Frames()
    w.set_options([0], Options(throttle=1.0, view=view_of(["last"])))
    w.mailbox[0] = None
    w.flush(0.0, frames)  # type: ignore[arg-type]
    w.mailbox[0] = None
    w.flush(0.1, frames)  # type: ignore[arg-type]
    assert w.held == {0: None}
    w.set_options([0], DEFAULT)
    assert type(w) is Writer and w.held == {} and list(w.mailbox) == [0]
    w.flush(0.2, frames)  # type: ignore[arg-type]
    assert orjson.loads(transport.frames[-1]) == [[0, None]]


# -- the sweeper ------------------------------------------------------------------------------


async def test_the_sweeper_heartbeats_the_idle_and_closes_who_stays_full_past_the_timeout() -> None:
    from feed.config import WebSocketConfig
    from feed.hub import Hub
    from feed.market import Market
    from feed.sweeper import Sweeper

    class Full(Transport):
        buffered = 0

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def abort(self) -> None:
            pass

    class ClosingWebSocket(WebSocket):
        async def close(self, code: int, message: bytes) -> None:
            self.closed_with = code

    now = [100.0]
    hub = Hub(
        Market(["AAPL"]),
        LimitsConfig(slow_consumer_timeout=10.0),
        WebSocketConfig(heartbeat_interval=5.0, write_buffer_limit=10),
        clock=lambda: now[0],
    )
    idle_t, full_t = Full(), Full()
    idle = hub.connect(ClosingWebSocket(), idle_t)  # type: ignore[arg-type]
    full = hub.connect(ClosingWebSocket(), full_t)  # type: ignore[arg-type]
    sweeper = Sweeper(hub)
    full_t.buffered = 1_000  # its socket stays full from now on
    assert sweeper.sweep([idle.id, full.id]) == 2 and idle_t.frames == [] and full_t.frames == []
    now[0] += 6.0  # idle past heartbeat_interval: a heartbeat; the full one is not written to
    sweeper.sweep([idle.id, full.id])
    assert b'"type":"heartbeat"' in idle_t.frames[-1] and full_t.frames == []
    now[0] += 5.0  # full for 11 s, past slow_consumer_timeout
    sweeper.sweep([idle.id, full.id])
    assert hub.counters["closed_slow"] == 1 and full.close_code == 4008
    assert idle.close_code is None
    # A budget of 0 stops after one connection and says where to go on from.
    assert sweeper.sweep([idle.id, full.id], 0, budget=0.0) == 1


def test_the_protocol_knows_the_snapshot_fields_in_wire_order() -> None:
    from feed.coalescer import SNAPSHOT_FIELDS
    from feed.protocol import SNAPSHOT_FIELD_NAMES

    assert SNAPSHOT_FIELD_NAMES == SNAPSHOT_FIELDS


def test_the_hub_is_full_at_its_limit_of_live_connections() -> None:
    """Connections lost and waiting for their teardown (feed.intake paces it, a few per turn)
    do not count: a storm's dropped clients leave room for the same clients reconnecting."""
    from feed.config import LimitsConfig, WebSocketConfig
    from feed.hub import Hub
    from feed.market import Market

    hub = Hub(Market(["AAPL"]), LimitsConfig(max_connections=2), WebSocketConfig())
    for _ in range(2):
        hub.connect(WebSocket(), Transport())  # type: ignore[arg-type]
    assert hub.full
    lost = [1]
    hub.lost = lambda: lost[0]  # one of them lost, its teardown left for a later turn
    assert not hub.full
    lost[0] = 0
    assert hub.full
