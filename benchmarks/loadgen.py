"""The load generator: many lean WebSocket clients in one process, measuring what they receive.

Run by the benchmark runner in its own process (pinned to its own core), never in the server's.
It is lean on purpose, so that it measures the server and not itself: one asyncio protocol per
connection, frames parsed from bulk reads, one clock read per read, and only the three fields it
needs (symbol, seq, ts) pulled out of each snapshot with one regular expression, run over the
read buffer in place (no copy of the frame).

Which clients time their snapshots (`--timed`): every one by default, since a server sends each
fan-out in some order (our registry and the peers keep subscribers in subscription order) and
the clients at the front of it see less latency than the rest. `auto` (the default) times every
client unless the warm-up, timing every client, took more than `AUTO_SAMPLE_CPU` of the
generator's core; then a seeded uniform sample (`sample_size`) spread over the subscription
order (`timed_clients`). Timing costs this generator about 1 µs of Python per frame more than
counting, and past about a third of its core its own queueing shows in the tail it measures
(docs/performance.md, "The load generator, checked"). The clients not timed still count what
they receive. The report says which was chosen and why (`timed`).

Talks to the runner over stdin/stdout, one JSON object per line:
  stdout {"event":"ready",...}      every client is subscribed and has its snapshot
  stdin  start                      reset counters: the measured window begins
  stdout {"event":"progress",...}   once a second
  stdin  stop                       the window ends
  stdout {"event":"report",...}     every figure of the window
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import os
import random
import re
import resource
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, cast

import numpy as np
import orjson

from benchmarks.clock import estimate
from benchmarks.histogram import Histogram

SNAPSHOT = re.compile(rb'"symbol":"([^"]+)","seq":(\d+),"ts":(\d+)')
PONG = re.compile(rb'"type":"pong","id":(\d+),"ts":(\d+)')
OBSERVER = -2
AUTO_SAMPLE_CPU = 30.0
"""`--timed auto`: the warm-up CPU (% of the generator's core, every client timed) above which
only a sample of the clients is timed. In `fanout`, timing every client took 37-43% and read the
feed's p99 1 ms higher than the compiled client did, where a sample of 200 (31%) agreed with it;
`light` (13-23%) agrees with it timing every client."""
AUTO_SAMPLE = 200
"""`--timed auto`: the smallest sample (see `sample_size`)."""
AUTO_SAMPLE_SHARE = 0.2
"""`--timed auto`: the sample is at least this share of the clients."""


def sample_size(total: int) -> int:
    """How many clients `--timed auto` times when it samples: `AUTO_SAMPLE`, or
    `AUTO_SAMPLE_SHARE` of them if that is more (2,000 of 10,000)."""
    return min(total, max(AUTO_SAMPLE, int(total * AUTO_SAMPLE_SHARE)))


UPDATE_PREFIX = b'{"type":"update"'
SNAPSHOT_PREFIX = b'{"type":"snapshot"'
SUBSCRIBED_PREFIX = b'{"type":"subscribed"'
SYMBOL_KEY = b'"symbol":'


class Totals:
    """What every client of this process received, since the last reset."""

    def __init__(self) -> None:
        self.reset()
        self.dropped = 0
        self.slow_dropped = 0
        self.close_codes: dict[int, int] = {}

    def reset(self) -> None:
        self.frames = 0
        self.snapshots = 0
        self.bytes = 0
        self.ticks_seen = 0
        """Sum of seq advances between consecutive snapshots of the same symbol on a client."""
        self.advances = 0
        """Snapshots that had a predecessor on their client (the denominator of conflation)."""
        self.pending: list[int] = []
        self.pending_at: list[int] = []
        self.histogram = Histogram()
        self.seconds: dict[int, list[np.ndarray]] = {}
        self.started_ns = time.time_ns()
        self.offset_ns = 0

    def flush(self) -> None:
        """Fold the latencies gathered since the last flush into the histogram (µs)."""
        if not self.pending:
            return
        sent = np.asarray(self.pending, dtype=np.int64)
        received = np.asarray(self.pending_at, dtype=np.int64)
        self.pending.clear()
        self.pending_at.clear()
        latency_us = (received - sent + self.offset_ns) // 1000
        self.histogram.record(latency_us)
        second = (received - self.started_ns) // 1_000_000_000
        for s in np.unique(second).tolist():
            self.seconds.setdefault(int(s), []).append(latency_us[second == s])


def timed_clients(total: int, size: int | None, seed: int) -> list[int]:
    """The indices (sorted) of the clients that time their snapshots, out of `total`: every one
    when `size` is None or at least `total`, else a uniform random subset of `size` drawn with
    `seed` (every index equally likely, so the subset is spread over the subscription order:
    never simply the first `size`). The same arguments give the same subset."""
    if size is None or size >= total:
        return list(range(total))
    if size < 0:
        raise ValueError(f"a sample of {size} clients: the size must be 0 or more")
    return sorted(random.Random(f"timed-clients:{seed}").sample(range(total), size))


def parse_timed(text: str) -> str | int:
    """`--timed`: `auto`, `all`, `none`, or a sample size (a whole number of clients)."""
    if text in ("auto", "all", "none"):
        return text
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--timed {text!r}: expected auto, all, none or a number of clients"
        ) from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"--timed {size}: a sample size must be 0 or more")
    return size


class FeedClient(asyncio.Protocol):
    """One subscriber connection: handshake, subscribe, then count and time what arrives."""

    def __init__(
        self,
        totals: Totals,
        host: str,
        path: str,
        symbols: list[str],
        slow: bool = False,
        timed: bool = True,
        record: bool = True,
    ) -> None:
        self.totals = totals
        self.host = host
        self.path = path
        self.symbols = symbols
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        """Set when the WebSocket handshake is done."""
        self.ready: asyncio.Future[None] = loop.create_future()
        """Set when the server answered the subscription."""
        self.slow = slow
        self.timed = timed
        """Times every snapshot it gets; the others only count theirs (no copy, no parse)."""
        self.timed_snapshots = 0
        """Snapshots it timed in the window: which clients the latencies came from."""
        self.record = record
        """Adds its latencies to the totals; the slow clients and the observer do not: they
        only follow seqs (`track`)."""
        self.targets: dict[bytes, int] | None = None
        """Seqs to reach after resuming (a slow client catching up)."""
        self.resumed_at = 0
        self.caught_up_ns: int | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.closed = False
        self.last_seq: dict[bytes, int] = {}
        self.pongs: dict[int, int] = {}
        self.pong_waiters: dict[int, asyncio.Future[tuple[int, int]]] = {}

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if self.slow:
                self.totals.slow_dropped += 1
            else:
                self.totals.dropped += 1
        for future in (self.opened, self.ready):
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost during set-up: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                status = bytes(buffer[: buffer.find(b"\r\n")]).decode(errors="replace")
                for future in (self.opened, self.ready):
                    if not future.done():
                        future.set_exception(ConnectionError(f"upgrade refused: {status}"))
                self.closed = True
                assert self.transport is not None
                self.transport.close()
                return
            del buffer[: end + 4]
            self.open = True
            self.opened.set_result(None)
        totals = self.totals
        position = 0
        size = len(buffer)
        while size - position >= 2:
            second = buffer[position + 1] & 0x7F
            if second < 126:
                start = position + 2
                length = second
            elif second == 126:
                if size - position < 4:
                    break
                start = position + 4
                length = (buffer[position + 2] << 8) | buffer[position + 3]
            else:
                if size - position < 10:
                    break
                start = position + 10
                length = int.from_bytes(buffer[position + 2 : position + 10], "big")
            end = start + length
            if end > size:
                break
            opcode = buffer[position] & 0x0F
            position = end
            totals.frames += 1
            totals.bytes += length
            if opcode == 0x1:
                if not buffer.startswith(UPDATE_PREFIX, start):
                    self.on_text(bytes(buffer[start:end]), now)
                elif not self.record:  # the slow clients and the observer follow seqs only
                    self.track(bytes(buffer[start:end]), now)
                elif self.timed:
                    self.on_update(buffer, start, end, now)
                else:  # an update on a connection that only counts: no copy, no parse
                    totals.snapshots += buffer.count(SYMBOL_KEY, start, end)
                continue
            payload = bytes(buffer[start:end])
            if opcode == 0x9:
                self.send_frame(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if length >= 2 else 1005
                totals.close_codes[code] = totals.close_codes.get(code, 0) + 1
                self.send_frame(0x8, payload[:2])
                if not self.closed:
                    self.closed = True
                    if self.slow:
                        totals.slow_dropped += 1
                    else:
                        totals.dropped += 1
                assert self.transport is not None
                self.transport.close()
                break
        del buffer[:position]

    # -- frames -------------------------------------------------------------------------------

    def on_update(self, buffer: bytearray, start: int, end: int, now: int) -> None:
        """Time every snapshot of the update frame at `buffer[start:end]`, read in place."""
        found = SNAPSHOT.findall(buffer, start, end)
        totals = self.totals
        last_seq = self.last_seq
        pending = totals.pending
        if len(found) == 1:  # most frames, unless the server is conflating: ~20% less work
            ((symbol, seq_text, ts_text),) = found
            seq = int(seq_text)
            pending.append(int(ts_text))
            totals.pending_at.append(now)
            previous = last_seq.get(symbol)
            last_seq[symbol] = seq
            if previous is not None:
                totals.ticks_seen += seq - previous
                totals.advances += 1
            totals.snapshots += 1
            self.timed_snapshots += 1
            return
        for symbol, seq_text, ts_text in found:
            seq = int(seq_text)
            pending.append(int(ts_text))
            previous = last_seq.get(symbol)
            if previous is not None:
                totals.ticks_seen += seq - previous
                totals.advances += 1
            last_seq[symbol] = seq
        count = len(pending) - len(totals.pending_at)
        totals.pending_at.extend([now] * count)
        totals.snapshots += count
        self.timed_snapshots += count

    def on_text(self, payload: bytes, now: int) -> None:
        """Every text frame but the updates (`data_received` routes those)."""
        if not self.record and payload.startswith(SNAPSHOT_PREFIX):
            self.track(payload, now)
        elif payload.startswith(SNAPSHOT_PREFIX):
            for symbol, seq_text, _ in SNAPSHOT.findall(payload):
                self.last_seq[symbol] = int(seq_text)
        elif payload.startswith(SUBSCRIBED_PREFIX):
            # Subscribed: the current state follows, as a snapshot frame, or as an update when
            # the server is backpressuring this connection already.
            if not self.ready.done():
                self.ready.set_result(None)
                if self.slow and self.transport is not None:
                    self.transport.pause_reading()  # and never read again
        else:
            match = PONG.search(payload)
            if match:
                waiter = self.pong_waiters.pop(int(match.group(1)), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result((int(match.group(2)), now))

    def track(self, payload: bytes, now: int) -> None:
        """Follow seqs only; once resumed, note when every target seq is reached."""
        last_seq = self.last_seq
        targets = self.targets
        for symbol, seq_text, _ in SNAPSHOT.findall(payload):
            seq = int(seq_text)
            last_seq[symbol] = seq
            if targets:
                target = targets.get(symbol)
                if target is not None and seq >= target:
                    del targets[symbol]
                    if not targets and self.caught_up_ns is None:
                        self.caught_up_ns = now - self.resumed_at

    def resume(self, targets: dict[bytes, int]) -> None:
        """Start reading again, aiming at `targets` (the newest seqs when it resumes)."""
        self.targets = {s: seq for s, seq in targets.items() if seq > self.last_seq.get(s, -1)}
        self.resumed_at = time.time_ns()
        if not self.targets:
            self.caught_up_ns = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def subscribe(self) -> None:
        self.send_text(orjson.dumps({"op": "subscribe", "symbols": self.symbols, "id": 1}))

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        repeated = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            n, "big"
        )
        self.transport.write(header + mask + masked)

    def send_text(self, payload: bytes) -> None:
        self.send_frame(0x1, payload)

    async def ping(self, request_id: int) -> tuple[int, int, int]:
        """One round trip: (sent_ns, server_ts_ns, received_ns)."""
        waiter: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.pong_waiters[request_id] = waiter
        sent = time.time_ns()
        self.send_text(b'{"op":"ping","id":%d}' % request_id)
        server_ts, received = await asyncio.wait_for(waiter, 10)
        return sent, server_ts, received


async def resume_slow(
    clients: list[FeedClient], observer: FeedClient, timeout: float = 10.0
) -> list[float | None]:
    """Let the slow clients read again; ms until each holds, for every symbol, at least the seq
    the observer had seen when they resumed (None: not within `timeout`, or it was dropped)."""
    slow = [client for client in clients if client.slow]
    targets = dict(observer.last_seq)
    for client in slow:
        client.resume(targets)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        client.caught_up_ns is None and not client.closed for client in slow
    ):
        await asyncio.sleep(0.005)
    return [
        None if client.caught_up_ns is None else round(client.caught_up_ns / 1e6, 2)
        for client in slow
    ]


def choose_timed(
    clients: list[FeedClient], timed: str | int, warmup_cpu: float, seed: int
) -> dict[str, Any]:
    """Settle which clients time their snapshots in the window (see the module docstring):
    with `auto`, a seeded uniform sample of `sample_size` clients if the warm-up, every client
    timed, took more than `AUTO_SAMPLE_CPU` of the core. What was chosen, and why, for the
    report."""
    total = len(clients)
    chosen = [index for index, client in enumerate(clients) if client.timed]
    size = sample_size(total)
    if timed == "auto" and warmup_cpu > AUTO_SAMPLE_CPU and size < total:
        chosen = timed_clients(total, size, seed)
        keep = set(chosen)
        for index, client in enumerate(clients):
            client.timed = index in keep
        how = (
            f"a seeded uniform sample of {size} of {total} clients (seed {seed}): "
            f"timing every client took {warmup_cpu:.0f}% of the generator's core in the "
            f"warm-up, above {AUTO_SAMPLE_CPU:.0f}%"
        )
    elif len(chosen) == total:
        how = f"every client ({total})"
        if timed == "auto" and warmup_cpu > AUTO_SAMPLE_CPU:
            how += (
                f"; the warm-up took {warmup_cpu:.0f}% of the generator's core, above "
                f"{AUTO_SAMPLE_CPU:.0f}%, but a sample would hold at least {AUTO_SAMPLE} of them"
            )
        elif timed == "auto":
            how += (
                f"; the warm-up took {warmup_cpu:.0f}% of the generator's core, at most "
                f"{AUTO_SAMPLE_CPU:.0f}%"
            )
    elif not chosen:
        how = f"no client: the {total} clients only count what they receive"
    else:
        how = f"a seeded uniform sample of {len(chosen)} of {total} clients (seed {seed})"
    return {
        "asked": str(timed),
        "mode": "all" if len(chosen) == total else "sample",
        "clients": len(chosen),
        "of": total,
        "seed": None if len(chosen) == total else seed,
        "how": how,
        "warmup_cpu": round(warmup_cpu, 1),
        "indices": chosen if len(chosen) < total else None,
    }


def market_symbols(http: str, count: int | None) -> list[str]:
    """The server's symbols from `GET /symbols`; for a server without that route (the peers),
    the simulator's first `count` names, which is what such a server simulates."""
    try:
        with urllib.request.urlopen(f"{http}/symbols", timeout=10) as response:
            names: list[str] = orjson.loads(response.read())
            return names
    except urllib.error.HTTPError:
        if count is None:
            raise
    from simulators import symbol_names

    return list(symbol_names(count))


def symbol_lists(symbols: list[str], clients: int, per_client: int, seed: int) -> list[list[str]]:
    """Each client's symbols: a deterministic random sample of `per_client` symbols."""
    rng = random.Random(seed)
    count = min(per_client, len(symbols))
    return [rng.sample(symbols, count) for _ in range(clients)]


def raise_open_files(needed: int) -> int:
    """Raise the soft limit on open files towards `needed`; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, needed)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.flush()


def percentiles_by_second(totals: Totals) -> list[dict[str, float]]:
    rows = []
    for second in sorted(totals.seconds):
        values = np.concatenate(totals.seconds[second])
        rows.append(
            {
                "second": second,
                "count": int(values.size),
                "p50": float(np.percentile(values, 50)),
                "p99": float(np.percentile(values, 99)),
                "max": float(values.max()),
            }
        )
    return rows


async def run(args: argparse.Namespace) -> None:
    url = urllib.parse.urlsplit(args.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or 80
    http = f"http://{host}:{port}"
    symbols = market_symbols(http, args.symbols)
    limit = raise_open_files(args.clients + args.slow + 256)
    loop = asyncio.get_running_loop()
    totals = Totals()
    lists = symbol_lists(symbols, args.clients, args.per_client, args.seed)
    lists += [list(symbols)] * args.slow
    clients: list[FeedClient] = []
    semaphore = asyncio.Semaphore(args.connect_concurrency)
    timed_arg: str | int = args.timed if args.measure is None else args.measure
    sample_size = {"auto": None, "all": None, "none": 0}.get(str(timed_arg), timed_arg)
    assert sample_size is None or isinstance(sample_size, int)
    timed = set(timed_clients(args.clients, sample_size, args.seed))

    async def connect(index: int, chosen: list[str]) -> FeedClient:
        """Open a connection and finish its handshake (nothing flows before it subscribes)."""
        slow = index >= args.clients
        async with semaphore:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if slow:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            _, client = await loop.create_connection(
                lambda: FeedClient(
                    totals,
                    f"{host}:{port}",
                    url.path or "/ws",
                    chosen,
                    slow,
                    timed=index in timed,
                    record=not slow and index != OBSERVER,
                ),
                sock=sock,
            )
            await client.opened
        opened[0] += 1
        return client

    opened = [0]

    async def report_connecting() -> None:
        while True:
            await asyncio.sleep(2.0)
            answered = sum(1 for client in clients if client.ready.done())
            emit(
                {"event": "connecting", "open": opened[0], "subscribed": answered, "of": len(lists)}
            )

    started = time.monotonic()
    # The clients live for the whole run: collecting cycles while they are set up is wasted
    # work, and a full collection over them later would pause every reader for up to 100 ms
    # and be measured as the server's latency. Collect once when they are ready, then freeze.
    gc.disable()
    reporting = asyncio.ensure_future(report_connecting())
    try:
        # All handshakes first, then every subscription at once: a server streaming to the
        # first clients cannot starve the set-up of the last ones.
        pinger = await asyncio.wait_for(connect(-1, []), args.ready_timeout)
        # With slow clients, an observer reads every symbol normally: it knows the newest seqs
        # when the slow ones start reading again.
        observer = await connect(OBSERVER, list(symbols)) if args.slow else None
        clients.extend(
            await asyncio.wait_for(
                asyncio.gather(*(connect(i, chosen) for i, chosen in enumerate(lists))),
                args.ready_timeout,
            )
        )
        everyone = clients + ([observer] if observer else [])
        for client in everyone:
            client.subscribe()
        await asyncio.wait_for(
            asyncio.gather(*(client.ready for client in everyone)), args.ready_timeout
        )
    finally:
        reporting.cancel()
    # Clock offset from round trips spaced apart, so that each is a clean one.
    samples = []
    for i in range(args.pings):
        with contextlib.suppress(TimeoutError):
            samples.append(await pinger.ping(1000 + i))
        await asyncio.sleep(0.01)
    offset = estimate(samples) if samples else None
    apply_offset = bool(args.remote)
    gc.collect()
    gc.freeze()
    gc.enable()
    emit(
        {
            "event": "ready",
            "clients": args.clients,
            "slow": args.slow,
            "connect_seconds": round(time.monotonic() - started, 3),
            "open_files_limit": limit,
            "pid": os.getpid(),
            "clock": offset.__dict__ if offset else None,
        }
    )

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # The warm-up: the clients time (and flush) exactly as in the window, so that its CPU tells
    # what timing them costs.
    warm_cpu, warm_wall = time.process_time(), time.monotonic()
    starting = asyncio.ensure_future(reader.readline())
    while not starting.done():
        await asyncio.wait([starting], timeout=args.flush_interval)
        totals.flush()
    warmup_cpu = 100 * (time.process_time() - warm_cpu) / max(time.monotonic() - warm_wall, 1e-6)
    if starting.result().strip() != b"start":
        return
    timing = choose_timed(clients, timed_arg, warmup_cpu, args.seed)
    for client in clients:
        client.timed_snapshots = 0
    totals.reset()
    if apply_offset and offset is None:
        raise SystemExit("no pong came back: cannot correct latencies for the clock offset")
    totals.offset_ns = -offset.offset_ns if apply_offset and offset else 0
    cpu_start = time.process_time()
    wall_start = time.monotonic()
    stop = asyncio.ensure_future(reader.readline())
    last_cpu, last_wall, last_snapshots = cpu_start, wall_start, 0
    while not stop.done():
        await asyncio.wait([stop], timeout=args.flush_interval)
        totals.flush()
        now = time.monotonic()
        if now - last_wall >= 1.0 or stop.done():
            cpu = time.process_time()
            emit(
                {
                    "event": "progress",
                    "elapsed": round(now - wall_start, 2),
                    "snapshots_per_s": round(
                        (totals.snapshots - last_snapshots) / (now - last_wall)
                    ),
                    "p99_us": totals.histogram.percentile(99),
                    "client_cpu": round(100 * (cpu - last_cpu) / (now - last_wall), 1),
                    "dropped": totals.dropped,
                }
            )
            last_cpu, last_wall, last_snapshots = cpu, now, totals.snapshots
    totals.flush()
    wall = time.monotonic() - wall_start
    cpu = time.process_time() - cpu_start
    catch_up = await resume_slow(clients, observer) if observer else None
    timing["with_samples"] = sum(1 for client in clients if client.timed_snapshots)
    emit(
        {
            "event": "report",
            "seconds": round(wall, 3),
            "frames": totals.frames,
            "snapshots": totals.snapshots,
            "bytes": totals.bytes,
            "frames_per_s": totals.frames / wall,
            "snapshots_per_s": totals.snapshots / wall,
            "bytes_per_s": totals.bytes / wall,
            "ticks_per_snapshot": totals.ticks_seen / totals.advances if totals.advances else None,
            "dropped": totals.dropped,
            "slow_dropped": totals.slow_dropped,
            "close_codes": {str(k): v for k, v in totals.close_codes.items()},
            "client_cpu": 100 * cpu / wall,
            "latency_us": totals.histogram.summary(),
            "histogram": totals.histogram.to_dict(),
            "curve": totals.histogram.curve(),
            "by_second": percentiles_by_second(totals),
            "clock_offset_applied": apply_offset,
            "slow_catch_up_ms": catch_up,
            "measured_clients": timing["clients"],
            "timed": timing,
            "client": "python",
            "cpu_us_per_frame": 1e6 * cpu / totals.frames if totals.frames else None,
        }
    )
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--per-client", type=int, required=True)
    parser.add_argument(
        "--slow", type=int, default=0, help="clients that subscribe to every symbol and never read"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--symbols", type=int, help="symbol count, for servers without /symbols")
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument(
        "--remote",
        action="store_true",
        help="the server is on another host: correct latencies by the offset",
    )
    parser.add_argument(
        "--timed",
        type=parse_timed,
        default="auto",
        help="which clients time their snapshots (the rest only count theirs): auto (every "
        f"client, or a seeded uniform sample of {AUTO_SAMPLE} or {100 * AUTO_SAMPLE_SHARE:.0f}%% "
        f"of them if timing every one took more than {AUTO_SAMPLE_CPU:.0f}%% of the core in the "
        "warm-up), all, none, or a number: a seeded uniform sample of that many",
    )
    parser.add_argument(
        "--measure",
        type=int,
        help="the same as --timed N (0: none); kept for older commands",
    )
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds for every client to be subscribed",
    )
    parser.add_argument("--flush-interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
