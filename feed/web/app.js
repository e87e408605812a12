// The dashboard: a live board of the watched symbols over one FeedClient (/feed-client.js).
//
// Flow: the client emits a "snapshot" per symbol per message received; the page keeps only
// the newest per symbol (`pending`) and writes them to the board in an animation frame, never
// per message: the rows in view, oldest first, as many as the frame budget allows (see "the
// frame loop" below), a cell only when its text changes. The watchlist (watchlist.js) is
// kept in localStorage, `?symbols=A,B` overrides it; board.js draws the rows, figures.js
// keeps the header's figures. The header shows the connection state (and the reconnect
// countdown), the tick-to-screen latency (from a painted snapshot's `ts`, on the server's
// clock, to the frame that painted it), updates per second and the ticks conflated.
//
// Test and benchmark hook (read-only): `window.feedDashboard`
//   .state        the connection state ("connecting", "live", "reconnecting", "offline")
//   .latency()    {p50, p99, count}: ms over the last 10 s (null while nothing was painted)
//   .fps()        animation frames drawn in the last second (one is asked for only when
//                 something changed: under a steady feed, the frame rate)
//   .rate()       snapshots received in the last second
//   .counters()   {frames, received, painted}: totals since the page opened
//   .frame()      {costMs, budgetMs, rowsPerFrame}: what a frame costs, and the rows it may write
//   .watchlist()  the symbols on the board, in order
// Tests still look at what a person sees; this is for figures that are not on screen exactly.

import { FeedClient } from "/feed-client.js";
import { Board } from "./board.js";
import { LatencyWindow, RateMeter } from "./figures.js";
import { Watchlist, parseSymbols } from "./watchlist.js";

const DEFAULT_COUNT = 16; // the first watchlist: the feed's first symbols
const SLOW_MS = 250; // header, ages, countdown: four times a second
const SUBSCRIBE_BYTES = 3000; // per request, under the server's 4 KiB message limit
const SUGGESTIONS = 50;
const UNKNOWN_POLL_MS = 3000; // while symbols on the board are not carried: look again

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $("conn"),
  connText: $("conn-text"),
  banner: $("banner"),
  p50: $("lat-p50"),
  p99: $("lat-p99"),
  rate: $("rate"),
  conflated: $("conflated"),
  table: $("board"),
  empty: $("empty"),
  form: $("add-form"),
  search: $("search"),
  options: $("symbol-options"),
  notice: $("notice"),
  share: $("share"),
  clock: $("foot-clock"),
};

const params = new URLSearchParams(location.search);
const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
const options = {
  backoffInitialMs: 250,
  backoffMaxMs: 5000,
  watchdogMs: 12000, // the server heartbeats every 5 s when idle
  pingIntervalMs: 5000,
  token: params.get("token") ?? undefined,
};
const client = new FeedClient(wsUrl, options);

let storage = null;
try {
  storage = window.localStorage;
} catch {
  // Storage refused (sandboxed frame): the list lives for this page only.
}
const watchlist = new Watchlist(storage, params);
const board = new Board($("rows"), $("viewport"), {
  remove: (symbol) => edit(() => watchlist.remove(symbol)),
  move: (symbol, delta) => edit(() => watchlist.move(symbol, delta)),
  moveTo: (symbol, index) => edit(() => watchlist.moveTo(symbol, index)),
  shown: () => schedule(),
});

// ---- what the frame loop works from -------------------------------------------------------

/**
 * The newest snapshot not yet on screen, per symbol, oldest first: a Map keeps the order in
 * which keys were first set, and a newer snapshot of a symbol takes its predecessor's place.
 * @type {Map<string, {snap: object, fresh: boolean}>}
 */
