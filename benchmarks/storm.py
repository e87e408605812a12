"""Churn and storms against a live `feed serve`: `python -m benchmarks.storm [--clients 10000]
[--cycles N]`.

The server runs the simulator at its default rate (2,000 ticks/s, 1,000 symbols) pinned to core 0;
this process (the load generator) runs on core 1 with its open-files limit raised to the hard
limit, as benchmarks/runner.py does for `connections`. Phases:

1. churn: `--cycles` connect / subscribe / unsubscribe / close cycles, 200 at a time;
2. vanish: clients that subscribe and go without a close, half by RST (SO_LINGER 0), half by
   just closing the socket;
3. half-open: clients that subscribe, stop reading and never close (a tiny receive buffer):
   the server must drop them as slow consumers (4008) after `limits.slow_consumer_timeout`;
4. storm: `--clients` clients connected and subscribed (3 symbols each), dropped at once by
   RST, all reconnecting together: the time until every one is resubscribed, and each one's
   snapshot (the right symbols) and a first update after it.

Stalls, two ways. The server's own timer (/stats `loop`: how late a timer due every 20 ms
ran) is the event-loop stall, what every client's updates wait on; its longest ones are laid
on the phases, and the target (none over 100 ms) is on it. And a prober in a process of its
own sends the `ping` op every 10 ms and waits for its `pong`: a request's round trip, which
also counts the requests queued ahead of it (10,000 subscribes at once take their time even
on a loop that never stalls); its own send delays are reported beside it. After each phase:
the server's connections (/stats), descriptors (/proc/PID/fd) and RSS against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks import fuzzcases as fc
from benchmarks.runner import cores
from feed import config as feed_config

STORM_SETTINGS: dict[str, object] = {
    "limits.control_rate": 500,  # the prober pings 100 times a second
    "limits.control_burst": 500,
}
CONCURRENCY = 200
RSS_BASE = 16 << 20
RSS_PER_CLIENT = 16 << 10
"""Right after a phase, RSS may be RSS_BASE plus this much per client of the peak above the
baseline: while connected, a client costs the server some 20-40 KiB (aiohttp's request,
response, reader and buffers, our writer and mailbox), and what the peak used is only given
back at the server's next compaction. A leak of the churn's or the vanished clients'
(thousands of them) would still cross it."""
RSS_BACK = 32 << 20
"""After a storm and the server's compaction (a full collection and malloc_trim), RSS should be
back within this much of the baseline (the issue's target). Under the default allocator it is
not after 10,000 clients: pymalloc's 1 MiB arenas stay, each pinned by a few of the steady
state's objects (docs/performance.md, step 24); with `--feed-set memory.allocator=malloc` it
is (step 25)."""


def _frame(opcode: int, payload: bytes) -> bytes:
    return fc.frame(opcode, payload)


class Client(asyncio.Protocol):
    """A lightweight WebSocket client: handshake, frames, pings answered, what it was sent."""

    def __init__(self, host: str, port: int, symbols: list[str]) -> None:
        self.host, self.port, self.symbols = host, port, symbols
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.snapshot: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.updated: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unsubscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(fc.upgrade_request(fc.Target(self.host, self.port, 0, [])))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.open = head.startswith(b"HTTP/1.1 101")
            if not self.upgraded.done():
                self.upgraded.set_result(self.open)
            if not self.open:
                return
        while len(self.buffer) >= 2:
            n = self.buffer[1] & 0x7F
            at = 2
            if n == 126:
                if len(self.buffer) < 4:
                    return
                (n,) = struct.unpack_from("!H", self.buffer, 2)
                at = 4
            elif n == 127:
                if len(self.buffer) < 10:
                    return
                (n,) = struct.unpack_from("!Q", self.buffer, 2)
                at = 10
            if len(self.buffer) < at + n:
                return
            opcode = self.buffer[0] & 0x0F
            payload = self.buffer[at : at + n]
            self.buffer = self.buffer[at + n :]
            self._frame(opcode, payload)

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            kind = payload[9:20]
            if kind.startswith(b"update") and self.snapshot.done() and not self.updated.done():
                self.updated.set_result(None)
            elif kind.startswith(b"snapshot") and not self.snapshot.done():
                names = [s["symbol"] for s in orjson.loads(payload)["data"]]
                self.snapshot.set_result(names)
            elif kind.startswith(b"unsubscr") and not self.unsubscribed.done():
                self.unsubscribed.set_result(None)
        elif opcode == 0x9 and self.transport is not None:
            self.transport.write(_frame(0xA, payload))
        elif opcode == 0x8 and not self.closed.done():
            self.closed.set_result(
                struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(_frame(0x1, orjson.dumps(message)))

    def subscribe(self) -> None:
        self.send({"op": "subscribe", "symbols": self.symbols, "id": 1})

    def rst(self) -> None:
        """Vanish with a reset: SO_LINGER 0, then drop the socket."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def polite_close(self) -> None:
        assert self.transport is not None
        self.transport.write(_frame(0x8, struct.pack("!H", 1000)))


async def connect(
    host: str, port: int, symbols: list[str], rcvbuf: int = 0, timeout: float = 60.0
) -> Client:
    """A connected, upgraded client; retried until `timeout` (a storm overflows the backlog)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if host.startswith("127."):
                # A source address of its own among 64 loopback ones: one address has only
                # ~28,000 ephemeral ports, and a storm's 20,000 sockets plus the churn's
                # TIME_WAITs run out of them.
                sock.bind((f"127.0.{1 + next(_sources) % 64}.1", 0))
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await loop.sock_connect(sock, (host, port))
                _, client = await loop.create_connection(
                    lambda: Client(host, port, symbols), sock=sock
                )
                if await client.upgraded:
                    return client
            REFUSED["503"] += 1
            client.rst()
        except OSError:
            REFUSED["oserror"] += 1
            sock.close()
        if time.monotonic() > deadline:
            raise TimeoutError("could not connect")
        await asyncio.sleep(0.05)


_sources = itertools.count()
REFUSED = {"503": 0, "oserror": 0}
"""Why connection attempts had to be retried (a storm's reconnections)."""


def _errors(outcomes: list[Any]) -> list[str]:
    return sorted({repr(e) for e in outcomes if not isinstance(e, Client)})[:3]


def symbols_for(names: list[str], index: int) -> list[str]:
    return [names[(index * 7 + k * 31) % len(names)] for k in range(3)]


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def fail(self, text: str) -> None:
        self.ok = False
        self.say("FAIL " + text)


async def check_resources(
    report: Report,
    target: fc.Target,
    baseline: fc.Resources,
    phase: str,
    peak: int,
    timeout: float = 30.0,
) -> fc.Resources:
    """Wait (in a thread: this loop must go on, an aborted transport closes its socket on the
    loop's next turn) until the server is back to the baseline, and report it."""
    await asyncio.sleep(0)
    start = time.monotonic()
    now = await asyncio.to_thread(fc.settle, target, baseline, timeout)
    took = time.monotonic() - start
    grew = (now.rss - baseline.rss) / baseline.rss
    report.say(
        f"  after {phase}: {now.connections} connections (baseline {baseline.connections}), "
        f"{now.fds} fds ({now.fds - baseline.fds:+d}), "
        f"RSS {now.rss / 2**20:.1f} MiB ({grew:+.0%}), "
        f"settled in {took:.1f} s"
    )
    if now.connections > baseline.connections or now.fds > baseline.fds:
        report.fail(f"{phase}: connections or descriptors not back to the baseline")
        states = [
            c["state"]
            for c in target.http_get_json("/stats?connections=1")["hub"]["per_connection"]
        ]
        report.say(f"  connection states: {sorted(set(states))} ({len(states)})")
    allowed = RSS_BASE + RSS_PER_CLIENT * peak
    if now.rss - baseline.rss > allowed:
        report.fail(
            f"{phase}: RSS {(now.rss - baseline.rss) / 2**20:+.1f} MiB over the baseline "
            f"(allowed {allowed / 2**20:.1f} MiB for a peak of {peak} clients)"
        )
    return now


async def churn(target: fc.Target, cycles: int) -> int:
    done = 0
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        nonlocal done
        async with semaphore:
            client = await connect(target.host, target.port, symbols_for(target.symbols, i))
            client.subscribe()
            names = await asyncio.wait_for(client.snapshot, 30)
            assert names == client.symbols, (names, client.symbols)
            client.send({"op": "unsubscribe", "symbols": client.symbols, "id": 2})
            await asyncio.wait_for(client.unsubscribed, 30)
            client.polite_close()
            await asyncio.wait_for(client.closed, 30)
            assert client.transport is not None
            client.transport.close()
            done += 1

    await asyncio.gather(*(one(i) for i in range(cycles)))
    return done


async def vanish(target: fc.Target, count: int) -> None:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with semaphore:
            client = await connect(target.host, target.port, symbols_for(target.symbols, i))
            client.subscribe()
            await asyncio.wait_for(client.snapshot, 30)
            if i % 2:
                client.rst()
            else:
                assert client.transport is not None
                client.transport.close()  # a FIN, no close frame

    await asyncio.gather(*(one(i) for i in range(count)))


async def half_open(target: fc.Target, count: int, timeout: float) -> int:
    """Clients that stop reading: how many the server closed as slow consumers in time (its
    closed_slow counter: a client that reads nothing cannot see the close frame)."""
    before = target.http_get_json("/stats")["hub"]["closed_slow"]
    clients = []
    for _ in range(count):
        client = await connect(target.host, target.port, target.symbols[:50], rcvbuf=4096)
        client.subscribe()
        await asyncio.wait_for(client.snapshot, 30)
        assert client.transport is not None
        client.transport.pause_reading()
        clients.append(client)
    # The server sees a full socket once the kernel's buffers fill, then waits the timeout,
    # then sends a close it cannot deliver and aborts after close_timeout.
    deadline = time.monotonic() + timeout
    closed = 0
    while time.monotonic() < deadline:  # one /stats a second, until all are counted
        closed = (await asyncio.to_thread(target.http_get_json, "/stats"))["hub"][
            "closed_slow"
        ] - before
        if closed >= count:
            break
        await asyncio.sleep(1)
    for client in clients:
        client.rst()
    return closed


async def storm(
    target: fc.Target, clients: int, report: Report, phases: list[tuple[str, float]]
) -> None:
    names = target.symbols
    start = time.monotonic()
    first = await asyncio.gather(
        *(connect(target.host, target.port, symbols_for(names, i)) for i in range(clients))
    )
    for client in first:
        client.subscribe()
    await asyncio.wait_for(asyncio.gather(*(c.snapshot for c in first)), 120)
    report.say(f"  {clients} connected and subscribed in {time.monotonic() - start:.1f} s")
    dropped = time.monotonic()
    phases.append((phases[-1][0] + " drop+reconnect", dropped))
    for client in first:
        client.rst()
    again: list[Client] = []

    async def back(i: int) -> Client:
        client = await connect(target.host, target.port, symbols_for(names, i), timeout=120)
        client.subscribe()
        await asyncio.wait_for(client.snapshot, 120)
        again.append(client)
        return client

    outcomes = await asyncio.gather(*(back(i) for i in range(clients)), return_exceptions=True)
    took = time.monotonic() - dropped
    result = [c for c in outcomes if isinstance(c, Client)]
    if len(result) < clients:
        stats = (await asyncio.to_thread(target.http_get_json, "/stats"))["hub"]
        report.fail(
            f"only {len(result)} of {clients} reconnected in {took:.0f} s (retried: "
            f"{REFUSED['503']} refused upgrades, {REFUSED['oserror']} failed connects; the "
            f"server holds {stats['connections']} connections, rejected_full "
            f"{stats['rejected_full']}); errors: {_errors(outcomes)}"
        )
        for client in result:
            client.rst()
        return
    report.say(
        f"  dropped all at once (RST), all {len(result)} resubscribed in {took:.2f} s "
        f"(retried: {REFUSED['503']} refused upgrades, {REFUSED['oserror']} failed connects)"
    )
    wrong = [c for c in result if c.snapshot.result() != c.symbols]
    if wrong:
        report.fail(f"{len(wrong)} clients' snapshots are not of their symbols")
    _, pending = await asyncio.wait([c.updated for c in result], timeout=30)
    report.say(f"  {clients - len(pending)} of {clients} got an update after their snapshot")
    if pending:
        report.fail(f"{len(pending)} clients got no update within 30 s")
    for client in result:
        client.rst()


def prober(host: str, port: int, seconds_file: str) -> None:
    """The stall prober (its own process): ping op every 10 ms, wait for each pong, until
    `seconds_file` exists; then print the round trips (ms) and send delays as JSON."""
    target = fc.Target(host, port, 0, [])
    raw = fc.Raw.connect(target)
    print("ready", flush=True)
    rtts: list[float] = []
    late: list[float] = []
    at: list[float] = []
    next_at = time.monotonic()
    while not os.path.exists(seconds_file):
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        sent = time.monotonic()
        late.append(sent - next_at)
        raw.send_json({"op": "ping", "id": len(rtts)})
        while True:
            kind, value = raw.next(sent + 30)
            if kind != "text":
                print(orjson.dumps({"error": f"{kind} {value}"}).decode())
                return
            if value.get("type") == "pong":
                break
        rtts.append(time.monotonic() - sent)
        at.append(sent)
        next_at = max(next_at + 0.01, time.monotonic())
    raw.close()
    print(orjson.dumps({"rtt": rtts, "late": late, "at": at}).decode())


def _ms(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def summarize_probe(
    report: Report,
    output: str,
    phases: list[tuple[str, float]] | None = None,
) -> None:
    """The prober's round trips, overall and (`phases`: names and monotonic start times, the
    clock is the machine's, shared by both processes) the longest in each phase."""
    data = orjson.loads(output)
    if "error" in data:
        report.fail(f"the prober lost its connection: {data['error']}")
        return
    if phases:
        marks = [*phases, ("end", float("inf"))]
        longest = []
        for (name, begin), (_, end) in itertools.pairwise(marks):
            inside = [r for r, a in zip(data["rtt"], data["at"], strict=True) if begin <= a < end]
            if inside:
                longest.append(f"{name} {max(inside) * 1000:.0f}")
        report.say("prober: longest round trip per phase (ms): " + ", ".join(longest))
        worst = sorted(zip(data["rtt"], data["at"], strict=True), reverse=True)[:5]
        where = []
        for rtt, at in worst:
            name, begin = [(n, b) for n, b in phases if b <= at][-1]
            where.append(f"{rtt * 1000:.0f} ms at {name} +{at - begin:.2f} s")
        report.say("prober: the longest round trips: " + "; ".join(where))
    rtts = sorted(data["rtt"])
    late = sorted(data["late"])
    report.say(
        f"prober: {len(rtts)} pings; round trip p50 {_ms(rtts, 0.5):.2f} ms, "
        f"p99 {_ms(rtts, 0.99):.1f} ms, "
        f"max {rtts[-1] * 1000:.1f} ms; the prober's own send delay max {late[-1] * 1000:.1f} ms"
    )


def summarize_loop(
    report: Report, loop: dict[str, Any], phases: list[tuple[str, float]], target: bool
) -> None:
    """The server's own measure of its event-loop stalls (/stats `loop`: how late a timer due
    every 20 ms ran), its longest ones laid on the phases (both sides read the machine's
    monotonic clock)."""
    where = []
    for worst in loop["worst"][:5]:
        before = [(n, b) for n, b in phases if b <= worst["at"]]
        name, begin = before[-1] if before else ("start", worst["at"])
        where.append(f"{worst['ms']:.0f} ms at {name} +{worst['at'] - begin:.2f} s")
    report.say(
        f"event loop (the server's timer, every {loop['period_ms']:.0f} ms): longest stall "
        f"{loop['longest_ms']:.0f} ms, {loop['over_100ms']} over 100 ms in "
        f"{loop['samples']} samples; the longest: " + "; ".join(where)
    )
    if target and loop["longest_ms"] > 100:
        report.fail(
            f"an event-loop stall of {loop['longest_ms']:.0f} ms (target: none over 100 ms)"
        )


def after_compaction(
    report: Report,
    target: fc.Target,
    before: dict[str, Any],
    baseline: fc.Resources,
    timeout: float,
) -> None:
    """RSS once the server has compacted after the storm (gc.freeze: one full collection and
    malloc_trim once connections settled with few open; /stats `gc.compactions`): back within
    RSS_BACK of the baseline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = target.http_get_json("/stats")["gc"]
        if stats["compactions"] > before["compactions"]:
            rss = fc.resources(target).rss
            report.say(
                f"  after the server's compaction: RSS {rss / 2**20:.1f} MiB "
                f"({(rss - baseline.rss) / 2**20:+.1f} MiB over the baseline)"
            )
            if rss - baseline.rss > RSS_BACK:
                report.fail(
                    f"storm: RSS not back to the baseline after the compaction: "
                    f"{(rss - baseline.rss) / 2**20:+.1f} MiB (allowed {RSS_BACK >> 20} MiB)"
                )
            return
        time.sleep(0.5)
    report.fail(f"storm: no compaction within {timeout:.0f} s (gc.freeze off?)")


def linger(report: Report, target: fc.Target, baseline: fc.Resources, seconds: float) -> None:
    """RSS every 10 s while the steady state goes on after the storms (a sampling period, not
    a wait for an event: nothing is awaited but the time)."""
    samples = []
    started = time.monotonic()
    while True:
        samples.append((time.monotonic() - started, fc.resources(target).rss))
        if samples[-1][0] >= seconds:
            break
        time.sleep(min(10.0, seconds - samples[-1][0]))
    report.say(
        "  RSS over the baseline while the steady state goes on: "
        + ", ".join(f"+{at:.0f} s {(rss - baseline.rss) / 2**20:+.0f} MiB" for at, rss in samples)
    )


def gc_figures(target: fc.Target) -> dict[str, Any]:
    figures: dict[str, Any] = target.http_get_json("/stats")["gc"]
    return figures


def report_gc(report: Report, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The server's collections during a storm (/stats `gc`: counts and seconds are totals, so
    the difference; the longest pause is since start-up, so the storm's if it grew)."""
    parts = []
    for g in range(3):
        count = after["collections"][g] - before["collections"][g]
        spent = (after["seconds"][g] - before["seconds"][g]) * 1000
        longest = after["longest_ms"][g]
        grew = "" if longest > before["longest_ms"][g] else " (before)"
        parts.append(f"gen{g} {count} in {spent:.0f} ms, longest {longest:.1f} ms{grew}")
    report.say(
        "  gc during the storm: " + "; ".join(parts) + f"; {after['freezes'] - before['freezes']} "
        f"freezes, {after['compactions'] - before['compactions']} compactions (reclaimed "
        f"{after['reclaimed'] - before['reclaimed']} objects)"
    )


async def run(args: argparse.Namespace, report: Report) -> None:
    server_cpus, client_cpus = cores()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    settings = STORM_SETTINGS | {
        "limits.max_connections": args.clients + args.half_open + 500,
        "limits.slow_consumer_timeout": args.slow_timeout,
    }
    for setting in args.feed_set:
        key, _, value = setting.partition("=")
        settings[key] = value
    settle = float(str(settings.get("gc.settle", feed_config.build({}).gc.settle)))
    phases: list[tuple[str, float]] = []
    served = fc.start_serve(
        settings,
        symbols=args.symbols,
        cpus=server_cpus,
        log_path=Path("/tmp") / f"storm-serve-{os.getpid()}.log",
    )
    target = served.target
    stop_file = f"/tmp/storm-probe-{os.getpid()}.stop"
    probe = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.storm",
            "--probe",
            f"{target.host}:{target.port}",
            stop_file,
        ],
        stdout=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, client_cpus)) if client_cpus else None,
    )
    try:
        assert probe.stdout is not None
        if probe.stdout.readline().strip() != b"ready":
            raise RuntimeError("the prober did not connect")
        report.say(f"feed serve pid {target.pid} on {target.host}:{target.port}, open files {hard}")
        phases.append(("warm-up", time.monotonic()))
        warm = await churn(target, 50)
        baseline = await asyncio.to_thread(fc.settle, target, fc.resources(target), 15)
        report.say(
            f"baseline (after {warm} warm-up cycles, the prober connected): {baseline.connections} "
            f"connection(s), {baseline.fds} fds, RSS {baseline.rss / 2**20:.1f} MiB"
        )
        start = time.monotonic()
        phases.append(("churn", start))
        done = await churn(target, args.cycles)
        report.say(
            f"churn: {done} connect/subscribe/unsubscribe/close cycles "
            f"in {time.monotonic() - start:.1f} s"
        )
        await check_resources(report, target, baseline, "churn", CONCURRENCY)
        phases.append(("vanish", time.monotonic()))
        await vanish(target, args.vanish)
        report.say(
            f"vanish: {args.vanish} subscribed clients gone without a close (half RST, half FIN)"
        )
        await check_resources(report, target, baseline, "vanish", CONCURRENCY)
        phases.append(("half-open", time.monotonic()))
        closed = await half_open(target, args.half_open, args.slow_timeout + 20)
        report.say(
            f"half-open: {closed} of {args.half_open} clients that stopped reading "
            "were closed by the server"
        )
        if closed < args.half_open:
            report.fail("half-open clients left open")
        stats = (await asyncio.to_thread(target.http_get_json, "/stats"))["hub"]
        report.say(f"  closed_slow so far: {stats['closed_slow']}")
        await check_resources(report, target, baseline, "half-open", CONCURRENCY)
        for round_ in range(1, args.rounds + 1):
            report.say(f"storm: {args.clients} clients" + (f", round {round_}" * (args.rounds > 1)))
            before = await asyncio.to_thread(gc_figures, target)
            phases.append((f"storm {round_}", time.monotonic()))
            await storm(target, args.clients, report, phases)
            # The storm's clients are gone: a compaction from now on (it may come while the
            # connections settle; one in the middle of the storm, between the drop and the
            # reconnections, does not count).
            ended = await asyncio.to_thread(gc_figures, target)
            await check_resources(report, target, baseline, "storm", args.clients, timeout=60)
            phases.append((f"after storm {round_}", time.monotonic()))
            await asyncio.to_thread(after_compaction, report, target, ended, baseline, settle + 20)
            report_gc(report, before, await asyncio.to_thread(gc_figures, target))
        if args.linger > 0:
            phases.append(("linger", time.monotonic()))
            await asyncio.to_thread(linger, report, target, baseline, args.linger)
        if served.process.poll() is not None:
            report.fail(f"the server exited with {served.process.returncode}")
        else:
            loop = (await asyncio.to_thread(target.http_get_json, "/stats"))["loop"]
            summarize_loop(report, loop, phases, args.stall_target)
    finally:
        Path(stop_file).touch()
        try:
            out, _ = probe.communicate(timeout=60)
            last = out.decode().splitlines()[-1]
            if args.probe_out:  # the round trips and phases, to lay beside the server's log
                clock = {"monotonic": time.monotonic(), "wall": time.time()}  # to the logs
                Path(args.probe_out).write_text(
                    orjson.dumps(
                        {"probe": orjson.loads(last), "phases": phases, "clock": clock}
                    ).decode()
                )
            summarize_probe(report, last, phases)
        finally:
            Path(stop_file).unlink(missing_ok=True)
            fc.stop_serve(served)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.storm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5_000)
    parser.add_argument(
        "--symbols",
        type=int,
        default=1000,
        help="simulated symbols (the rate is the simulator's default, 2,000 ticks/s); 1,000 as "
        "in the `connections` scenario: 10,000 clients of 100 symbols would be 600,000 "
        "updates/s, far past one core",
    )
    parser.add_argument("--vanish", type=int, default=2_000)
    parser.add_argument("--half-open", type=int, default=20)
    parser.add_argument(
        "--slow-timeout", type=float, default=10.0, help="limits.slow_consumer_timeout"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="storms one after another in the same server"
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the last storm, the server's RSS every 10 s for this long (what the "
        "allocator gives back as the steady state goes on)",
    )
    parser.add_argument(
        "--feed-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config setting for the server, e.g. gc.freeze=true (repeatable)",
    )
    parser.add_argument(
        "--probe-out",
        metavar="FILE",
        help="write the prober's round trips (with send times, time.monotonic) and the phases",
    )
    parser.add_argument(
        "--no-stall-target",
        dest="stall_target",
        action="store_false",
        help="report the longest stall without failing over 100 ms (tests)",
    )
    parser.add_argument(
        "--probe", nargs=2, metavar=("HOST:PORT", "STOPFILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.probe:
        host, port = args.probe[0].rsplit(":", 1)
        prober(host, int(port), args.probe[1])
        return 0
    report = Report()
    asyncio.run(run(args, report))
    report.say("OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
