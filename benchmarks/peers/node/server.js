'use strict';
// Peer 3, Node's `ws`: fold each tick, JSON.stringify once, ws.send to every subscriber whose
// socket has less than 1 MiB buffered, skip the others (the common practice; see ../README.md).
//
//   python -m feed simulate --symbols 10 --rate 500 | node server.js --port 0 [--symbols-file F]
//
// Ticks are NDJSON on stdin (feed/ticks.py `to_ndjson`), folded and fanned out one line at a
// time as each chunk arrives, each with its own `ts` (stamped here if it has none); a line that
// is not JSON is skipped (the first few named on stderr). --symbols-file is a JSON list of every
// symbol, so that symbols that have not ticked yet can be subscribed to; without it, symbols are
// learned from the ticks. Prints `listening on ws://HOST:PORT/ws` on stdout once ready,
// diagnostics on stderr. GET /stats answers {"ticks","connections","dropped","skipped"}.
// SIGTERM/SIGINT close every client with 1001 and exit 0.

const fs = require('fs');
const http = require('http');
const { WebSocket, WebSocketServer } = require('ws');

const MAX_BUFFERED = 1 << 20; // bytes buffered above which a frame is skipped for that client
const SHUTDOWN_GRACE_MS = 2000; // clients have this long to answer our close frame on shutdown
const MAX_ID_LENGTH = 64;

// Field order of a snapshot: docs/protocol.md and feed/coalescer.py SNAPSHOT_FIELDS.
function emptySnapshot(symbol) {
  return {
    symbol, seq: 0, ts: 0, last: null, last_size: null, bid: null, ask: null, bid_size: null,
    ask_size: null, open: null, high: null, low: null, volume: 0, vwap: null, trades: 0, epoch: 0,
  };
}

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 8080, symbolsFile: null };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = inline !== undefined ? inline : argv[++i];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === '--host') args.host = value;
    else if (flag === '--port') args.port = Number(value);
    else if (flag === '--symbols-file') args.symbolsFile = value;
    else fail(`unknown argument ${flag}`);
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) fail('bad --port');
  return args;
}

function fail(message) {
  process.stderr.write(`server.js: ${message}\n`);
  process.exit(2);
}

// -- wall clock in ns: Date.now() has only ms, so anchor hrtime to the high-resolution origin.
let anchorWall = 0n;
let anchorHr = 0n;
function anchor() {
  const ms = performance.timeOrigin + performance.now();
  anchorHr = process.hrtime.bigint();
  const whole = Math.floor(ms);
  anchorWall = BigInt(whole) * 1000000n + BigInt(Math.round((ms - whole) * 1e6));
}
function wallNs() {
  const now = anchorWall + (process.hrtime.bigint() - anchorHr);
  const drift = Number(now / 1000000n) - Date.now();
  if (drift > 2 || drift < -2) { // the wall clock was stepped: re-anchor (ms precision)
    anchorHr = process.hrtime.bigint();
    anchorWall = BigInt(Date.now()) * 1000000n;
    return anchorWall;
  }
  return now;
}
anchor();

// -- market state: symbol -> { snap, notional, subs }
const args = parseArgs(process.argv.slice(2));
const entries = new Map();
const learn = args.symbolsFile === null;
function entry(symbol) {
  let e = entries.get(symbol);
  if (e === undefined) {
    e = { snap: emptySnapshot(symbol), notional: 0, subs: new Set() };
    entries.set(symbol, e);
  }
  return e;
}
if (!learn) {
  for (const symbol of JSON.parse(fs.readFileSync(args.symbolsFile, 'utf8'))) entry(symbol);
}

let ticks = 0;
let skipped = 0;

function fold(t) {
  const e = learn ? entry(t.symbol) : entries.get(t.symbol);
  if (e === undefined) return;
  ticks++;
  const s = e.snap;
  s.seq++;
  // a double: ns timestamps lose their last ~8 bits (<= 128 ns) through JSON.parse
  s.ts = t.ts !== undefined ? t.ts : Number(wallNs());
  if (t.type === 'quote') {
    s.bid = t.bid;
    s.ask = t.ask;
    s.bid_size = t.bid_size;
    s.ask_size = t.ask_size;
  } else {
    const price = t.price;
    s.last = price;
    s.last_size = t.size;
    if (s.open === null) {
      s.open = s.high = s.low = price;
    } else {
      if (price > s.high) s.high = price;
      if (price < s.low) s.low = price;
    }
    s.volume += t.size;
    e.notional += price * t.size;
    s.vwap = s.volume ? e.notional / s.volume : null;
    s.trades++;
  }
  if (e.subs.size === 0) return;
  const frame = JSON.stringify({ type: 'update', data: [s] });
  for (const ws of e.subs) {
    if (ws.bufferedAmount < MAX_BUFFERED) ws.send(frame);
    else skipped++;
  }
}