const pending = new Map();
/** seq on screen per symbol: a snapshot sent again (resubscribe) is not a new tick */
const painted = new Map();
const latency = new LatencyWindow(10);
const received = new RateMeter(); // on the epoch clock (receivedMs)
const frames = new RateMeter();
const totals = { frames: 0, received: 0, painted: 0 };
const conn = { state: client.state, retryAt: 0, attempt: 0, wasLive: false };
let known = null; // the feed's symbols (from /symbols), once fetched
let knownAt = 0;
let fetching = null; // the /symbols request under way
let unknownTimer = 0;

client.on("snapshot", (snap, info) => {
  const now = info.receivedMs; // ms since the epoch
  totals.received += 1;
  received.add(1, now);
  board.row(snap.symbol)?.record(snap.last, now);
  // An initial snapshot is the state at subscription, not a tick that just happened: painted,
  // not timed.
  const fresh = info?.kind === "update" || pending.get(snap.symbol)?.fresh === true;
  pending.set(snap.symbol, { snap, fresh });
  schedule();
});

client.on("status", ({ state, symbols, reason }) => {
  board.setStale(symbols, state === "stale" ? reason || "stale" : null);
});

client.on("state", ({ state, attempt, retryInMs }) => {
  conn.state = state;
  conn.attempt = attempt ?? 0;
  conn.retryAt = retryInMs ? performance.now() + retryInMs : 0;
  if (state === "live") {
    conn.wasLive = true;
    refreshKnown(true); // a restarted feed may carry other symbols
  } else if (conn.wasLive) {
    board.clearStale(); // told again on resubscribe
  }
  showConnection(performance.now());
});

client.on("error", (error) => {
  if (error?.code === "unknown_symbol") refreshKnown(true);
});

// A reconnected feed that no longer lists some symbols (a restarted one whose producers have
// not ticked them yet): their rows say so until /symbols lists them again.
client.on("refused", () => refreshKnown(true));

// The clock offset used for latency. The client's estimate (server − local, from the fastest
// of its last 8 pings) is only known within ± half that ping's round trip: the page takes the
// value in that interval closest to zero, so that clocks that agree (one host, NTP) are taken
// to agree, and a busy page (late to read a pong, which skews the estimate) cannot make
// latencies up.
const rtts = [];
let offsetMs = 0;
client.on("pong", ({ rttMs, clockOffsetMs }) => {
  rtts.push(rttMs);
  if (rtts.length > 8) rtts.shift();
  const half = Math.min(...rtts) / 2;
  offsetMs = Math.min(clockOffsetMs + half, Math.max(clockOffsetMs - half, 0));
  const sign = clockOffsetMs >= 0 ? "+" : "−";
  ui.clock.textContent =
    `clock ${sign}${Math.abs(clockOffsetMs).toFixed(1)} ± ${half.toFixed(1)} ms` +
    ` · rtt ${rttMs.toFixed(1)} ms`;
});

// ---- the frame loop ----------------------------------------------------------------------
//
// A frame is asked for only when there is something to show (a snapshot, a flash to put out,
// the four-times-a-second refresh of the header and the ages). Each frame writes the pending
// rows that are on screen, oldest first, up to `rowsPerFrame`. What a frame costs the main
// thread (script, style, layout, paint: from the start of the animation frame callback to a
// task of the highest priority posted in it, which runs once the frame is rendered) steers
// that number: above FRAME_BUDGET_MS it shrinks, below it, while rows are waiting, it grows.
// Under light load every update is on screen in the next frame; under overload the rows on
// screen are refreshed in turn, the frame rate holds, and the wait shows in the latency
// figures, which count from the tick to the frame that painted it.

const FRAME_BUDGET_MS = 4;
const MIN_ROWS = 3;
const MAX_ROWS = 400;
let rowsPerFrame = 12;
let frameCost = 0; // ms, smoothed
let backlog = false; // rows on screen were left for the next frame
let requested = false;
let slowDue = true;

/** Ask for an animation frame (once: every reason to draw is served by the same frame). */
function schedule() {
  if (!requested) {
    requested = true;
    requestAnimationFrame(frame);
  }
}

