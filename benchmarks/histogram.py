"""A log-linear latency histogram in the manner of HdrHistogram, recorded in numpy batches.

Values are whole microseconds. Below 2,048 µs every value has its own bucket; above, each power
of two is split into 1,024 buckets, so any recorded value is known to within 0.1%. A batch of
latencies is recorded with one `bincount`, which keeps the load generator's cost per snapshot low;
two histograms merge by adding counts, so processes can report separately.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LINEAR = 2048
_HALF = 1024
_MAX_EXPONENT = 40  # values up to 2**51 µs; larger ones are clamped
_BUCKETS = _LINEAR + _MAX_EXPONENT * _HALF


def _index(values: np.ndarray) -> np.ndarray:
    """Bucket index of each non-negative int64 value."""
    values = np.minimum(values, (1 << (_MAX_EXPONENT + 11)) - 1)
    _, exponent = np.frexp(values.astype(np.float64))  # exponent == bit_length for ints < 2**53
    shift = np.maximum(exponent - 11, 0)
    return np.where(
        values < _LINEAR,
        values,
        _LINEAR + (shift - 1) * _HALF + (values >> shift) - _HALF,
    )


def _highest_equivalent(index: np.ndarray) -> np.ndarray:
    """The largest value that falls in each bucket."""
    index = np.asarray(index, dtype=np.int64)
    shift = np.where(index < _LINEAR, 0, (index - _LINEAR) // _HALF + 1)
    sub = np.where(index < _LINEAR, index, (index - _LINEAR) % _HALF + _HALF)
    return ((sub + 1) << shift) - 1


class Histogram:
    """Counts of latencies (µs) in log-linear buckets, plus exact min, max, sum and count."""

    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.total = 0
        self.min = 0
        self.max = 0
        self.sum = 0
        self.negative = 0
        """Values below zero seen (clock offset not corrected); recorded as 0."""

    def record(self, values: np.ndarray | list[int]) -> None:
        array = np.asarray(values, dtype=np.int64)
        if not array.size:
            return
        negative = array < 0
        if negative.any():
            self.negative += int(negative.sum())
            array = np.maximum(array, 0)
        low, high = int(array.min()), int(array.max())
        self.min = low if self.total == 0 else min(self.min, low)
        self.max = max(self.max, high)
        self.total += int(array.size)
        self.sum += int(array.sum())
        self.counts += np.bincount(_index(array), minlength=_BUCKETS)

    def merge(self, other: Histogram) -> None:
        if not other.total:
            return
        self.min = other.min if self.total == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        self.sum += other.sum
        self.negative += other.negative
        self.counts += other.counts

    def percentile(self, q: float) -> int:
        """The value at or below which `q` percent of the recorded values fall (0 if empty)."""
        if not self.total:
            return 0
        if q >= 100:
            return self.max
        rank = max(1, int(np.ceil(self.total * q / 100.0)))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        return int(min(_highest_equivalent(np.array([index]))[0], self.max))

    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "count": self.total,
            "min": self.min,
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "p99.9": self.percentile(99.9),
            "max": self.max,
            "mean": round(self.mean(), 1),
        }

    def curve(self) -> list[tuple[float, int]]:
        """(percentile, value) points for a percentile plot, denser towards the tail."""
        points = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0]
        tail = 90.0
        finest = 100.0 * (1 - 1 / max(self.total, 1))  # no point beyond one sample's worth
        while tail < min(99.9999, finest):
            tail = 100 - (100 - tail) / 2**0.5
            points.append(round(tail, 5))
        return [(q, self.percentile(q)) for q in points] + [(100.0, self.max)]

    def to_dict(self) -> dict[str, Any]:
        """A sparse form for JSON (another process, or the run's document)."""
        nonzero = np.flatnonzero(self.counts)
        return {
            "buckets": nonzero.tolist(),
            "counts": self.counts[nonzero].tolist(),
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "negative": self.negative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.counts[np.asarray(data["buckets"], dtype=np.int64)] = data["counts"]
        histogram.total = data["total"]
        histogram.min = data["min"]
        histogram.max = data["max"]
        histogram.sum = data["sum"]
        histogram.negative = data["negative"]
        return histogram
