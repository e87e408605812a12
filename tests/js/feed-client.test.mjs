// The JavaScript client (feed/web/feed-client.js) against real `feed serve` processes, with the
// `ws` package's WebSocket. Run by tests/test_js_client.py, which starts the main server and
// sets FEED_URL (its ws:// URL) and FEED_COMMAND (a JSON array that runs `feed`, for the
// servers these tests start, stop, restart and suspend themselves). By hand:
//   feed serve --port 8080 &
//   FEED_URL=ws://127.0.0.1:8080/ws FEED_COMMAND='[".venv/bin/feed"]' node --test tests/js/

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import net from "node:net";
import { createHash } from "node:crypto";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { FeedClient, FeedError, SET_ASIDE_ROUNDS } from "../../feed/web/feed-client.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const FEED_URL = process.env.FEED_URL;
if (!FEED_URL) {
  throw new Error("FEED_URL is not set: run tests/test_js_client.py, or see this file's header");
}
const FEED_COMMAND = JSON.parse(process.env.FEED_COMMAND ?? '["feed"]');
const TIMEOUT = { timeout: 30_000 };

/** A client of `url` using ws, with fast reconnects; closed when the test ends. */
function client(t, url, options = {}) {
  const fast = { backoffInitialMs: 50, backoffMaxMs: 400 };
  const feed = new FeedClient(url, { WebSocket, ...fast, ...options });
  t.after(() => feed.close());
  return feed;
}

/** The arguments of the first `event` of `feed` that pass `wanted`; fails after `ms`. */
function when(feed, event, wanted = () => true, ms = 15_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${event}" event as wanted within ${ms} ms`));
    }, ms);
    const off = feed.on(event, (...args) => {
      if (wanted(...args)) {
        clearTimeout(timer);
        off();
        resolve(args);
      }
    });
  });
}

/** Every `state` of `feed` from now on, repeated ones (retries) shown once. */
function states(feed) {
  const seen = [];
  feed.on("state", ({ state }) => seen.at(-1) !== state && seen.push(state));
  return seen;
}

/**
 * `feed serve --port PORT ARGS` until it listens: its `url`, `port`, `log`, `waitLog(re)`,
 * `write(text)` (to its standard input), `signal(name)` and `kill()`; killed when the test ends.
 */
async function serve(t, args, port = 0) {
  const [command, ...head] = FEED_COMMAND;
  const child = spawn(command, [...head, "serve", "--port", String(port), ...args], {
    cwd: ROOT,
    stdio: ["pipe", "ignore", "pipe"],
  });
  const log = [];
  const waiters = new Set();
  createInterface({ input: child.stderr }).on("line", (line) => {
    log.push(line);
    for (const waiter of waiters) waiter();
  });
  const exited = once(child, "exit");
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGCONT"); // in case it was stopped
      child.kill("SIGKILL");
      await exited;
    }
  };
  t.after(kill);
  const served = {
    log,
    kill,
    signal: (name) => child.kill(name),
    write: (text) => child.stdin.write(text),
    waitLog(pattern, ms = 20_000) {
      return new Promise((resolve, reject) => {
        const late = () => done(new Error(`no ${pattern} in the log within ${ms} ms`));
        const timer = setTimeout(late, ms);
        const look = () => {
          const line = log.find((l) => pattern.test(l));
          if (line !== undefined) done(null, line);
        };
        const done = (error, line) => {
          clearTimeout(timer);
          waiters.delete(look);
          if (error) reject(new Error(`${error.message}:\n${log.join("\n")}`));
          else resolve(line);
        };
        waiters.add(look);
        exited.then(() => done(new Error(`feed serve exited without ${pattern}`)));
        look();
      });
    },
  };
  const line = await served.waitLog(/listening on ws:\/\/\S+\/ws/);
  served.url = line.match(/(ws:\/\/\S+\/ws)/)[1];
  served.port = Number(new URL(served.url).port);
  return served;
}

/**
 * A TCP router in front of two servers, as a load balancer in front of two replicas could be:
 * each connection goes to `ws` when its request is `GET /ws`, else to `http` (ports, which may
 * be changed). `url` is its ws:// URL; `drop()` ends the connections under way. Closed when the
 * test ends.
 */
