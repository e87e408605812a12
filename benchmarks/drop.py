"""The floor under a storm's drop: `python -m benchmarks.drop [--clients 10000] [--runs 3]`.

When 10,000 clients reset together, one poll of the event loop can hand over thousands of
resets, and each costs a read that fails, an epoll update and a close (the kernel frees the
socket and what it still queued) before any Python runs. `benchmarks.storm` measures that turn
in `feed serve`; this measures it in a bare uvloop server, the same VM, the same drop: a
protocol that does nothing, its connections written 300 bytes five times a second (a tenth of
them every 20 ms, as a sliced fan-out would), then reset all at once by a client on the other
core. What the bare server's loop is held is what no Python code above uvloop can take back.

Reports, per run, the longest lag of a 20 ms timer during the drop and how many connections
went in that lag, and the median over the runs; the client's CPU time is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import orjson
import uvloop

from benchmarks.runner import cores

PERIOD = 0.02
"""The lag timer's period, as the server's /stats `loop` (seconds)."""


class _Quiet(asyncio.Protocol):
    def __init__(self, open_: set[_Quiet]) -> None:
        self.open = open_
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open.add(self)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)


async def _serve(port_file: str, clients: int) -> None:
    """The bare server: prints JSON {"lag_ms", "went"} for the drop's longest lag."""
    loop = asyncio.get_running_loop()
    open_: set[_Quiet] = set()
    server = await loop.create_server(lambda: _Quiet(open_), "127.0.0.1", 0, backlog=4096)
    with open(port_file, "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    lags: list[tuple[float, int]] = []
    message = b"x" * 300

    async def tick() -> None:
        slice_ = 0
        while True:
            started = time.monotonic()
            await asyncio.sleep(PERIOD)
            lags.append((time.monotonic() - started - PERIOD, len(open_)))
            for conn in list(open_)[slice_ % 10 :: 10]:
                assert conn.transport is not None
                conn.transport.write(message)
            slice_ += 1

    ticker = asyncio.create_task(tick())
    while len(open_) < clients:
        await asyncio.sleep(0.1)
    while open_:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    ticker.cancel()
    full = max(i for i, (_, n) in enumerate(lags) if n >= clients)
    drop = [(lag, lags[i - 1][1] - n) for i, (lag, n) in enumerate(lags) if i > full]
    lag, went = max(drop)
    print(orjson.dumps({"lag_ms": round(lag * 1000, 1), "went": went}).decode(), flush=True)


async def _drive(port: int, clients: int) -> None:
    """The client: connect all, wait, reset all at once."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    for start in range(0, clients, 500):
        made = await asyncio.gather(
            *(
                loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                for _ in range(min(500, clients - start))
            )
        )
        transports += [transport for transport, _ in made]
    await asyncio.sleep(3)  # every connection written to a few times
    for transport in transports:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    await asyncio.sleep(1)


def _pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _port(port_file: str, server: subprocess.Popen[bytes]) -> int:
    """The bare server's port, once it wrote it (a child's file: no event to wait on)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(FileNotFoundError), open(port_file) as f:
            text = f.read()
            if text:
                return int(text)
        time.sleep(0.05)
    raise RuntimeError("the bare server did not start")


def one_run(clients: int) -> dict[str, Any]:
    server_cpus, client_cpus = cores()
    port_file = f"/tmp/drop-{os.getpid()}.port"
    if os.path.exists(port_file):
        os.unlink(port_file)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.drop", "--serve", port_file, str(clients)],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: _pin(server_cpus),
    )
    try:
        port = _port(port_file, server)
        _pin(client_cpus)
        before = resource.getrusage(resource.RUSAGE_SELF)
        uvloop.run(_drive(port, clients))
        after = resource.getrusage(resource.RUSAGE_SELF)
        out, _ = server.communicate(timeout=60)
        result: dict[str, Any] = orjson.loads(out.decode().splitlines()[-1])
        result["client_cpu_s"] = round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
        )
        return result
    finally:
        if server.poll() is None:
            server.kill()
        if os.path.exists(port_file):
            os.unlink(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drop", description=__doc__)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--serve", nargs=2, metavar=("PORT_FILE", "CLIENTS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        uvloop.run(_serve(args.serve[0], int(args.serve[1])))
        return 0
    results = []
    for run in range(1, args.runs + 1):
        result = one_run(args.clients)
        results.append(result)
        print(
            f"run {run}: bare uvloop, {args.clients} connections reset at once: longest lag "
            f"{result['lag_ms']} ms, {result['went']} connections went in it "
            f"({1000 * result['lag_ms'] / max(1, result['went']):.1f} us each); "
            f"the client's CPU {result['client_cpu_s']} s",
            flush=True,
        )
    print(f"median longest lag: {statistics.median(r['lag_ms'] for r in results)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
