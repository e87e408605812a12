"""Churn and storms against a live `feed serve` process, the short version of
`python -m benchmarks.storm`: every phase at a small scale, with the stall prober running.

No wall-clock assertion (the 100 ms stall target is the benchmark's to measure): the checks are
that every phase ends with the server's connections and descriptors back at the baseline (and,
after the storm and the server's compaction, its RSS within 32 MiB of it), the half-open clients
closed as slow consumers, every reconnected client holding a snapshot of its
own symbols and an update after it, and the prober never disconnected.
"""

from __future__ import annotations

from benchmarks import storm


def test_churn_vanish_half_open_and_a_storm_leave_nothing_behind() -> None:
    code = storm.main(
        [
            "--clients",
            "1000",
            "--cycles",
            "1000",
            "--vanish",
            "300",
            "--half-open",
            "5",
            "--slow-timeout",
            "2",
            "--no-stall-target",
            "--feed-set",
            "gc.settle=2",  # the compaction sooner than the default's 10 s
        ]
    )
    assert code == 0  # the report is printed (pytest shows it on failure)
