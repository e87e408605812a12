"""A synthetic market: Poisson tick arrivals, GBM prices, realistic quotes and trades.

The core (`TickSimulator.next_batch`) is pure and deterministic under a seed: one call is one
step of market time. At a few ticks per step the fixed cost of some forty numpy calls would
dominate, so steps are drawn in chunks of a few hundred ticks (at most a second of market time),
vectorized over all their ticks, and served one step at a time by slicing: cost follows the number
of ticks, not the number of symbols, and a step costs little more than a copy of its ticks.
`TickSimulator.stream` is the thin clock-driven edge that makes it a `feed.source.Source`: it
keeps an absolute schedule, catches up after stalls and reports through `stats()` what it actually
achieved, so a producer that fell behind is visible.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from feed.ticks import QUOTE, TICK_DTYPE, TRADE, empty

DEFAULT_TICKERS: Final[tuple[str, ...]] = (
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "V", "MA",
    "UNH", "XOM", "JNJ", "WMT", "PG", "HD", "CVX", "LLY", "AVGO", "COST",
    "ABBV", "MRK", "PEP", "KO", "ORCL", "BAC", "ADBE", "CRM", "NFLX", "AMD",
    "TMO", "MCD", "CSCO", "ACN", "ABT", "DIS", "WFC", "INTC", "QCOM", "TXN",
    "DHR", "VZ", "CMCSA", "NKE", "PFE", "IBM", "GS", "CAT", "BA", "UBER",
    "PYPL", "SBUX", "INTU", "AMGN", "HON", "GE",
)  # fmt: skip
"""Well-known US tickers, most active first: demos show names people recognize."""

TICK_SIZE: Final = 0.01
_TICKS_PER_UNIT: Final = 100  # prices are computed as whole ticks / 100: the nearest double

TIME_COMPRESSION: Final = 60.0
"""One second of market time moves prices like one minute of a trading day.

