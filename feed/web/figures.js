// Live figures for the dashboard's header: a sliding window of latencies with percentiles, and
// rates (updates, frames) per second. Pure: no DOM, no clock of their own (the caller passes
// the time), so the same code runs in a test under Node.

const MIN_MS = 0.01;
const GROWTH = 1.02;
const BUCKETS = 920; // 0.01 ms × 1.02^920 ≈ 8.4e5 ms: every latency worth telling apart
const LOG_GROWTH = Math.log(GROWTH);

/** The histogram bucket of a latency in ms: log-linear, 2% wide (values ≤ 0.01 ms share 0). */
function bucketOf(ms) {
  if (!(ms > MIN_MS)) return 0;
  return Math.min(BUCKETS - 1, 1 + Math.floor(Math.log(ms / MIN_MS) / LOG_GROWTH));
}

/** The value a bucket stands for: its geometric middle, in ms. */
function valueOf(bucket) {
  return bucket === 0 ? 0 : MIN_MS * GROWTH ** (bucket - 0.5);
}

/**
 * Latencies (ms) of the last `seconds` seconds, as one histogram per second: adding is O(1),
 * a percentile costs one pass over the buckets, whatever the rate. Percentiles are within 1%.
 */
export class LatencyWindow {
  /** @param {number} seconds the window's length */
  constructor(seconds = 10) {
    this.seconds = seconds;
    this.slots = Array.from({ length: seconds }, () => new Uint32Array(BUCKETS));
    this.stamps = new Float64Array(seconds).fill(-1); // the second each slot holds
    this.counts = new Uint32Array(seconds);
  }

  /** @param {number} ms a latency @param {number} nowMs the time it was measured */
  add(ms, nowMs) {
    const second = Math.floor(nowMs / 1000);
    const i = second % this.seconds;
    if (this.stamps[i] !== second) {
      this.slots[i].fill(0);
      this.counts[i] = 0;
      this.stamps[i] = second;
    }
    this.slots[i][bucketOf(ms)] += 1;
    this.counts[i] += 1;
  }

  /**
   * @param {number} nowMs
   * @param {number[]} quantiles e.g. [0.5, 0.99]
   * @returns {{count: number, values: (number|null)[]}} values in ms, null when empty
   */
  percentiles(nowMs, quantiles) {
    const second = Math.floor(nowMs / 1000);
    const live = [];
    let count = 0;
    for (let i = 0; i < this.seconds; i++) {
      if (this.stamps[i] > second - this.seconds && this.stamps[i] <= second && this.counts[i]) {
        live.push(this.slots[i]);
        count += this.counts[i];
      }
    }
    if (count === 0) return { count, values: quantiles.map(() => null) };
    const ranks = quantiles.map((q) => Math.max(1, Math.ceil(q * count)));
    const values = quantiles.map(() => null);
    let seen = 0;
    let next = 0;
    for (let b = 0; b < BUCKETS && next < ranks.length; b++) {
      for (const slot of live) seen += slot[b];
      while (next < ranks.length && seen >= ranks[next]) values[next++] = valueOf(b);
    }
    return { count, values };
  }
}

/** Events per second over a sliding second, in 100 ms steps. */
export class RateMeter {
  constructor() {
    this.steps = new Float64Array(11);
    this.stamps = new Float64Array(11).fill(-1);
  }

  /** @param {number} n events @param {number} nowMs */
  add(n, nowMs) {
    const step = Math.floor(nowMs / 100);
    const i = step % 11;
    if (this.stamps[i] !== step) {
      this.steps[i] = 0;
      this.stamps[i] = step;
    }
    this.steps[i] += n;
  }

  /** Events in the last ten complete steps (one second), per second. */
  perSecond(nowMs) {
    const step = Math.floor(nowMs / 100);
    let total = 0;
    for (let i = 0; i < 11; i++) {
      if (this.stamps[i] >= step - 10 && this.stamps[i] < step) total += this.steps[i];
    }
    return total;
  }
}
