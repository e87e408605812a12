"""A known delay, timed by both load generators: does each report what is there?

`serve` is a tiny WebSocket server speaking the subset of docs/protocol.md the load generators
use (`GET /symbols`, `GET /stats`, subscribe, ping): every `--interval-ms` it sends each client an
`update` of one of its symbols whose `ts` is stamped exactly `--delay-us` before that frame is
written (`time.time_ns() - delay` right before the write). Whatever a client reports is that
delay plus what it takes the frame to go from the server's write to the client's clock read:
a client that reports less than the delay, or far more, is wrong.

`check` starts that server (pinned to the first core, the load generator to the second, as the
runner does), measures it with each load generator in turn through the runner
(`benchmarks.runner.drive`), and prints each one's latencies minus the delay:

python -m benchmarks.cclient.delay --delay-us 5000 --clients 100 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from benchmarks import runner
from benchmarks.scenarios import Scenario

LISTENING = re.compile(rb"listening on (ws://[\w.:\[\]-]+/ws)")


def snapshot(symbol: str, seq: int, ts: int) -> dict[str, Any]:
    """A snapshot in the protocol's field order (only what the load generators read is real)."""
    return {
        "symbol": symbol,
        "seq": seq,
        "ts": ts,
        "last": 100.0,
        "last_size": 1,
        "bid": 99.99,
        "ask": 100.01,
        "bid_size": 1,
        "ask_size": 1,
    }


