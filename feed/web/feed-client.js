/**
 * A client of the feed's WebSocket protocol (docs/protocol.md) for browsers and Node: one ES
 * module, no dependencies, no build step.
 *
 * ```js
 * import { FeedClient } from "/feed-client.js";
 * const client = new FeedClient("ws://127.0.0.1:8080/ws");
 * client.on("snapshot", (snap) => console.log(snap.symbol, snap.bid, snap.ask));
 * client.connect();
 * await client.subscribe(["AAPL", "MSFT"]);
 * ```
 *
 * What a caller may rely on:
 * - It reconnects by itself, with exponential backoff and full jitter (each wait is a random
 *   time between 0 and `min(backoffMaxMs, backoffInitialMs * 2 ** (attempt - 1))`); the attempt
 *   count resets once a connection has stayed live for `backoffMaxMs`. Only `close()` stops it.
 * - The symbols it holds are subscribed again after every reconnect; requests made while it is
 *   not connected, or lost with their connection, are sent once it is.
 * - Symbols the feed no longer has: when it refuses that resubscribe with `unknown_symbol` (a
 *   restarted feed whose symbols come from producers and some have not ticked yet, or a symbol
 *   gone for good; the feed refuses a request whole), the client reads `symbols()` and
 *   subscribes to the symbols held that it lists. The others are set aside and the connection
 *   stays up: `refused` maps each to the feed's error, a `refused` event lists them all, they
 *   stay held and are asked for again on every later connection and by `subscribe` (which
 *   rejects while the feed still refuses them); `unsubscribe` lets go of them without asking the
 *   feed, which does not know them. A refusal still after `SET_ASIDE_ROUNDS` (3) rounds on one
 *   connection, or a `symbols()` that fails, drops the connection (an `error` of code
 *   `refused`) and reconnects with backoff.
 * - A watchdog drops a connection (and a connection attempt) that receives nothing, no data,
 *   no heartbeat, no answer, for `watchdogMs`, and reconnects.
 * - Snapshots of one symbol are applied in `seq` order: one older than the snapshot held is
 *   dropped. The rule is per connection: the first snapshot of a symbol on a new connection is
 *   the server's state at that time and is applied whatever its `seq`, since a restarted server
 *   counts again from 0 (within one connection the server never sends an older one, so the
 *   check is a guard). A snapshot of another `epoch` than the one held starts a new lineage
 *   (the feed's state was lost and `seq` began again) and is applied whatever its `seq`.
 * - Snapshot `ts` is ns since the epoch as a JSON number: past 2^53 a JavaScript number keeps
 *   it to about 0.25 µs today, which is fine for latency in ms.
 * - Times ("local clock") are `performance.timeOrigin + performance.now()`, ms since the epoch
 *   with sub-ms resolution; `receivedMs + clockOffsetMs - snap.ts / 1e6` is a snapshot's age.
 *
 * @module feed-client
 */

/** @typedef {"idle" | "connecting" | "live" | "reconnecting" | "offline"} State */

/**
 * The state of one symbol, as the server sends it (docs/protocol.md, "Snapshots"); fields not
 * known yet are null.
 * @typedef {object} Snapshot
 * @property {string} symbol
 * @property {number} seq ticks folded for this symbol so far
 * @property {number} ts ns since the epoch of the newest tick (precision: see the module)
 * @property {number | null} last
 * @property {number | null} last_size
 * @property {number | null} bid
 * @property {number | null} ask
 * @property {number | null} bid_size
 * @property {number | null} ask_size
 * @property {number | null} open
 * @property {number | null} high
 * @property {number | null} low
 * @property {number} volume
 * @property {number | null} vwap
 * @property {number} trades
 * @property {number} epoch ms since the Unix epoch when the feed's state of this symbol began: `seq` counts within it
 */

/**
 * @typedef {object} Options
 * @property {typeof WebSocket} [WebSocket] a WebSocket constructor (default: the global one;
 *   in Node 20, pass the `ws` package's)
 * @property {string} [token] sent as `?token=...` with the connection and with `symbols()`
 * @property {number} [backoffInitialMs] the first reconnect waits up to this (250)
 * @property {number} [backoffMaxMs] no reconnect waits longer than this (10000)
 * @property {number} [watchdogMs] reconnect after this long without any frame (10000)
 * @property {number} [pingIntervalMs] ping this often for the round trip and the clock offset;
 *   0: never (5000)
 */

