"""The token bucket that bounds how fast one client may send control messages."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; the caller supplies the clock."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token; False when none is left (the client is over its rate)."""
        elapsed = now - self._last
        self._last = now
        tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