setInterval(() => {
  slowDue = true;
  schedule();
}, SLOW_MS);

/** After the frame is rendered: a task of the highest priority, ahead of queued messages. */
const afterRender =
  globalThis.scheduler?.postTask !== undefined
    ? (fn) => scheduler.postTask(fn, { priority: "user-blocking" })
    : (fn) => setTimeout(fn, 0);

function measured(start) {
  const cost = performance.now() - start;
  frameCost = frameCost ? frameCost * 0.8 + cost * 0.2 : cost;
  if (frameCost > FRAME_BUDGET_MS) {
    rowsPerFrame = Math.max(MIN_ROWS, Math.floor(rowsPerFrame * 0.8));
  } else if (backlog && frameCost < FRAME_BUDGET_MS * 0.8) {
    rowsPerFrame = Math.min(MAX_ROWS, rowsPerFrame + 1);
  }
}

function frame() {
  requested = false;
  if (board.placeDue) board.place(); // scrolled or resized: which rows are in view
  const now = performance.now();
  totals.frames += 1;
  frames.add(1, now);
  const wrote = pending.size ? flush(now) : 0;
  const lit = board.sweep(now);
  if (slowDue) {
    slowDue = false;
    slow(now);
  }
  if (wrote) afterRender(() => measured(now));
  if (backlog || lit) schedule();
}

/** Write the pending rows on screen (oldest first, within the budget); time each fresh one
 * against this frame. Returns the rows written. */
function flush(now) {
  const fresh = [];
  let written = 0;
  backlog = false;
  for (const [symbol, { snap, fresh: isFresh }] of pending) {
    const row = board.row(symbol);
    if (row === undefined) {
      pending.delete(symbol);
      continue;
    }
    if (!row.visible) continue; // written once scrolled into view
    if (written >= rowsPerFrame) {
      backlog = true;
      break;
    }
    pending.delete(symbol);
    board.apply(row, snap, now);
    written += 1;
    const before = painted.get(symbol);
    painted.set(symbol, snap.seq);
    if (isFresh && snap.ts != null && (before === undefined || snap.seq !== before)) {
      fresh.push(snap.ts);
    }
  }
  totals.painted += written;
  if (fresh.length) {
    // On screen from this frame: its writes are done. ts is ns on the server's clock.
    const paintedAt = performance.timeOrigin + performance.now();
    for (const ts of fresh) latency.add(paintedAt - (ts / 1e6 - offsetMs), now);
  }
  return written;
}

function slow(now) {
  board.slow(now, performance.timeOrigin + now + offsetMs);
  const { values } = latency.percentiles(now, [0.5, 0.99]);
  write(ui.p50, ms(values[0]));
  write(ui.p99, ms(values[1]));
  write(ui.rate, received.perSecond(performance.timeOrigin + now).toLocaleString("en-US"));
  let conflated = 0;
  for (const symbol of watchlist.symbols) conflated += client.stats(symbol)?.conflated ?? 0;
  write(ui.conflated, compact(conflated));
  showConnection(now);
}

/** A latency for the header: "0.84 ms", "37 ms", "1.2 s". */
function ms(value) {
  if (value == null) return "–";
  if (value < 10) return `${value.toFixed(2)} ms`;
  if (value < 1000) return `${value.toFixed(0)} ms`;
  return `${(value / 1000).toFixed(1)} s`;
}

/** A count for the header: "9,876", "12.3k", "4.56M". */
function compact(n) {
  if (n < 10_000) return n.toLocaleString("en-US");
  if (n < 1e6) return `${(n / 1e3).toFixed(1)}k`;
  return `${(n / 1e6).toFixed(2)}M`;
}