/** @typedef {{kind: "snapshot" | "update", receivedMs: number}} SnapshotInfo */
/** @typedef {{state: "stale" | "live", symbols: string[], reason?: string}} StatusEvent */
/** @typedef {{state: State, attempt: number, retryInMs?: number}} StateEvent */
/** @typedef {{rttMs: number, clockOffsetMs: number}} PongEvent */
/** @typedef {{updates: number, conflated: number}} SymbolStats */
/**
 * Symbols held that the feed refused on a new connection, set aside: all of them (those set
 * aside before included), and the error of the latest refusal.
 * @typedef {{symbols: string[], code: string, message: string}} RefusedEvent
 */

/**
 * An error from the server (`code` as in docs/protocol.md, e.g. `unknown_symbol`) or from the
 * client itself: `connect_failed` (an attempt failed), `connection_lost` (a live connection
 * closed), `watchdog` (nothing arrived in time), `closed` (the client was closed before an
 * answer), `http_error` (`symbols()` was refused), `refused` (a new connection's resubscribe
 * was refused `SET_ASIDE_ROUNDS` times, or `symbols()` failed after a refusal: the connection is
 * dropped and retried).
 */
export class FeedError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {number | string} [id] the request's id, for the server's answers to one
   */
  constructor(code, message, id) {
    super(message);
    this.name = "FeedError";
    /** @type {string} */
    this.code = code;
    /** @type {number | string | undefined} */
    this.id = id;
  }
}

/** The options and their defaults. */
const DEFAULTS = Object.freeze({
  WebSocket: undefined,
  token: undefined,
  backoffInitialMs: 250,
  backoffMaxMs: 10000,
  watchdogMs: 10000,
  pingIntervalMs: 5000,
});

/** The events `on` accepts. */
const EVENTS = ["snapshot", "status", "state", "error", "pong", "refused"];

/**
 * Refusals of a new connection's resubscribe (`unknown_symbol`) each answered by setting aside
 * the symbols `symbols()` does not list, before the connection is dropped.
 */
export const SET_ASIDE_ROUNDS = 3;

/** The clock offset is that of the fastest of this many latest pings. */
const PING_SAMPLES = 8;

/** @returns {number} the local clock: ms since the epoch, sub-ms resolution */
const now = () => performance.timeOrigin + performance.now();

/** Does nothing: a dropped socket's handlers (`ws` throws on an error nobody listens to). */
const ignore = () => {};

/**
 * @typedef {object} Request a message waiting for its answer
 * @property {{op: string, symbols?: string[]}} message
 * @property {(answer: any) => void} answer called with the server's answer
 * @property {(error: FeedError) => void} fail called with its error, or when the client closes
 * @property {boolean} resend sent again on the next connection if this one is lost first
 */

/** A connection to a feed that keeps itself up; see the module's documentation. */
export class FeedClient {
  /** The server's WebSocket URL, without the token. @type {string} */
  #url;
  /** @type {Required<Omit<Options, "token">> & {token?: string}} */
  #options;
  /** @type {State} */
  #state = "idle";
  /** The current connection (or attempt). @type {WebSocket | null} */
  #socket = null;
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map(EVENTS.map((event) => [event, new Set()]));
  /** Symbols held: subscribed (answered), less those since unsubscribed. @type {Set<string>} */
  #wanted = new Set();
  /** Symbols held that the feed refused on a new connection: the feed's error ("code: message")
   *  per symbol. @type {Map<string, string>} */
  #refused = new Map();
  /** The newest snapshot per symbol and the connection it came on. */
  #held = /** @type {Map<string, {snap: Snapshot, epoch: number}>} */ (new Map());
  /** @type {Map<string, SymbolStats>} */
  #counts = new Map();
  /** Connections opened so far: the current one's number. */
  #epoch = 0;
  /** Connections lost or failed in a row (reset once one stays live for `backoffMaxMs`). */
  #attempt = 0;
  /** The next request's id (unique across connections, so a late answer matches nothing). */
  #nextId = 1;
  /** Requests to send once connected. @type {Request[]} */
  #queue = [];
  /** Requests sent on this connection, by id. @type {Map<number, Request>} */
  #inflight = new Map();
  /** The timers of this connection and of the next attempt. @type {Record<string, any>} */
  #timers = {};
  /** When the latest frame (or the attempt's start) was, on the local clock. */
  #lastFrameAt = 0;
  /** The latest pings' samples. @type {PongEvent[]} */
  #samples = [];
  /** @type {number | undefined} */
  #rttMs;
  /** @type {number | undefined} */
  #clockOffsetMs;