async function router(t, targets) {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", ignore);
    socket.once("data", (head) => {
      const port = head.toString("latin1").startsWith("GET /ws") ? targets.ws : targets.http;
      const upstream = net.connect(port, "127.0.0.1");
      sockets.add(upstream);
      upstream.on("close", () => socket.destroy());
      upstream.on("error", ignore);
      socket.on("close", () => upstream.destroy());
      upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  const drop = () => sockets.forEach((socket) => socket.destroy());
  return { url: `ws://127.0.0.1:${server.address().port}/ws`, targets, drop };
}

function ignore() {}

test("subscribes and receives snapshots in seq order, counted per symbol", TIMEOUT, async (t) => {
  const feed = client(t, FEED_URL);
  const seen = states(feed);
  assert.equal(feed.state, "idle");
  const live = when(feed, "state", ({ state }) => state === "live");
  feed.connect();
  feed.connect(); // idempotent
  await live;

  const got = [];
  const counts = [];
  feed.on("snapshot", (snap, info) => {
    if (snap.symbol !== "AAPL") return;
    got.push({ snap, info });
    counts.push(feed.stats("AAPL"));
  });
  const five = when(feed, "snapshot", () => got.length >= 5);
  const answer = await feed.subscribe(["AAPL", "MSFT"]);
  assert.equal(answer.type, "subscribed");
  assert.deepEqual(answer.symbols, ["AAPL", "MSFT"]);
  await five;

  assert.equal(got[0].info.kind, "snapshot"); // the current state, then updates
  assert.ok(got.slice(1).every(({ info }) => info.kind === "update"));
  let conflated = 0;
  for (let i = 1; i < got.length; i++) {
    const [before, after] = [got[i - 1].snap.seq, got[i].snap.seq];
    assert.ok(after > before, `seq ${after} after ${before}`);
    conflated += after - before - 1;
    assert.deepEqual(counts[i], { updates: i + 1, conflated });
  }
  const last = got.at(-1);
  assert.ok(last.info.receivedMs > 0);
  assert.ok(Number.isInteger(last.snap.ts) && last.snap.ts > 2 ** 53); // ns: precision lost, fine
  assert.ok(Math.abs(last.snap.ts / 1e6 - Date.now()) < 60_000); // a recent tick's time
  assert.deepEqual(Object.keys(last.snap).slice(0, 3), ["symbol", "seq", "ts"]);
  assert.equal(feed.latest("AAPL"), got.at(-1).snap); // the newest seen, the object itself
  assert.equal(feed.latest("NVDA"), undefined);
  assert.deepEqual(feed.stats("NVDA"), { updates: 0, conflated: 0 });

  feed.close();
  assert.equal(feed.state, "offline");
  assert.deepEqual(seen, ["connecting", "live", "offline"]);
  await assert.rejects(feed.subscribe(["AAPL"]), { name: "FeedError", code: "closed" });
});

test("unsubscribe stops the symbol's snapshots; latest keeps the last", TIMEOUT, async (t) => {
  const feed = client(t, FEED_URL);
  feed.connect();
  const firstMsft = when(feed, "snapshot", (snap) => snap.symbol === "MSFT");
  await feed.subscribe(["AAPL", "MSFT"]);
  await firstMsft;
  const answer = await feed.unsubscribe(["MSFT"]);
  assert.deepEqual(answer.symbols, ["MSFT"]);
  const held = feed.latest("MSFT");
  const after = [];
  feed.on("snapshot", (snap) => after.push(snap.symbol));
  await when(feed, "snapshot", () => after.filter((s) => s === "AAPL").length >= 10);
  assert.ok(!after.includes("MSFT"), `MSFT after its unsubscribe: ${after}`);
  assert.equal(feed.latest("MSFT"), held);
});

test("the server's refusals reject with a FeedError; bad input is named", TIMEOUT, async (t) => {
  const feed = client(t, FEED_URL);
  const errors = [];
  feed.on("error", (error) => errors.push(error));
  feed.connect(); // the request waits for the connection
  await assert.rejects(feed.subscribe(["AAPL", "NOPE"]), (error) => {
    assert.ok(error instanceof FeedError);
    assert.equal(error.code, "unknown_symbol");
    assert.match(error.message, /NOPE/);
    assert.equal(typeof error.id, "number");
    return true;
  });
  assert.deepEqual(errors.map((e) => e.code), ["unknown_symbol"]);
  assert.equal(feed.state, "live");
  assert.equal(feed.latest("AAPL"), undefined); // refused whole
  await assert.rejects(feed.subscribe([]), { name: "TypeError", message: /non-empty array/ });
  await assert.rejects(feed.unsubscribe([""]), { name: "TypeError", message: /not a symbol/ });
  const make = (url, options) => () => new FeedClient(url, { WebSocket, ...options });
  assert.throws(make(FEED_URL, { watchdog: 5 }), /unknown option "watchdog"/);
  assert.throws(make("ftp://x/ws", {}), /not a ws:\/\/ or wss:\/\/ URL/);
  assert.throws(make(FEED_URL, { watchdogMs: -1 }), /watchdogMs must be a positive number/);
  assert.throws(make(FEED_URL, { backoffInitialMs: 500, backoffMaxMs: 100 }), /below/);
  if (globalThis.WebSocket === undefined) {
    assert.throws(() => new FeedClient(FEED_URL), /pass options.WebSocket/); // Node 20
  }
  assert.throws(() => feed.on("snapshots", () => {}), /unknown event "snapshots"/);
});

test("symbols() lists the feed's symbols over HTTP", TIMEOUT, async (t) => {
  const feed = client(t, FEED_URL);
  const symbols = await feed.symbols();
  assert.ok(symbols.includes("AAPL") && symbols.includes("MSFT"), String(symbols));
});

test("ping/pong: the clock offset on one host is near 0", TIMEOUT, async (t) => {
  const feed = client(t, FEED_URL, { pingIntervalMs: 50 });
  assert.equal(feed.clockOffsetMs, undefined);
  const pongs = [];
  feed.on("pong", (pong) => pongs.push({ ...pong, rtt: feed.rttMs, offset: feed.clockOffsetMs }));
  feed.connect();
  await when(feed, "pong", () => pongs.length >= 3);
  for (const { rttMs, clockOffsetMs, rtt, offset } of pongs.slice(0, 3)) {
    assert.ok(rttMs >= 0);
    assert.equal(rtt, rttMs);
    assert.equal(offset, clockOffsetMs);
  }
  // One clock on both ends: the estimate is off by at most half the fastest round trip (a
  // correctness bound, whatever the load), plus a little for the two clocks' resolutions.
  const { clockOffsetMs } = pongs[2];
  const fastest = Math.min(...pongs.slice(0, 3).map((pong) => pong.rttMs));
  const bound = fastest / 2 + 1;
  assert.ok(Math.abs(clockOffsetMs) <= bound, `offset ${clockOffsetMs} ms, rtt ${fastest} ms`);
});

test("status: a silent source turns stale, its next tick live", TIMEOUT, async (t) => {
  const server = await serve(t, ["--source", "stdin", "--set", "stdin.stale_after=0.3"]);
  const tick = '{"type":"trade","symbol":"QQQ","price":3.25,"size":5}\n';
  server.write(tick);
  await server.waitLog(/stdin: connecting -> live/); // QQQ exists
  const feed = client(t, server.url);
  feed.connect();
  const stale = when(feed, "status", (status) => status.state === "stale");
  await feed.subscribe(["QQQ"]);
  const [status] = await stale;
  const reason = "no data from stdin for 0.3 s";
  assert.deepEqual(status, { state: "stale", symbols: ["QQQ"], reason });
  const live = when(feed, "status", (s) => s.state === "live");
  const second = when(feed, "snapshot", (snap) => snap.seq === 2);
  server.write(tick);
  assert.deepEqual((await live)[0].symbols, ["QQQ"]);
  await second;
});

test("a restarted server: reconnects, resubscribes, takes its seq", TIMEOUT, async (t) => {
  const first = await serve(t, ["--symbols", "3", "--rate", "1500"]);
  const feed = client(t, first.url);
  const seen = states(feed);
  const errors = [];
  feed.on("error", (error) => errors.push(error.code));
  feed.connect();
  const far = when(feed, "snapshot", (snap) => snap.seq >= 300);
  await feed.subscribe(["AAPL"]);
  const [before] = await far;

  const reconnecting = when(feed, "state", ({ state }) => state === "reconnecting");
  await first.kill();
  const [{ attempt, retryInMs }] = await reconnecting;
  assert.equal(attempt, 1);
  assert.ok(retryInMs >= 0 && retryInMs <= 50, `retryInMs ${retryInMs}`); // full jitter of 50 ms
  // The last state is kept meanwhile (a snapshot or two may have come after `before` and
  // before the kill took hold: the newest of them).
  const kept = feed.latest("AAPL");
  assert.ok(kept.seq >= before.seq, `kept seq ${kept.seq} after ${before.seq}`);

  let held;
  const again = when(feed, "snapshot", (snap, info) => {
    held = feed.latest("AAPL");
    return info.kind === "snapshot";
  });
  assert.equal(feed.latest("AAPL"), kept); // nothing while disconnected
  await serve(t, ["--symbols", "3", "--rate", "10"], first.port); // seq counts again from 0
  const [snap] = await again; // resubscribed by itself: the new server's current state
  assert.ok(snap.seq < kept.seq, `seq ${snap.seq} after ${kept.seq}`);
  assert.equal(held, snap); // applied, though its seq is lower
  assert.deepEqual(seen, ["connecting", "live", "reconnecting", "live"]);
  assert.equal(errors[0], "connection_lost");
  assert.ok(errors.slice(1).every((code) => code === "connect_failed"), String(errors));
});

test("the watchdog reconnects when the server stops sending", TIMEOUT, async (t) => {
  const heartbeats = "websocket.heartbeat_interval=0.2";
  const server = await serve(t, ["--symbols", "3", "--rate", "50", "--set", heartbeats]);
  const feed = client(t, server.url, { watchdogMs: 1000, pingIntervalMs: 0 });
  const seen = states(feed);
  feed.connect();
  const first = when(feed, "snapshot");
  await feed.subscribe(["AAPL"]);
  await first;

  const fired = when(feed, "error", (error) => error.code === "watchdog");
  server.signal("SIGSTOP"); // the process is there, its sockets open, and nothing is sent
  try {
    const [error] = await fired;
    assert.match(error.message, /nothing received for 1000 ms/);
    assert.equal(feed.state, "reconnecting");
  } finally {
    server.signal("SIGCONT");
  }
  await when(feed, "snapshot", (snap, info) => info.kind === "snapshot"); // resubscribed
  assert.deepEqual(seen, ["connecting", "live", "reconnecting", "live"]);
});

test("symbols a restarted server lacks are set aside, let go or taken back", TIMEOUT, async (t) => {
  const first = await serve(t, ["--symbols", "4", "--rate", "400"]);
  const feed = client(t, first.url);
  const seen = states(feed);
  const errors = [];
  feed.on("error", (error) => errors.push(error.code));
  feed.connect();
  await feed.subscribe(["AAPL", "MSFT", "NVDA"]);
  const lost = when(feed, "state", ({ state }) => state === "reconnecting");
  await first.kill();
  await lost;

  const refusedEvent = when(feed, "refused");
  const aaplOnly = ["--source", "simulator,stdin", "--symbols", "1", "--rate", "400"];
  const second = await serve(t, aaplOnly, first.port); // AAPL; others join with a tick on stdin
  const [refused] = await refusedEvent;
  const message = "unknown symbol(s): MSFT, NVDA";
  assert.deepEqual(refused, { symbols: ["MSFT", "NVDA"], code: "unknown_symbol", message });
  const reason = `unknown_symbol: ${message}`;
  assert.deepEqual(feed.refused, new Map([["MSFT", reason], ["NVDA", reason]]));
  await when(feed, "snapshot", (snap) => snap.symbol === "AAPL"); // the others are served
  assert.equal(feed.state, "live");

  const before = errors.length;
  assert.deepEqual(await feed.unsubscribe(["NVDA"]), { type: "unsubscribed", symbols: ["NVDA"] });
  assert.deepEqual([...feed.refused.keys()], ["MSFT"]);
  await assert.rejects(feed.subscribe(["MSFT"]), { code: "unknown_symbol", message: /MSFT/ });
  assert.deepEqual([...feed.refused.keys()], ["MSFT"]); // still held, still set aside
  assert.deepEqual(errors.slice(before), ["unknown_symbol"]); // that subscribe's; not NVDA's

  second.write('{"type":"trade","symbol":"MSFT","price":2.5,"size":7}\n');
  await second.waitLog(/stdin: connecting -> live/); // MSFT has joined
  const msft = when(feed, "snapshot", (snap) => snap.symbol === "MSFT");
  assert.deepEqual((await feed.subscribe(["MSFT"])).symbols, ["MSFT"]);
  assert.deepEqual(feed.refused, new Map());
  const [snap] = await msft;
  assert.deepEqual([snap.seq, snap.last, snap.last_size], [1, 2.5, 7]);
  assert.deepEqual(seen, ["connecting", "live", "reconnecting", "live"]); // one connection since
});

test("a resubscribe refused round after round drops the connection", TIMEOUT, async (t) => {
  // /symbols (from `listing`) lists MSFT, which the server behind /ws (`lacking`) refuses: each
  // round subscribes to it again, and is refused again.
  const listing = await serve(t, ["--symbols", "4", "--rate", "400"]);
  const aaplOnly = ["--source", "simulator,stdin", "--symbols", "1", "--rate", "400"];
  const lacking = await serve(t, aaplOnly);
  const front = await router(t, { ws: listing.port, http: listing.port });
  const feed = client(t, front.url);
  const errors = [];
  feed.on("error", (error) => errors.push(error));
  feed.connect();
  await feed.subscribe(["AAPL", "MSFT"]);

  const dropped = when(feed, "error", (error) => error.code === "refused");
  front.targets.ws = lacking.port;
  front.drop();
  const [error] = await dropped;
  const times = `(${SET_ASIDE_ROUNDS} times)`;
  assert.match(error.message, /^subscribing again was refused: unknown_symbol: .*MSFT/);
  assert.ok(error.message.endsWith(times), error.message);
  const codes = errors.map((e) => e.code);
  const refusals = codes.slice(codes.indexOf("connection_lost") + 1, codes.indexOf("refused"));
  assert.deepEqual(refusals, Array(SET_ASIDE_ROUNDS + 1).fill("unknown_symbol"));
  assert.deepEqual(feed.refused, new Map()); // /symbols lists it: not set aside

  lacking.write('{"type":"trade","symbol":"MSFT","price":2.5,"size":7}\n');
  await lacking.waitLog(/stdin: connecting -> live/);
  const [snap] = await when(feed, "snapshot", (s) => s.symbol === "MSFT" && s.last === 2.5);
  assert.equal(snap.seq, 1); // from the server behind /ws, reconnected to
  assert.equal(feed.state, "live");
});

test("a token opens a feed with auth, and reads only its entitlements", TIMEOUT, async (t) => {
  const token = "js-t0ken";
  const sha256 = createHash("sha256").update(token).digest("hex");
  const served = await serve(t, [
    "--symbols", "5", "--rate", "50",
    "--set", "auth.required=true",
    "--set", `auth.tokens=[{sha256="${sha256}", read=["AAPL", "MS*"]}]`,
  ]);
  const feed = client(t, served.url, { token });
  assert.deepEqual(await feed.symbols(), ["AAPL", "MSFT"]);
  feed.connect();
  await feed.subscribe(["AAPL"]);
  await assert.rejects(feed.subscribe(["NVDA"]), (error) => {
    assert.ok(error instanceof FeedError);
    assert.equal(error.code, "not_entitled");
    assert.match(error.message, /NVDA/);
    return true;
  });
  assert.equal(feed.state, "live");
  // Without the token, nothing: the upgrade is refused (401) and /symbols too.
  const stranger = client(t, served.url);
  await assert.rejects(stranger.symbols(), /401/);
});
