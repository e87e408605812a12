"""The benchmark histogram: every value lands in a bucket within 0.1% of it."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.histogram import Histogram, _highest_equivalent, _index


@given(st.lists(st.integers(0, 2**45), min_size=1, max_size=200))
def test_buckets_are_within_a_tenth_of_a_percent(values: list[int]) -> None:
    array = np.array(values, dtype=np.int64)
    index = _index(array)
    high = _highest_equivalent(index)
    assert (high >= array).all()
    assert ((high - array) * 1024 <= array).all()  # exact below 2,048; then within 1/1024
    assert (np.diff(_index(np.sort(array))) >= 0).all()  # monotonic


@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=500), st.floats(0, 100))
def test_percentiles_match_numpy_within_resolution(values: list[int], q: float) -> None:
    histogram = Histogram()
    histogram.record(values)
    exact = float(np.percentile(values, q, method="inverted_cdf")) if q > 0 else min(values)
    assert exact <= histogram.percentile(q) <= max(exact * 1.001 + 1, exact)
    assert histogram.max == max(values) and histogram.min == min(values)


def test_merge_and_round_trip() -> None:
    a, b = Histogram(), Histogram()
    a.record([1, 2, 3, 5000])
    b.record(np.array([10, -4]))
    a.merge(b)
    assert a.total == 6 and a.negative == 1 and a.min == 0 and a.max == 5000
    back = Histogram.from_dict(a.to_dict())
    assert back.summary() == a.summary()
    assert a.summary()["p50"] == 2  # of 0, 1, 2, 3, 10, 5000


@given(
    st.integers(-(10**12), 10**12),
    st.lists(
        st.tuples(st.integers(0, 10**9), st.integers(0, 10**6), st.integers(0, 10**6)),
        min_size=1,
        max_size=50,
    ),
)
def test_clock_offset_is_within_its_uncertainty(
    true_offset: int, trips: list[tuple[int, int, int]]
) -> None:
    """Whatever the delays each way, the true offset lies within the estimate's uncertainty."""
    from benchmarks.clock import estimate

    samples = []
    for sent, there, back in trips:
        server_ts = sent + there + true_offset  # stamped on arrival, in server clock
        samples.append((sent, server_ts, sent + there + back))
    result = estimate(samples)
    assert abs(result.offset_ns - true_offset) <= result.uncertainty_ns + 1