  /**
   * Does not connect: call `connect()`.
   * @param {string} url `ws://HOST:PORT/ws` (http(s) is taken as ws(s); in a page, a relative
   *   URL such as `/ws` is resolved against it)
   * @param {Options} [options]
   * @throws {TypeError} naming a bad URL, an unknown option or a bad value
   */
  constructor(url, options = {}) {
    for (const key of Object.keys(options)) {
      if (!(key in DEFAULTS)) {
        const known = Object.keys(DEFAULTS).join(", ");
        throw new TypeError(`unknown option "${key}"; known: ${known}`);
      }
    }
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    const opts = { ...DEFAULTS, ...given };
    for (const key of ["backoffInitialMs", "backoffMaxMs", "watchdogMs", "pingIntervalMs"]) {
      const value = opts[key];
      const ok = Number.isFinite(value) && (value > 0 || (key === "pingIntervalMs" && value === 0));
      if (!ok) throw new TypeError(`${key} must be a positive number of ms, got ${value}`);
    }
    if (opts.backoffMaxMs < opts.backoffInitialMs) {
      const { backoffMaxMs: max, backoffInitialMs: initial } = opts;
      throw new TypeError(`backoffMaxMs (${max}) is below backoffInitialMs (${initial})`);
    }
    if (opts.token !== undefined && (typeof opts.token !== "string" || !opts.token)) {
      throw new TypeError("token must be a non-empty string");
    }
    opts.WebSocket ??= globalThis.WebSocket;
    if (typeof opts.WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass options.WebSocket (in Node 20, from ws)");
    }
    this.#options = opts;
    this.#url = socketUrl(url);
  }

  /** @returns {State} */
  get state() {
    return this.#state;
  }

  /** @returns {number | undefined} server clock − local clock in ms (from the fastest recent
   *  ping: its error is at most half its round trip); undefined before the first pong */
  get clockOffsetMs() {
    return this.#clockOffsetMs;
  }

  /** @returns {number | undefined} the latest ping's round trip in ms */
  get rttMs() {
    return this.#rttMs;
  }

