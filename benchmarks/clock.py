"""Clock offset between a client and a server on another host, from ping/pong round trips.

Each sample is (client send time, server timestamp, client receive time). The server stamped its
clock somewhere inside the round trip, so the sample with the shortest round trip bounds the
offset most tightly: offset = server_ts - midpoint, give or take half that round trip.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClockOffset:
    offset_ns: int
    """Server clock minus client clock."""
    uncertainty_ns: int
    """Half the shortest round trip: the offset is known to within this."""
    rtt_min_ns: int
    rtt_median_ns: int
    samples: int


def estimate(samples: list[tuple[int, int, int]]) -> ClockOffset:
    """Offset from (sent_ns, server_ts_ns, received_ns) samples, all in ns."""
    if not samples:
        raise ValueError("no ping samples to estimate a clock offset from")
    rtts = sorted(received - sent for sent, _, received in samples)
    sent, server_ts, received = min(samples, key=lambda s: s[2] - s[0])
    rtt = received - sent
    return ClockOffset(
        offset_ns=server_ts - (sent + received) // 2,
        uncertainty_ns=rtt // 2,
        rtt_min_ns=rtt,
        rtt_median_ns=rtts[len(rtts) // 2],
        samples=len(samples),
    )