function write(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// ---- the connection, as a person sees it ---------------------------------------------------

function showConnection(now) {
  const { state } = conn;
  const seconds = Math.max(0, Math.ceil((conn.retryAt - now) / 1000));
  let label;
  let banner = "";
  if (state === "live") {
    label = "Live";
  } else if (state === "reconnecting") {
    label = conn.retryAt > now ? `Reconnecting in ${seconds} s` : "Reconnecting…";
    banner =
      "Connection lost: the figures below are frozen. " +
      (conn.retryAt > now ? `Reconnecting in ${seconds} s` : "Reconnecting now") +
      (conn.attempt > 1 ? ` (attempt ${conn.attempt}).` : ".");
  } else if (state === "offline") {
    label = "Offline";
    banner = "Offline: not connected to the feed. Reload the page to try again.";
  } else {
    label = conn.wasLive ? "Reconnecting…" : "Connecting…";
    if (conn.wasLive) banner = "Connection lost: the figures below are frozen. Reconnecting now.";
  }
  if (ui.conn.dataset.state !== state) ui.conn.dataset.state = state;
  write(ui.connText, label);
  write(ui.banner, banner);
  if (ui.banner.hidden !== !banner) ui.banner.hidden = !banner;
  if (ui.table.classList.contains("offline") !== Boolean(banner)) {
    ui.table.classList.toggle("offline", Boolean(banner));
  }
}

// ---- the watchlist and the subscriptions --------------------------------------------------

const subscribed = new Set(); // what the client has been asked to hold

/** Apply an edit of the watchlist: board, storage (by the watchlist), address, server. */
function edit(change) {
  if (!change()) return;
  render();
}

function render() {
  board.setSymbols(watchlist.symbols);
  ui.empty.hidden = watchlist.symbols.length > 0;
  const query = watchlist.query();
  ui.share.href = query;
  if (watchlist.inUrl && location.search !== query) {
    history.replaceState(null, "", query + location.hash);
  }
  sync();
}

/** Subscribe what the board shows and the feed carries; unsubscribe what left the board. */
function sync() {
  const wanted = new Set(watchlist.symbols);
  const gone = [...subscribed].filter((s) => !wanted.has(s));
  for (const s of gone) {
    subscribed.delete(s);
    pending.delete(s);
    painted.delete(s);
  }
  for (const chunk of chunks(gone)) client.unsubscribe(chunk).catch(() => {});
  const unknown = known ? watchlist.symbols.filter((s) => !known.has(s)) : [];
  // Not carried (yet: a restarted feed learns a producer's symbols from its ticks): asked for
  // again once /symbols lists them, which is looked at every few seconds meanwhile.
  for (const s of unknown) subscribed.delete(s);
  const notCarried = new Set(unknown);
  for (const s of watchlist.symbols) board.row(s)?.setUnknown(notCarried.has(s));
  clearTimeout(unknownTimer);
  if (unknown.length) unknownTimer = setTimeout(() => refreshKnown(true), UNKNOWN_POLL_MS);
  const fresh = watchlist.symbols.filter((s) => !subscribed.has(s) && !notCarried.has(s));
  for (const chunk of chunks(fresh)) {
    for (const s of chunk) subscribed.add(s);
    client.subscribe(chunk).catch((error) => {
      // Refused whole (a symbol the feed dropped, a limit): ask again once the list is fresh.
      for (const s of chunk) subscribed.delete(s);
      if (error?.code === "unknown_symbol") refreshKnown(true);
      else notice(error?.message ?? String(error));
    });
  }
  if (unknown.length) {
    notice(`Not carried by this feed: ${unknown.join(", ")}`);
  }
}

/** Lists of symbols whose subscribe message stays under the server's size limit. */
function chunks(symbols) {
  const out = [];
  let chunk = [];
  let bytes = 0;
  for (const s of symbols) {
    const size = JSON.stringify(s).length + 1;
    if (chunk.length && bytes + size > SUBSCRIBE_BYTES) {
      out.push(chunk);
      chunk = [];
      bytes = 0;
    }
    chunk.push(s);
    bytes += size;
  }
  if (chunk.length) out.push(chunk);
  return out;
}

/** Fetch the feed's symbol list (at most every 5 s unless `force`), then sync again. */
function refreshKnown(force = false) {
  const now = performance.now();
  if (fetching) return fetching;
  if (!force && known && now - knownAt < 5000) return Promise.resolve(known);
  knownAt = now;
  fetching = client
    .symbols()
    .then(
      (list) => {
        known = new Set(list);
        if (watchlist.needsDefault) {
          watchlist.setDefault(list.slice(0, DEFAULT_COUNT));
          render();
        } else {
          sync();
        }
      },
      () => {}, // the feed is away: fetched again when it is back (the "live" state)
    )
    .then(() => {
      fetching = null;
      return known;
    });
  return fetching;
}

// ---- adding symbols ----------------------------------------------------------------------

let noticeTimer = 0;

function notice(text) {
  ui.notice.textContent = text;
  clearTimeout(noticeTimer);
  if (text) noticeTimer = setTimeout(() => (ui.notice.textContent = ""), 6000);
}

/** The feed's spelling of a symbol typed in any case, or null. */
function resolve(typed) {
  if (!known) return null;
  if (known.has(typed)) return typed;
  const upper = typed.toUpperCase();
  if (known.has(upper)) return upper;
  for (const s of known) if (s.toUpperCase() === upper) return s;
  return null;
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const typed = parseSymbols(ui.search.value);
  if (!typed.length) return;
  await refreshKnown(!known);
  if (!known) {
    notice("The feed is not reachable: try again once it is live.");
    return;
  }
  const added = [];
  const problems = [];
  for (const t of typed) {
    const symbol = resolve(t);
    if (symbol === null) problems.push(`unknown symbol ${t}`);
    else if (watchlist.has(symbol)) problems.push(`${symbol} is already on the board`);
    else added.push(symbol);
  }
  if (added.length) edit(() => watchlist.add(added).length > 0);
  notice(problems.length ? problems.join("; ").replace(/^./, (c) => c.toUpperCase()) : "");
  if (!problems.length) ui.search.value = "";
  suggest();
});