  /**
   * The symbols held that the feed refused on a new connection, set aside (asked for again on
   * the next one, see the module), each with the feed's error (`"unknown_symbol: ..."`); a
   * symbol leaves it once the feed accepts it or on `unsubscribe`.
   * @returns {Map<string, string>} a copy
   */
  get refused() {
    return new Map(this.#refused);
  }

  /**
   * Listen to an event: `snapshot` (snap, {kind, receivedMs}) for each snapshot applied, in
   * order; `status` ({state, symbols, reason}) when symbols turn stale or live; `state`
   * ({state, attempt, retryInMs}) on every change of state and every retry scheduled;
   * `error` (a FeedError) for the server's errors and connection failures; `pong`
   * ({rttMs, clockOffsetMs}); `refused` ({symbols, code, message}) when a new connection sets
   * symbols aside (see `refused`). A listener that throws does not stop the others (the error
   * is rethrown on its own).
   * @param {"snapshot" | "status" | "state" | "error" | "pong" | "refused"} event
   * @param {Function} fn
   * @returns {() => void} removes the listener
   */
  on(event, fn) {
    const listeners = this.#listeners.get(event);
    if (listeners === undefined) {
      throw new TypeError(`unknown event "${event}"; known: ${EVENTS.join(", ")}`);
    }
    if (typeof fn !== "function") {
      throw new TypeError(`the listener of "${event}" must be a function`);
    }
    listeners.add(fn);
    return () => this.off(event, fn);
  }

  /**
   * Stop listening.
   * @param {string} event
   * @param {Function} fn
   */
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** Start connecting (once; again and again after losses, until `close()`). */
  connect() {
    if (this.#state === "offline") throw new Error("this FeedClient is closed; make a new one");
    if (this.#state !== "idle") return;
    this.#setState("connecting");
    if (this.#state === "connecting") this.#open(); // unless a listener closed it
  }

  /**
   * Subscribe (one message: the server allows about 20 a second, so pass many symbols at once).
   * The symbols are held from the answer on, and subscribed again after every reconnect.
   * Symbols set aside (`refused`) stay held when refused again, and leave `refused` once
   * accepted.
   * @param {string[]} symbols
   * @returns {Promise<{type: "subscribed", id: number, symbols: string[]}>} the server's answer;
   *   rejects with a FeedError (`unknown_symbol`, `too_many_symbols`, ...) when it refuses
   */
  subscribe(symbols) {
    return this.#request("subscribe", symbols, (answer) => {
      for (const symbol of answer.symbols) {
        this.#wanted.add(symbol);
        this.#refused.delete(symbol);
      }
    });
  }

  /**
   * Unsubscribe: no snapshot of these symbols is delivered from this call on (`latest` keeps
   * the last one). Symbols set aside (`refused`) are let go of here, without asking the server
   * (which does not know them); when all of them are, the answer has no `id`.
   * @param {string[]} symbols
   * @returns {Promise<{type: "unsubscribed", id?: number, symbols: string[]}>} the server's
   *   answer: the symbols that were held
   */
  unsubscribe(symbols) {
    if (badSymbols(symbols) !== undefined || this.#state === "offline") {
      return this.#request("unsubscribe", symbols); // its error
    }
    const aside = symbols.filter((symbol) => this.#refused.has(symbol));
    for (const symbol of symbols) {
      this.#wanted.delete(symbol);
      this.#refused.delete(symbol);
      const held = this.#held.get(symbol);
      if (held !== undefined) held.epoch = -1; // a later subscription starts afresh
    }
    if (aside.length === 0) return this.#request("unsubscribe", symbols);
    const names = [...new Set(symbols)];
    const rest = names.filter((symbol) => !aside.includes(symbol));
    if (rest.length === 0) return Promise.resolve({ type: "unsubscribed", symbols: names });
    return this.#request("unsubscribe", rest).then((answer) => {
      const held = new Set([...answer.symbols, ...aside]);
      return { ...answer, symbols: names.filter((symbol) => held.has(symbol)) };
    });
  }

  /**
   * @param {string} symbol
   * @returns {Snapshot | undefined} the newest snapshot of it seen
   */
  latest(symbol) {
    return this.#held.get(symbol)?.snap;
  }

  /**
   * @param {string} symbol
   * @returns {SymbolStats} snapshots applied, and ticks not seen between two of them on one
   *   connection (seq jumps: the server conflated them)
   */
  stats(symbol) {
    return { ...(this.#counts.get(symbol) ?? { updates: 0, conflated: 0 }) };
  }

  /**
   * Every symbol of the feed: `GET /symbols` beside the WebSocket's URL.
   * @returns {Promise<string[]>} rejects with a FeedError `http_error` on a refusal
   */
  async symbols() {
    const url = new URL("symbols", this.#url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.search = "";
    if (this.#options.token) url.searchParams.set("token", this.#options.token);
    const response = await fetch(url);
    if (!response.ok) {
      throw new FeedError("http_error", `GET ${url.pathname}: HTTP ${response.status}`);
    }
    return response.json();
  }

  /** Stop for good: the connection is closed, pending requests fail (`closed`), no reconnect. */
  close() {
    if (this.#state === "offline") return;
    this.#release(true);
    const closed = new FeedError("closed", "the client was closed");
    for (const request of [...this.#inflight.values(), ...this.#queue]) request.fail(closed);
    this.#inflight.clear();
    this.#queue = [];
    this.#setState("offline");
  }

  // -- connections ----------------------------------------------------------------------------

  /** Open a connection; its events are ignored once it is no longer the current one. */
  #open() {
    const url = new URL(this.#url);
    if (this.#options.token) url.searchParams.set("token", this.#options.token);
    let socket;
    try {
      socket = new this.#options.WebSocket(url.href);
    } catch (error) {
      const message = `cannot connect to ${this.#url}: ${error.message}`;
      this.#lost(new FeedError("connect_failed", message));
      return;
    }
    this.#socket = socket;
    this.#lastFrameAt = now();
    this.#timers.watchdog = setTimeout(() => this.#watch(), this.#options.watchdogMs);
    let failure = "";
    socket.onerror = (event) => {
      failure = event?.message ?? event?.error?.message ?? ""; // ws says why; browsers do not
    };
    socket.onopen = () => socket === this.#socket && this.#opened();
    socket.onmessage = (event) => socket === this.#socket && this.#receive(event.data);
    socket.onclose = (event) => {
      if (socket !== this.#socket) return;
      const why = [`code ${event.code}`, event.reason, failure].filter(Boolean).join(": ");
      this.#lost(
        this.#state === "live"
          ? new FeedError("connection_lost", `connection lost (${why})`)
          : new FeedError("connect_failed", `cannot connect to ${this.#url} (${why})`),
      );
    };
  }

  /** The connection is open: hold the symbols again, send what waits, start pinging. */
  #opened() {
    this.#epoch += 1;
    this.#lastFrameAt = now();
    this.#state = "live";
    if (this.#wanted.size > 0) this.#resubscribe([...this.#wanted], 0);
    for (const request of this.#queue.splice(0)) this.#send(request);
    const { pingIntervalMs, backoffMaxMs } = this.#options;
    if (pingIntervalMs > 0) {
      this.#ping();
      this.#timers.ping = setInterval(() => this.#ping(), pingIntervalMs);
    }
    this.#timers.stable = setTimeout(() => (this.#attempt = 0), backoffMaxMs);
    this.#setState("live");
  }

  /** Nothing arrived for `watchdogMs`: drop the connection; else look again when it could be. */
  #watch() {
    const { watchdogMs } = this.#options;
    const left = watchdogMs - (now() - this.#lastFrameAt);
    if (left > 0) {
      this.#timers.watchdog = setTimeout(() => this.#watch(), left);
      return;
    }
    const what = this.#state === "live" ? "nothing received" : "no connection";
    this.#lost(new FeedError("watchdog", `${what} for ${watchdogMs} ms`));
  }

  /**
   * The connection is gone (or failed, or is dropped): report it and schedule the next attempt.
   * @param {FeedError} error
   */
  #lost(error) {
    this.#release(false);
    for (const request of this.#inflight.values()) if (request.resend) this.#queue.push(request);
    this.#inflight.clear();
    this.#emit("error", error);
    if (this.#state === "offline") return; // a listener closed the client
    this.#attempt += 1;
    const { backoffInitialMs, backoffMaxMs } = this.#options;
    const ceiling = Math.min(backoffMaxMs, backoffInitialMs * 2 ** (this.#attempt - 1));
    const retryInMs = Math.round(Math.random() * ceiling);
    this.#timers.retry = setTimeout(() => this.#open(), retryInMs);
    this.#setState("reconnecting", { retryInMs });
  }

  /**
   * Stop the timers and let go of the socket (its late events ignored).
   * @param {boolean} polite send a close frame rather than drop the TCP connection
   */
  #release(polite) {
    for (const timer of Object.values(this.#timers)) clearTimeout(timer); // clears intervals too
    this.#timers = {};
    const socket = this.#socket;
    this.#socket = null;
    if (socket === null) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = ignore;
    if (!polite && typeof socket.terminate === "function") socket.terminate(); // ws
    else socket.close(1000);
  }

  // -- messages -------------------------------------------------------------------------------

  /**
   * A frame arrived: feed the watchdog and dispatch it by type.
   * @param {unknown} data the frame's payload
   */
  #receive(data) {
    const receivedMs = now();
    this.#lastFrameAt = receivedMs;
    if (typeof data !== "string") return; // the protocol is JSON text
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      const message = `the server sent a frame that is not JSON: ${data.slice(0, 80)}`;
      this.#emit("error", new FeedError("bad_frame", message));
      return;
    }
    switch (frame.type) {
      case "snapshot":
      case "update":
        this.#apply(frame.data, frame.type, receivedMs);
        break;
      case "status":
        this.#emit("status", { state: frame.state, symbols: frame.symbols, reason: frame.reason });
        break;
      case "subscribed":
      case "unsubscribed":
      case "pong":
      case "error":
        this.#answer(frame, receivedMs);
        break;
      default: // heartbeat, or a type this client does not know yet: it only feeds the watchdog
    }
  }

  /**
   * Apply the snapshots of a frame (the seq rule of the module's documentation) and emit them.
   * @param {Snapshot[]} snaps
   * @param {"snapshot" | "update"} kind
   * @param {number} receivedMs
   */
  #apply(snaps, kind, receivedMs) {
    for (const snap of snaps) {
      if (this.#state === "offline") return; // a listener closed the client
      const symbol = snap.symbol;
      if (!this.#wanted.has(symbol)) continue; // unsubscribed while the frame was under way
      const held = this.#held.get(symbol);
      let count = this.#counts.get(symbol);
      if (count === undefined) this.#counts.set(symbol, (count = { updates: 0, conflated: 0 }));
      if (held !== undefined && held.epoch === this.#epoch && held.snap.epoch === snap.epoch) {
        if (snap.seq < held.snap.seq) continue; // older than the one held
        count.conflated += Math.max(0, snap.seq - held.snap.seq - 1);
      }
      count.updates += 1;
      this.#held.set(symbol, { snap, epoch: this.#epoch });
      this.#emit("snapshot", snap, { kind, receivedMs });
    }
  }

  /**
   * An answer, matched to its request by id (an error without a readable id has none).
   * @param {any} frame
   * @param {number} receivedMs
   */
  #answer(frame, receivedMs) {
    const request = this.#inflight.get(frame.id);
    this.#inflight.delete(frame.id);
    if (frame.type === "error") {
      const error = new FeedError(frame.code, frame.message, frame.id);
      this.#emit("error", error);
      request?.fail(error);
    } else {
      request?.answer(frame, receivedMs);
    }
  }

  /**
   * Send a request now if live, else once connected.
   * @param {"subscribe" | "unsubscribe"} op
   * @param {string[]} symbols
   * @param {(answer: any) => void} [onAnswer]
   * @returns {Promise<any>}
   */
  #request(op, symbols, onAnswer) {
    if (this.#state === "offline") {
      return Promise.reject(new FeedError("closed", "the client was closed"));
    }
    const bad = badSymbols(symbols);
    if (bad) return Promise.reject(new TypeError(`${op}: ${bad}`));
    return new Promise((resolve, reject) => {
      const answer = (/** @type {any} */ frame) => {
        onAnswer?.(frame);
        resolve(frame);
      };
      const message = { op, symbols: [...symbols] };
      const request = { message, answer, fail: reject, resend: true };
      if (this.#state === "live") this.#send(request);
      else this.#queue.push(request);
    });
  }

  /**
   * Hold `symbols` again on a new connection (see the module for the symbols the server no
   * longer knows). Symbols let go of while it was under way are unsubscribed again.
   * @param {string[]} symbols
   * @param {number} rounds refusals taken on this connection so far
   */
  #resubscribe(symbols, rounds) {
    const answer = (/** @type {any} */ frame) => {
      for (const symbol of frame.symbols) this.#refused.delete(symbol);
      const gone = frame.symbols.filter((/** @type {string} */ s) => !this.#wanted.has(s));
      if (gone.length > 0) {
        const message = { op: "unsubscribe", symbols: gone };
        this.#send({ message, answer: ignore, fail: ignore, resend: false });
      }
    };
    const fail = (/** @type {FeedError} */ error) => {
      if (error.code !== "unknown_symbol") return; // already reported as an "error"
      this.#setAside(symbols, error, rounds + 1);
    };
    this.#send({ message: { op: "subscribe", symbols }, answer, fail, resend: false });
  }

  /**
   * The server refused the resubscribe of `symbols` (`unknown_symbol`): subscribe to those
   * `symbols()` lists, set the others aside (`refused`, a `refused` event), or drop this
   * connection when `symbols()` fails or the rounds are spent.
   * @param {string[]} symbols
   * @param {FeedError} error
   * @param {number} rounds refusals taken on this connection, this one included
   */
  #setAside(symbols, error, rounds) {
    const epoch = this.#epoch;
    const current = () => epoch === this.#epoch && this.#state === "live";
    const refused = `subscribing again was refused: ${error.code}: ${error.message}`;
    if (rounds > SET_ASIDE_ROUNDS) {
      this.#lost(new FeedError("refused", `${refused} (${SET_ASIDE_ROUNDS} times)`));
      return;
    }
    this.symbols().then(
      (known) => {
        if (!current()) return; // lost, or closed, meanwhile
        const have = new Set(known);
        const rest = [];
        for (const symbol of symbols) {
          if (!this.#wanted.has(symbol)) continue; // unsubscribed meanwhile
          if (have.has(symbol)) {
            this.#refused.delete(symbol);
            rest.push(symbol);
          } else {
            this.#refused.set(symbol, `${error.code}: ${error.message}`);
          }
        }
        if (this.#refused.size > 0) {
          const { code, message } = error;
          this.#emit("refused", { symbols: [...this.#refused.keys()], code, message });
        }
        if (current() && rest.length > 0) this.#resubscribe(rest, rounds);
      },
      (/** @type {Error} */ e) => {
        const why = `${refused}; GET /symbols: ${e.message}`;
        if (current()) this.#lost(new FeedError("refused", why));
      },
    );
  }

  /** Ask for the server's clock. */
  #ping() {
    const sentMs = now();
    const answer = (/** @type {any} */ frame, /** @type {number} */ receivedMs) => {
      const rttMs = receivedMs - sentMs;
      this.#samples.push({ rttMs, clockOffsetMs: frame.ts / 1e6 - (sentMs + rttMs / 2) });
      if (this.#samples.length > PING_SAMPLES) this.#samples.shift();
      const fastest = this.#samples.reduce((a, b) => (b.rttMs < a.rttMs ? b : a));
      this.#rttMs = rttMs;
      this.#clockOffsetMs = fastest.clockOffsetMs;
      this.#emit("pong", { rttMs, clockOffsetMs: fastest.clockOffsetMs });
    };
    this.#send({ message: { op: "ping" }, answer, fail: ignore, resend: false });
  }

  /**
   * Send on the current connection, waiting for the answer.
   * @param {Request} request
   */
  #send(request) {
    const id = this.#nextId++;
    this.#inflight.set(id, request);
    this.#socket?.send(JSON.stringify({ ...request.message, id }));
  }

  /**
   * Change state and say so.
   * @param {State} state
   * @param {{retryInMs?: number}} [extra]
   */
  #setState(state, extra = {}) {
    this.#state = state;
    this.#emit("state", { state, attempt: this.#attempt, ...extra });
  }

  /**
   * Call the event's listeners.
   * @param {string} event
   * @param {...any} args
   */
  #emit(event, ...args) {
    for (const fn of /** @type {Set<Function>} */ (this.#listeners.get(event))) {
      try {
        fn(...args);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * @param {string} url
 * @returns {string} the WebSocket URL, absolute, ws(s)
 * @throws {TypeError} when it is not one
 */
function socketUrl(url) {
  let parsed;
  try {
    parsed = new URL(url, globalThis.location?.href);
  } catch {
    throw new TypeError(`not a URL: ${JSON.stringify(url)}`);
  }
  const protocols = { "ws:": "ws:", "wss:": "wss:", "http:": "ws:", "https:": "wss:" };
  if (!(parsed.protocol in protocols)) throw new TypeError(`not a ws:// or wss:// URL: ${url}`);
  parsed.protocol = protocols[parsed.protocol];
  return parsed.href;
}

/**
 * @param {unknown} symbols
 * @returns {string | undefined} what is wrong with them, if anything
 */
function badSymbols(symbols) {
  if (!Array.isArray(symbols) || symbols.length === 0) {
    return "symbols must be a non-empty array of strings";
  }
  const i = symbols.findIndex((s) => typeof s !== "string" || s.length === 0 || s.length > 64);
  if (i >= 0) return `not a symbol (a string of 1 to 64 characters): ${JSON.stringify(symbols[i])}`;
  return undefined;
}