Real intraday volatility is invisible at demo time scales (a 30% name moves ~1 cent a second), so
variance runs 60x faster: a $100 name at 30% volatility moves ~10 cents a second and ~6% an hour.
Lively on screen, still plausible as a busy session.
"""

_TRADING_SECONDS_PER_YEAR: Final = 252 * 6.5 * 3600
_MAX_SYMBOLS: Final = 1_000_000
# Generated names: (length, multiplier coprime to 26, offset) of each length's affine walk.
_NAME_WALKS: Final = ((3, 7_919, 4_321), (4, 104_729, 95_123), (5, 1_299_709, 7_654_321))
_CATCH_UP_SECONDS: Final = 1.0  # a single catch-up batch covers at most this much market time
_UNPACED_BATCH_TICKS: Final = 1024  # unpaced mode merges steps until a batch holds this many
_MIN_SLEEP_NS: Final = 1_000_000  # the resolution of the event loop's timers
_CHUNK: Final = 256  # next_batch draws steps this many expected ticks (or steps) at a time:
# enough to amortize numpy's per-call costs, small enough that drawing a chunk (~0.1 ms) stays
# well under a step
# Row 0 divides trade prices, row 1 quote prices; column 1 is "is a quote". NaN blanks a field.
_DENOMINATORS: Final = np.array([[_TICKS_PER_UNIT, np.nan], [np.nan, _TICKS_PER_UNIT]])
if (TRADE, QUOTE) != (0, 1):  # next_batch writes "is a quote" straight into `kind`
    raise ImportError(f"simulator assumes TRADE == 0 and QUOTE == 1, got {TRADE}, {QUOTE}")


@dataclass(frozen=True)
class SimulatorSettings:
    """What market to simulate and how fast; every field is validated on construction."""

    symbols: int = 100  # how many symbols (the first ones are DEFAULT_TICKERS)
    rate: float = 2000.0  # ticks per second of market time, across all symbols
    seed: int | None = 42  # None draws a fresh market every run
    step: float = 0.001  # seconds of market time per generated batch
    trade_ratio: float = 0.3  # probability a tick is a trade rather than a quote
    burst_factor: float = 1.0  # rate multiplier inside a burst window; 1 = no bursts
    burst_every: float = 5.0  # a burst window opens every this many seconds of market time
    burst_length: float = 1.0  # and lasts this long
    paced: bool = True  # False: generate as fast as possible (benchmarks)
    duration: float | None = None  # seconds of market time to stream; None = forever

    def __post_init__(self) -> None:
        if isinstance(self.symbols, bool) or not isinstance(self.symbols, int):
            raise ValueError(f"symbols must be an integer, got {self.symbols!r}")
        if not 1 <= self.symbols <= _MAX_SYMBOLS:
            raise ValueError(f"symbols must be in [1, {_MAX_SYMBOLS}], got {self.symbols}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        for name in ("rate", "step", "burst_factor", "burst_every", "burst_length"):
            _positive(name, getattr(self, name))
        if not 0.0 <= self.trade_ratio <= 1.0:
            raise ValueError(f"trade_ratio must be in [0, 1], got {self.trade_ratio!r}")
        if self.burst_length > self.burst_every:
            raise ValueError(
                f"burst_length must be <= burst_every ({self.burst_every}), got {self.burst_length}"
            )
        if self.duration is not None:
            _positive("duration", self.duration)

    @property
    def average_rate(self) -> float:
        """The long-run rate asked for: bursts included, in ticks per second of market time."""
        share = self.burst_length / self.burst_every
        return self.rate * (1.0 + (self.burst_factor - 1.0) * share)


def _positive(name: str, value: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class SimulatorStats:
    """What the stream actually delivered, measured against the wall clock."""

    ticks: int  # ticks yielded by stream()
    batches: int  # batches yielded by stream()
    wall_seconds: float  # since stream() first started (frozen while no stream runs)
    achieved_rate: float  # ticks / wall_seconds: measured, never assumed
    requested_rate: float  # average rate asked for over the steps streamed, bursts included
    behind: float  # seconds the paced schedule lags the wall clock; 0 when on time
    market_seconds: float  # market time streamed


def generated_symbol(index: int) -> str:
    """The `index`-th generated name: 3-5 uppercase letters, a bijection of the index.

    Each length's name space is walked by an affine permutation (multiplier coprime to 26), so
    consecutive names look unrelated yet never repeat. Collisions with DEFAULT_TICKERS are
    skipped by `symbol_names`, not here.
    """
    for length, mult, offset in _NAME_WALKS:
        space = 26**length
        if index < space:
            code = (index * mult + offset) % space
            letters = []
            for _ in range(length):
                code, digit = divmod(code, 26)
                letters.append(chr(ord("A") + digit))
            return "".join(letters)
        index -= space
    raise ValueError(f"index must be < {26**3 + 26**4 + 26**5}, got {index}")


def symbol_names(count: int) -> tuple[str, ...]:
    """DEFAULT_TICKERS first, then generated names; deterministic and unique."""
    names = list(DEFAULT_TICKERS[:count])
    taken = set(DEFAULT_TICKERS)
    index = 0
    while len(names) < count:
        name = generated_symbol(index)
        index += 1
        if name not in taken:
            names.append(name)
    return tuple(names)


class TickSimulator:
    """A `feed.source.Source` of synthetic ticks for `settings.symbols` symbols.

    `next_batch()` is the pure core and `stream()` the clocked edge; they share one market, so
    mixing them advances the same clock. Stream with one consumer at a time.
    """

    def __init__(self, settings: SimulatorSettings | None = None) -> None:
        self.settings = s = settings or SimulatorSettings()
        self._rng = np.random.Generator(np.random.PCG64(s.seed))
        self._symbols = symbol_names(s.symbols)
        n, rng = s.symbols, self._rng
        # Per-symbol universe: price levels spread lognormally, volatility 15%..80%, activity
        # Zipf-like by rank (defaults most active) with some jitter.
        mid = np.clip(np.exp(rng.normal(math.log(80.0), 1.0, n)), 5.0, 1000.0)
        vol = np.clip(np.exp(rng.normal(math.log(0.3), 0.4, n)), 0.15, 0.80)
        weight = np.exp(rng.normal(0.0, 0.3, n)) / np.arange(1, n + 1) ** 1.0
        cdf = np.cumsum(weight)
        self._cdf: npt.NDArray[np.float64] = cdf / cdf[-1]
        self._cdf[-1] = 1.0
        self._log_mid: npt.NDArray[np.float64] = np.log(mid)
        self._last_t: npt.NDArray[np.float64] = np.zeros(n)  # market time of each one's last tick
        self._var_rate = vol**2 * TIME_COMPRESSION / _TRADING_SECONDS_PER_YEAR  # per market second
        # Relative quoted spread: ~1.7 bp for a calm name, ~4.5 bp for a wild one.
        self._rel_spread = (0.5 + 5.0 * vol) * 1e-4
        self._k = 0  # steps served so far; step k covers market time [k*step, (k+1)*step)
        self._step_ns = max(1, round(s.step * 1e9))
        # The chunk of drawn steps next_batch serves from: steps [_chunk_start, _chunk_end) as the
        # bytes of their ticks; step _chunk_start + i is bytes _bounds[i]:_bounds[i + 1].
        peak = s.rate * max(1.0, s.burst_factor) * s.step  # expected ticks in a busy step
        most = min(_CHUNK, max(1, round(1.0 / s.step)))  # at most ~1 s of market time
        # ~_CHUNK expected ticks, 1..most steps (peak may be tiny: compare before dividing)
        self._chunk_steps = most if peak * most <= _CHUNK else max(1, math.ceil(_CHUNK / peak))
        self._chunk: npt.NDArray[np.uint8] = empty(0).view(np.uint8)
        self._bounds: list[int] = [0]
        self._chunk_start = self._chunk_end = 0
        # Stream bookkeeping, read by stats().
        self._ticks = 0
        self._batches = 0
        self._stream_steps = 0
        self._stream_expected = 0.0  # sum of Poisson means over streamed steps
        self._wall_start: float | None = None
        self._wall_end: float | None = None
        self._origin_ns = 0  # monotonic ns the paced schedule counts from; 0 = not pacing
        self._paced_done = 0  # steps the paced schedule has emitted since _origin_ns

    @property
    def symbols(self) -> Sequence[str]:
        """Names indexed by `sym`; fixed for the simulator's life."""
        return self._symbols

    def _mean(self, k: int) -> float:
        """Expected ticks in step k: the burst window is the start of every burst_every."""
        s = self.settings
        rate = s.rate
        if s.burst_factor != 1.0 and (k * s.step) % s.burst_every < s.burst_length:
            rate *= s.burst_factor
        return rate * s.step

    def _means(self, k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """`_mean` of every step in `k`, computed alike."""
        s = self.settings
        means = np.full(len(k), s.rate * s.step)
        if s.burst_factor != 1.0:
            means[(k * s.step) % s.burst_every < s.burst_length] = s.rate * s.burst_factor * s.step
        return means

    def next_batch(self) -> np.ndarray:
        """The next step of market time; `ts` is left 0, the batch may be empty.

        Ticks are in time order. Each symbol's mid follows exact GBM from its own last tick, so a
        quiet symbol costs nothing until it ticks again. The batch is a copy of the step's slice
        of the current chunk (drawn when the last one runs out), so callers may mutate it; bytes
        are copied because a structured copy costs twice as much.
        """
        if self._k == self._chunk_end:
            self._draw_chunk()
        i = self._k - self._chunk_start
        self._k += 1
        return self._chunk[self._bounds[i] : self._bounds[i + 1]].copy().view(TICK_DTYPE)

    def _draw_chunk(self) -> None:
        """Draw the next `_chunk_steps` steps at once: numpy's per-call costs are paid per chunk.

        Poisson counts per step, then each tick at (k + u) * step with u uniform; sorting the
        chunk's times sorts every step's ticks, and each step keeps its own count of them.
        """
        rng, k0 = self._rng, self._k
        ks = np.arange(k0, k0 + self._chunk_steps, dtype=np.int64)
        counts = rng.poisson(self._means(ks))
        bounds = np.zeros(len(ks) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        self._bounds = (bounds * TICK_DTYPE.itemsize).tolist()
        self._chunk_start, self._chunk_end = k0, k0 + len(ks)
        self._chunk = self._draw(np.repeat(ks, counts)).view(np.uint8)

    def _draw(self, k: npt.NDArray[np.int64]) -> np.ndarray:
        """Ticks in time order, the i-th in step k[i] (`k` sorted)."""
        rng, n = self._rng, len(k)
        if n == 0:
            return empty(0)
        u = rng.random((6, n))  # rows: time, symbol, kind, trade placement, spread, odd lot
        t = np.sort(k + u[0]) * self.settings.step
        sym = np.searchsorted(self._cdf, u[1], side="right")
        mid_ticks = self._walk(sym, t) * _TICKS_PER_UNIT

        # Quotes straddle the mid on the tick grid. Trades print at the bid (45%), at the ask
        # (45%) or anywhere in between (10%): `w` is 0, 1 or uniform accordingly.
        spread = np.maximum(1.0, np.rint(mid_ticks * self._rel_spread[sym] * (0.5 + u[4])))
        bid = np.maximum(1.0, np.rint(mid_ticks - 0.5 * spread))
        ask = bid + spread
        w = np.maximum(0.0, (u[3] - 0.45) * 10.0)
        trade_px = bid + np.minimum(spread, np.floor(w * (spread + 1.0)))
        sizes = rng.geometric(0.35, (3, n)) * 100  # round lots: bid, ask, trade
        odd = u[5] * (99 / 0.25)  # a quarter of trades are odd lots of 1..99
        trade_size = np.where(odd < 99.0, 1 + odd.astype(np.int64), sizes[2])

        is_trade = u[2] < self.settings.trade_ratio
        is_quote = ~is_trade
        trade_den, quote_den = _DENOMINATORS[:, is_quote.view(np.uint8)]  # x / NaN = NaN
        batch = np.empty(n, dtype=TICK_DTYPE)
        batch["sym"] = sym
        batch["kind"] = is_quote  # QUOTE is 1, TRADE is 0 (checked at import)
        batch["ts"] = 0
        np.divide(trade_px, trade_den, out=batch["price"])
        np.multiply(trade_size, is_trade, out=batch["size"])
        np.divide(bid, quote_den, out=batch["bid"])
        np.divide(ask, quote_den, out=batch["ask"])
        np.multiply(sizes[0], is_quote, out=batch["bid_size"])
        np.multiply(sizes[1], is_quote, out=batch["ask_size"])
        return batch

    def _walk(self, sym: npt.NDArray[np.intp], t: npt.NDArray[np.float64]) -> np.ndarray:
        """Mid of each tick: its symbol's GBM advanced from that symbol's previous tick.

        `t` is sorted. A symbol ticking several times in a chunk walks through each tick in time
        order (a per-symbol cumulative sum), so the path is exact whatever the step.
        """
        var_rate, log_mid, last_t = self._var_rate, self._log_mid, self._last_t
        n = len(sym)
        order = np.argsort(sym, kind="stable")  # by symbol, then time
        s_sym, s_t = sym[order], t[order]
        first = np.empty(n, dtype=np.bool_)
        first[0] = True
        np.not_equal(s_sym[1:], s_sym[:-1], out=first[1:])
        z = self._rng.standard_normal(n)
        if first.all():  # no symbol twice: common in a small chunk
            var = var_rate[sym] * (t - last_t[sym])
            log = log_mid[sym] + np.sqrt(var) * z - 0.5 * var
            log_mid[sym] = log
            last_t[sym] = t
            return np.exp(log)
        prev_t = np.empty(n)
        prev_t[1:] = s_t[:-1]
        prev_t[first] = last_t[s_sym[first]]
        var = var_rate[s_sym] * (s_t - prev_t)
        inc = np.sqrt(var) * z - 0.5 * var
        path = np.cumsum(inc)
        starts = np.flatnonzero(first)
        base = log_mid[s_sym[starts]] - path[starts] + inc[starts]
        s_log = base[np.cumsum(first) - 1] + path
        last = np.empty(n, dtype=np.bool_)
        last[-1] = True
        last[:-1] = first[1:]
        log_mid[s_sym[last]] = s_log[last]
        last_t[s_sym[last]] = s_t[last]
        mid = np.empty(n)
        mid[order] = np.exp(s_log)
        return mid

    def _steps(self, most: int, enough: float = math.inf) -> np.ndarray:
        """Up to `most` steps concatenated, stopping early once `enough` ticks are in.

        Each step is the one `next_batch` returns, so what a stream emits is the same sequence of
        ticks however the clock groups steps into batches.
        """
        parts: list[np.ndarray] = []
        count = ticks = 0
        expected = 0.0
        while count < most and ticks < enough:
            expected += self._mean(self._k)
            batch = self.next_batch()
            count += 1
            if len(batch):
                parts.append(batch)
                ticks += len(batch)
        self._stream_expected += expected
        self._stream_steps += count
        if not parts:
            return empty(0)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def stream(self) -> AsyncGenerator[np.ndarray, None]:
        """Yield non-empty batches stamped with `time.time_ns()` when yielded.

        Paced: the k-th step (k = 1, 2, ...) of this stream is due at start + k*step on the
        monotonic clock, an absolute schedule, so sleep errors never accumulate; every step due is
        emitted in one batch, so after a stall the stream catches up, at most `_CATCH_UP_SECONDS`
        of market time per batch. Unpaced: steps back to back, merged up to ~`_UNPACED_BATCH_TICKS`
        ticks per batch, with an event-loop turn between batches. Each call streams `duration`
        seconds of market time if set, forever otherwise.
        """
        s, step_ns = self.settings, self._step_ns
        end = None if s.duration is None else self._k + max(1, round(s.duration / s.step))
        cap = max(1, round(_CATCH_UP_SECONDS / s.step))
        if self._wall_start is None:
            self._wall_start = time.perf_counter()
        self._wall_end = None
        try:
            if s.paced:
                self._origin_ns, self._paced_done = time.monotonic_ns(), 0
            while end is None or self._k < end:
                left = cap if end is None else min(cap, end - self._k)
                more = True  # unpaced, or paced with steps still due after this batch
                if s.paced:
                    now = time.monotonic_ns()
                    due = (now - self._origin_ns) // step_ns - self._paced_done
                    if due <= 0:
                        next_due = self._origin_ns + (self._paced_done + 1) * step_ns
                        # libuv (uvloop) rounds a timer under a millisecond down to none: such
                        # a sleep returns at once and the loop would spin until the step is due.
                        # Sleep at least a millisecond, as asyncio's own loop does; the absolute
                        # schedule takes the steps that came due meanwhile in one batch.
                        await asyncio.sleep(max(next_due - now, _MIN_SLEEP_NS) / 1e9)
                        continue
                    count = min(due, left)
                    more = count < due
                    self._paced_done += count
                    batch = self._steps(count)
                else:
                    batch = self._steps(left, _UNPACED_BATCH_TICKS)
                if len(batch):
                    self._ticks += len(batch)
                    self._batches += 1
                    batch["ts"] = time.time_ns()
                    yield batch
                # The event loop gets a turn whatever the consumer does: when no sleep is due
                # next (catching up, or the consumer took longer than a step), take it now.
                if more or not len(batch) or not s.paced or self._due() > 0:
                    await asyncio.sleep(0)
        finally:
            self._origin_ns = 0
            self._wall_end = time.perf_counter()

    def _due(self) -> int:
        """Paced steps due now and not yet emitted."""
        return (time.monotonic_ns() - self._origin_ns) // self._step_ns - self._paced_done

    def stats(self) -> SimulatorStats:
        """A snapshot of what stream() delivered so far."""
        s = self.settings
        if self._wall_start is None:
            wall = 0.0
        else:
            end = time.perf_counter() if self._wall_end is None else self._wall_end
            wall = end - self._wall_start
        market = self._stream_steps * s.step
        behind = 0.0
        if self._origin_ns:
            next_due = self._origin_ns + (self._paced_done + 1) * self._step_ns
            behind = max(0.0, (time.monotonic_ns() - next_due) / 1e9)
        return SimulatorStats(
            ticks=self._ticks,
            batches=self._batches,
            wall_seconds=wall,
            achieved_rate=self._ticks / wall if wall > 0 else 0.0,
            requested_rate=self._stream_expected / market if market > 0 else s.average_rate,
            behind=behind,
            market_seconds=market,
        )