ui.search.addEventListener("focus", () => refreshKnown().then(suggest));
ui.search.addEventListener("input", () => suggest());

/** Fill the completion list with the symbols that match what is typed, not yet on the board. */
function suggest() {
  if (!known) return;
  const typed = ui.search.value.split(",").pop().trim().toUpperCase();
  const starts = [];
  const contains = [];
  for (const s of known) {
    if (watchlist.has(s)) continue;
    const upper = s.toUpperCase();
    if (upper.startsWith(typed)) starts.push(s);
    else if (typed && upper.includes(typed)) contains.push(s);
    if (starts.length >= SUGGESTIONS) break;
  }
  const options = [...starts, ...contains].slice(0, SUGGESTIONS);
  ui.options.replaceChildren(
    ...options.map((s) => {
      const option = document.createElement("option");
      option.value = s;
      return option;
    }),
  );
}

// ---- start --------------------------------------------------------------------------------

window.feedDashboard = Object.freeze({
  get state() {
    return client.state;
  },
  latency() {
    const { count, values } = latency.percentiles(performance.now(), [0.5, 0.99]);
    return { p50: values[0], p99: values[1], count };
  },
  fps() {
    return frames.perSecond(performance.now());
  },
  rate() {
    return received.perSecond(performance.timeOrigin + performance.now());
  },
  counters() {
    return { ...totals };
  },
  frame() {
    return { costMs: frameCost, budgetMs: FRAME_BUDGET_MS, rowsPerFrame };
  },
  watchlist() {
    return [...watchlist.symbols];
  },
});

client.connect();
if (watchlist.needsDefault) {
  ui.empty.hidden = true; // the default list comes with /symbols
} else {
  render();
}
refreshKnown(true);
showConnection(performance.now());
schedule();