let pending = '';
let lines = 0;
let badLines = 0;
function line(text) {
  lines++;
  let tick;
  try {
    tick = JSON.parse(text);
  } catch (err) {
    tick = err.message;
  }
  if (tick === null || typeof tick !== 'object') {
    if (++badLines <= 5) process.stderr.write(`server.js: stdin line ${lines} skipped: ${tick}\n`);
    return;
  }
  fold(tick);
}
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  const text = pending + chunk;
  let start = 0;
  let end;
  while ((end = text.indexOf('\n', start)) !== -1) {
    if (end > start) line(text.slice(start, end));
    else lines++;
    start = end + 1;
  }
  pending = text.slice(start);
});
process.stdin.on('end', () => {
  if (pending.trim()) line(pending);
  pending = '';
  process.stderr.write(`server.js: end of ticks on stdin: ${lines} lines, ${badLines} skipped\n`);
});

// -- control protocol (the subset in ../README.md)
function error(code, message, id) {
  const body = { type: 'error' };
  if (id !== undefined && id !== null) body.id = id;
  body.code = code;
  body.message = message;
  return JSON.stringify(body);
}

function withId(type, id, rest) {
  const body = { type };
  if (id !== undefined && id !== null) body.id = id;
  return JSON.stringify(Object.assign(body, rest));
}

function answer(ws, held, text) {
  let request;
  try {
    request = JSON.parse(text);
  } catch {
    return [error('bad_json', 'not valid JSON')];
  }
  if (request === null || typeof request !== 'object' || Array.isArray(request)) {
    return [error('bad_request', 'a request must be a JSON object')];
  }
  const id = request.id;
  const goodId = id === undefined || id === null || Number.isInteger(id)
    || (typeof id === 'string' && id.length <= MAX_ID_LENGTH);
  if (!goodId) return [error('bad_request', 'id must be an integer or a short string')];
  const op = request.op;
  if (op === 'ping') {
    const head = id === undefined || id === null ? '' : `,"id":${JSON.stringify(id)}`;
    return [`{"type":"pong"${head},"ts":${wallNs()}}`]; // ts: a JSON integer, exact ns
  }
  if (op !== 'subscribe' && op !== 'unsubscribe') {
    return [error('unknown_op', `unknown op ${JSON.stringify(op)}`, id)];
  }
  const names = request.symbols;
  if (!Array.isArray(names) || names.length === 0) {
    return [error('bad_symbols', 'symbols must be a non-empty list', id)];
  }
  const known = [...new Set(names.filter((n) => typeof n === 'string' && entries.has(n)))];
  if (op === 'unsubscribe') {
    const gone = known.filter((n) => held.has(n));
    for (const n of gone) {
      held.delete(n);
      entries.get(n).subs.delete(ws);
    }
    return [withId('unsubscribed', id, { symbols: gone })];
  }
  for (const n of known) {
    held.add(n);
    entries.get(n).subs.add(ws);
  }
  return [
    withId('subscribed', id, { symbols: known }),
    JSON.stringify({ type: 'snapshot', data: known.map((n) => entries.get(n).snap) }),
  ];
}

// -- HTTP and WebSocket on one port
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    const body = JSON.stringify({ ticks, connections: wss.clients.size, dropped: 0, skipped });
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(body);
    return;
  }
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });

wss.on('connection', (ws) => {
  const held = new Set();
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    for (const frame of answer(ws, held, data.toString())) {
      if (ws.readyState === WebSocket.OPEN) ws.send(frame);
    }
  });
  ws.on('close', () => {
    for (const n of held) entries.get(n).subs.delete(ws);
    held.clear();
    if (stopping && wss.clients.size === 0) process.exit(0);
  });
  ws.on('error', () => {}); // 'close' follows
});

wss.on('error', (err) => fail(`cannot listen: ${err.message}`)); // re-emitted from server
server.listen(args.port, args.host, 1024, () => {
  const { address, port } = server.address();
  const host = address.includes(':') ? `[${address}]` : address;
  process.stdout.write(`listening on ws://${host}:${port}/ws\n`);
});

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  process.stdin.destroy();
  server.close();
  if (wss.clients.size === 0) process.exit(0);
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