class DelayServer:
    """Sends each subscriber an update every `interval` s, `ts` = its write time - `delay_ns`."""

    def __init__(self, symbols: int, delay_ns: int, interval: float) -> None:
        self.names = [f"D{i:04d}" for i in range(symbols)]
        self.delay_ns = delay_ns
        self.interval = interval
        self.subscribers: dict[web.WebSocketResponse, list[str]] = {}
        self.seq = 0
        self.sent = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/symbols", self.symbols)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/ws", self.websocket)
        return app

    async def symbols(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.names), content_type="application/json")

    async def stats(self, _: web.Request) -> web.Response:
        body = {"ticks": self.sent, "connections": len(self.subscribers)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            asked = orjson.loads(message.data)
            if asked.get("op") == "ping":
                await ws.send_str(
                    f'{{"type":"pong","id":{int(asked["id"])},"ts":{time.time_ns()}}}'
                )
            elif asked.get("op") == "subscribe":
                chosen = [name for name in asked["symbols"] if name in self.names]
                reply = {"type": "subscribed", "id": asked.get("id"), "symbols": chosen}
                await ws.send_str(orjson.dumps(reply).decode())
                now = time.time_ns()
                data = [snapshot(name, 0, now) for name in chosen]
                await ws.send_str(orjson.dumps({"type": "snapshot", "data": data}).decode())
                if chosen:
                    self.subscribers[ws] = chosen
        self.subscribers.pop(ws, None)
        return ws

    async def produce(self) -> None:
        """Every interval, one update to each subscriber, stamped just before its write."""
        turn = 0
        while True:
            await asyncio.sleep(self.interval)
            turn += 1
            for ws, chosen in list(self.subscribers.items()):
                if ws.closed:
                    continue
                self.seq += 1
                name = chosen[turn % len(chosen)]
                ts = time.time_ns() - self.delay_ns
                frame = orjson.dumps({"type": "update", "data": [snapshot(name, turn, ts)]})
                try:
                    await ws.send_str(frame.decode())
                except ConnectionError:  # it went away (a load generator ends by aborting)
                    self.subscribers.pop(ws, None)
                    continue
                self.sent += 1


async def serve(args: argparse.Namespace) -> None:
    server = DelayServer(args.symbols, args.delay_us * 1000, args.interval_ms / 1000)
    web_runner = web.AppRunner(server.app(), handle_signals=False)
    await web_runner.setup()
    site = web.TCPSite(web_runner, args.host, args.port)
    await site.start()
    port = web_runner.addresses[0][1]
    print(f"listening on ws://{args.host}:{port}/ws", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    producing = asyncio.ensure_future(server.produce())
    ending = asyncio.ensure_future(stop.wait())
    await asyncio.wait([producing, ending], return_when=asyncio.FIRST_COMPLETED)
    if producing.done():  # it never ends by itself: say why it did
        producing.result()
    producing.cancel()
    ending.cancel()
    await web_runner.cleanup()


def start_server(
    delay_us: int, symbols: int, interval_ms: float, log_path: Path, cpus: set[int] | None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `serve` in its own process group; return it and its WebSocket URL."""
    log = open(log_path, "wb")  # noqa: SIM115 (the child holds it; closed with the process)
    command = [
        sys.executable, "-m", "benchmarks.cclient.delay", "serve",
        "--delay-us", str(delay_us), "--symbols", str(symbols),
        "--interval-ms", str(interval_ms), "--port", "0",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_bytes())
        if match:
            return process, match.group(1).decode()
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop_server(process)
    raise runner.BenchmarkError(
        "the delay server did not listen:\n" + log_path.read_text(errors="replace")[-2000:]
    )


def stop_server(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def check(
    delay_us: int,
    clients: int,
    per_client: int,
    duration: float,
    warmup: float,
    out: Path,
    kinds: tuple[str, ...] = ("python", "c"),
    interval_ms: float = 2.0,
    symbols: int = 50,
) -> dict[str, dict[str, Any]]:
    """Measure the delay server with each load generator in `kinds`; every run's figures."""
    out.mkdir(parents=True, exist_ok=True)
    server_cpus, client_cpus = runner.cores()
    process, url = start_server(
        delay_us, symbols, interval_ms, out / "delay-server.log", server_cpus
    )
    scenario = Scenario(
        "delay",
        symbols=symbols,
        rate=clients / (interval_ms / 1000),
        clients=clients,
        per_client=per_client,
        duration=duration,
        warmup=warmup,
    )
    results = {}
    try:
        for kind in kinds:
            results[kind] = asyncio.run(
                runner.drive(
                    None,
                    url,
                    scenario,
                    client_cpus,
                    out / f"delay-{kind}-loadgen.log",
                    f"delay-{kind}",
                    client=kind,
                )
            )
    finally:
        stop_server(process)
    return results


def table(results: dict[str, dict[str, Any]], delay_us: int) -> str:
    lines = [
        f"known delay {delay_us / 1000:g} ms: latency minus the delay, µs",
        f"{'client':<8}{'count':>9}{'min':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}"
        f"{'max':>9}{'frames/s':>10}{'client%':>9}{'µs/frame':>10}",
    ]
    for kind, run in results.items():
        lat = run["latency_us"]
        if not lat["count"]:
            lines.append(f"{kind:<8}{0:>9}  no update was timed: see its log")
            continue
        per_frame = run.get("cpu_us_per_frame")
        lines.append(
            f"{kind:<8}{lat['count']:>9,}"
            + "".join(f"{lat[key] - delay_us:>8}" for key in ("min", "p50", "p90", "p99", "p99.9"))
            + f"{lat['max'] - delay_us:>9}{run['frames_per_s']:>10,.0f}{run['client_cpu']:>9.1f}"
            + (f"{per_frame:>10.1f}" if per_frame else f"{'-':>10}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cclient.delay", description=__doc__)
    parser.add_argument("command", nargs="?", choices=("check", "serve"), default="check")
    parser.add_argument("--delay-us", type=int, default=5000, help="the known delay (5000)")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="between updates (2)")
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--client", default="python,c", help="load generators, in turn")
    parser.add_argument("--out", type=Path, help="logs and delay.json (benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.delay_us < 0:
        parser.error("--delay-us must be 0 or more")
    if args.command == "serve":
        from benchmarks.peers.common import run

        run(serve(args))
        return 0
    kinds = tuple(kind.strip() for kind in args.client.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in runner.CLIENTS]
    if unknown:
        parser.error(f"unknown client(s): {', '.join(unknown)}; known: python, c")
    results_dir = Path(__file__).resolve().parent.parent / "results"
    out: Path = args.out or results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-delay"
    results = check(
        args.delay_us,
        args.clients,
        args.per_client,
        args.duration,
        args.warmup,
        out,
        kinds,
        args.interval_ms,
        args.symbols,
    )
    (out / "delay.json").write_bytes(
        orjson.dumps({"delay_us": args.delay_us, "runs": results}, option=orjson.OPT_INDENT_2)
    )
    print(table(results, args.delay_us))
    print(f"written: {out / 'delay.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
