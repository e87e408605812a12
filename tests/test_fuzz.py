"""Fuzzing a live `feed serve` process, the short version of `python -m benchmarks.fuzz`.

Every category of benchmarks/fuzzcases.py (client JSON, random bytes, binary frames, fragments,
control frames, sizes, the handshake, every HTTP route) against one server, with a bystander
subscribed throughout: no failure, the bystander undisturbed, the server's connections and
descriptors back where they were, and its RSS within a bound. The two deviations the fuzzer
found (a deeply nested request, a message of exactly the limit) are fixed and tested here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from benchmarks import fuzzcases as fc

CASES = 150
"""Cases per category: about 15 s for all of them on the project's VM."""
RSS_TOLERANCE = 16 << 20
"""See benchmarks/fuzz.py: arenas pymalloc keeps after the 1 MiB cases, not a leak."""


@pytest.fixture(scope="module")
def served() -> Iterator[fc.Served]:
    served = fc.start_serve()
    yield served
    fc.stop_serve(served)


def test_fuzz_every_category_with_a_bystander(served: fc.Served) -> None:
    target = served.target
    bystander = fc.Bystander(target, ["AAPL", "MSFT", "NVDA"])
    bystander.start()
    assert bystander.ready.wait(10), "the bystander got no snapshot"
    for name in fc.CATEGORIES:  # warm-up: first routes and allocations are not growth
        fc.run_category(target, name, 3, fc.Tally())
    baseline = fc.settle(target, fc.resources(target), 15)
    tally = fc.Tally()
    for name in fc.CATEGORIES:
        fc.run_category(target, name, CASES, tally)
    fc.run_rate(target, tally)
    after = fc.settle(target, baseline, 15)
    bystander.stop.set()
    bystander.join(5)
    assert tally.failures == []
    assert set(tally.cases) == {*fc.CATEGORIES, "rate"}
    assert served.process.poll() is None
    assert bystander.problems == [] and bystander.updates > 0
    assert after.connections == baseline.connections
    assert after.fds <= baseline.fds
    assert after.rss - baseline.rss <= RSS_TOLERANCE


def _case(target: fc.Target, payload: bytes) -> fc.Case:
    return fc.Case(
        "json", payload[:40].decode(), [fc.frame(0x1, payload)], fc.expect_text(target, payload)
    )


def test_a_message_of_exactly_the_limit_is_answered(served: fc.Served) -> None:
    target = served.target
    head = b'{"op":"ping","id":1,"pad":"'
    payload = head + b"x" * (target.max_message_size - len(head) - 2) + b'"}'
    assert len(payload) == target.max_message_size
    fc.check(target, _case(target, payload))


@pytest.mark.parametrize("field", ["op", "symbols"])
def test_a_deeply_nested_request_is_answered_with_an_error(served: fc.Served, field: str) -> None:
    target = served.target
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    if field == "op":
        payload = b'{"op":' + deep + b',"id":5}'
        expect = fc.Answer("error", "unknown_op", 5)
    else:
        payload = b'{"op":"subscribe","symbols":[' + deep + b'],"id":5}'
        expect = fc.Answer("error", "bad_symbols", 5)
    started = time.monotonic()
    # The expectation is written out: reading the payload back would recurse in the test too.
    fc.check(target, fc.Case("json", f"{field} 1,000 deep", [fc.frame(0x1, payload)], expect))
    assert time.monotonic() - started < fc.TIMEOUT
