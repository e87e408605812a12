"""Ingest over one producer socket: ticks per second from a producer's WebSocket into the folded
market of a real `feed serve`, and what it costs each side.

The server runs only the ingest source (`--source ingest`), pinned to the first core; this
process is the producer, pinned to the second. It sends pre-encoded messages (simulated ticks of
500 symbols, `ts` set) as fast as the acknowledgements allow, with a window of messages in
flight, and counts the ticks the server acknowledged as accepted over the window. CPU is read
from /proc/<pid>/stat for both. Each figure is the median of `--repeat` runs; the same again with
recording on (`--record` to a temporary file, plain and `.gz`) shows what recording costs.

    .venv/bin/python -m benchmarks.ingest_socket                 # full: about 2 minutes
    .venv/bin/python -m benchmarks.ingest_socket --quick         # seconds, for the tests
    .venv/bin/python -m benchmarks.ingest_socket --profile       # py-spy on the server

Writes `benchmarks/results/ingest_socket.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import procstats, report
from benchmarks.runner import cores
from benchmarks.tickparse import columnar, market
from feed import ticks
from feed.tickparse import encode_binary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TOKEN = "benchmark-token"
SYMBOLS = 500
SERVER = ("feed serve",)
"""The server is a child of the producer process: left out of the producer's CPU."""
TARGETS = {"objects": 300_000, "columnar": 2_000_000, "binary": 2_000_000}
"""Ticks per second asked for, with recording off."""


@dataclass(frozen=True)
class Form:
    name: str
    ticks_per_message: int


def encode(form: Form, messages: int) -> list[bytes]:
    """`messages` distinct messages of the form, ids 1..messages."""
    size = form.ticks_per_message
    data, names = market(size * messages, SYMBOLS)
    out = []
    for number in range(messages):
        chunk = data[number * size : (number + 1) * size]
        if form.name == "objects":
            lines = ticks.to_ndjson(chunk, names).splitlines()
            out.append(b'{"type":"ticks","id":%d,"ticks":[%b]}' % (number + 1, b",".join(lines)))
        elif form.name == "binary":
            out.append(encode_binary(chunk, names, number + 1))
        else:
            body = orjson.loads(columnar(chunk, names))
            out.append(orjson.dumps({"type": "batch", "id": number + 1, **body}))
    return out


class Server:
    """`feed serve` with only the ingest source, pinned to `cpus`."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log: list[str]) -> None:
        self.process = process
        self.url = url
        self.log = log
        self._drain = asyncio.create_task(self._read_log())

    @classmethod
    async def start(cls, cpus: set[int] | None, record: str | None) -> Server:
        args = ["--port", "0", "--source", "ingest", "--set", f"ingest.tokens={TOKEN}"]
        if record:
            args += ["--record", record]

        def pin() -> None:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "feed", "serve", *args,
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=pin,
        )  # fmt: skip
        assert process.stderr is not None
        log: list[str] = []
        async with asyncio.timeout(30):
            while True:
                line = (await process.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("feed serve exited early:\n" + "".join(log))
                log.append(line)
                found = re.search(r"listening on ws://(\S+)/ws", line)
                if found:
                    return cls(process, f"ws://{found.group(1)}/ingest", log)

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode())

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain


class Producer:
    """One socket to /ingest: sends messages round robin, at most `window` unacknowledged."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        messages: list[bytes],
        window: int,
        binary: bool = False,
    ):
        self.ws = ws
        self.binary = binary
        self.messages = messages
        self.window = window
        self.accepted = 0
        self.rejected = 0
        self.last_ack = time.perf_counter()
        self.max_gap = 0.0
        """The longest wait between two acknowledgements (a stall of the server's loop)."""
        self._room = asyncio.Semaphore(window)
        self._stop = False

    async def send(self) -> None:
        messages, ws, room = self.messages, self.ws, self._room
        kind = aiohttp.WSMsgType.BINARY if self.binary else aiohttp.WSMsgType.TEXT
        number = 0
        while not self._stop:
            await room.acquire()
            await ws.send_frame(messages[number % len(messages)], kind)
            number += 1

    async def receive(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            answer = orjson.loads(message.data)
            if answer.get("type") != "accepted":
                raise RuntimeError(f"the feed answered {answer}")
            self.accepted += answer["accepted"]
            self.rejected += answer["rejected_count"]
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - self.last_ack)
            self.last_ack = now
            self._room.release()

    def stop(self) -> None:
        self._stop = True
        for _ in range(self.window):
            self._room.release()


async def measure(
    server: Server,
    messages: list[bytes],
    warmup: float,
    duration: float,
    window: int,
    binary: bool = False,
) -> dict[str, float]:
    """Ticks/s accepted over `duration` seconds after `warmup`, and both sides' CPU."""
    me = os.getpid()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
        producer = Producer(ws, messages, window, binary)
        receiver = asyncio.create_task(producer.receive())
        sender = asyncio.create_task(producer.send())
        await asyncio.sleep(warmup)
        started, accepted = time.perf_counter(), producer.accepted
        producer.max_gap = 0.0
        server_cpu = procstats.sample(server.process.pid).cpu_seconds
        producer_cpu = procstats.sample(me, exclude=SERVER).cpu_seconds
        await asyncio.sleep(duration)
        elapsed = time.perf_counter() - started
        done = producer.accepted - accepted
        max_gap = max(producer.max_gap, time.perf_counter() - producer.last_ack)
        server_cpu = procstats.sample(server.process.pid).cpu_seconds - server_cpu
        producer_cpu = procstats.sample(me, exclude=SERVER).cpu_seconds - producer_cpu
        producer.stop()
        await sender
        await ws.close()
        with contextlib.suppress(aiohttp.ClientError):
            await receiver
    if producer.rejected:
        raise RuntimeError(f"the feed rejected {producer.rejected} ticks")
    return {
        "ticks_per_s": done / elapsed,
        "server_cpu": server_cpu / elapsed,
        "producer_cpu": producer_cpu / elapsed,
        "max_ack_gap_ms": max_gap * 1000,
        "seconds": elapsed,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_cpus, producer_cpus = cores()
    if producer_cpus is not None:
        os.sched_setaffinity(0, producer_cpus)
    forms = [
        Form("objects", args.objects_batch),
        Form("columnar", args.columnar_batch),
        Form("binary", args.columnar_batch),
    ]
    encoded = {form.name: encode(form, args.messages) for form in forms}
    records = ["off"] if args.quick else ["off", "plain", "gz"]
    rows = []
    profiled: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="feed-ingest-bench-") as tmp:
        for record in records:
            path = None
            if record != "off":
                path = str(Path(tmp) / ("ticks.ndjson" + (".gz" if record == "gz" else "")))
            server = await Server.start(server_cpus, path)
            try:
                for form in forms:
                    runs = []
                    for _ in range(args.repeat):
                        runs.append(
                            await measure(
                                server,
                                encoded[form.name],
                                args.warmup,
                                args.duration,
                                args.window,
                                form.name == "binary",
                            )
                        )
                        print(
                            f"  {record:<6}{form.name:<10}"
                            f"{runs[-1]['ticks_per_s']:>14,.0f} ticks/s",
                            flush=True,
                        )
                    rows.append(
                        {
                            "record": record,
                            "form": form.name,
                            "ticks_per_message": form.ticks_per_message,
                            "bytes_per_message": statistics.mean(map(len, encoded[form.name])),
                            **{
                                key: statistics.median(r[key] for r in runs)
                                for key in (
                                    "ticks_per_s",
                                    "server_cpu",
                                    "producer_cpu",
                                    "max_ack_gap_ms",
                                )
                            },
                            "runs": runs,
                        }
                    )
                if args.profile and record == "off":
                    profiled = await profile(server, encoded, args)
            finally:
                await server.stop()
            if path and Path(path).exists():
                for row in rows[-len(forms) :]:
                    row["record_file_bytes"] = Path(path).stat().st_size  # both forms' runs
    return {
        "benchmark": "ingest_socket",
        "machine": report.machine(),
        "pinned": {
            "server": sorted(server_cpus or []),
            "producer": sorted(producer_cpus or []),
        },
        "params": {
            key: getattr(args, key)
            for key in (
                "duration",
                "warmup",
                "repeat",
                "window",
                "messages",
                "objects_batch",
                "columnar_batch",
            )
        },
        "symbols": SYMBOLS,
        "targets": TARGETS,
        "rows": rows,
        "profile": profiled,
    }


async def profile(
    server: Server, encoded: dict[str, list[bytes]], args: argparse.Namespace
) -> dict[str, Any]:
    """Where the server's time goes while each form runs: py-spy samples (native frames
    attributed to the Python line that called them), the top functions by own and by inclusive
    share. Sampling slows the server down: these runs' rates are not the figures."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    found: dict[str, Any] = {}
    for name, messages in encoded.items():
        with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
            record = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(server.process.pid), "--duration", "4",
                "--rate", "500", "--format", "raw", "--output", raw.name,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await measure(server, messages, 0.3, 4.5, args.window)
            await record.wait()
            found[name] = _top(Path(raw.name).read_text())
    return found


def _top(collapsed: str, count: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top functions of py-spy's collapsed stacks ("a;b;c n" lines): own and inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    total = max(total, 1)
    # Inclusive: below the frames every sample shares (the event loop, the request handler).
    below = [(frame, n) for frame, n in inclusive.most_common() if n / total < 0.95]
    return {
        "own": [(frame, n / total) for frame, n in own.most_common(count)],
        "inclusive": [(frame, n / total) for frame, n in below[:count]],
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"ingest over one producer socket: {result['symbols']} symbols, "
        f"server on cores {result['pinned']['server']}, "
        f"producer on {result['pinned']['producer']}, "
        f"window {result['params']['window']}, median of {result['params']['repeat']}",
        f"{'record':<8}{'form':<10}{'ticks/msg':>10}{'ticks/s':>14}{'target':>12}"
        f"{'server CPU':>12}{'producer CPU':>14}{'max gap ms':>12}",
    ]
    for row in result["rows"]:
        target = TARGETS[row["form"]] if row["record"] == "off" else None
        mark = "" if target is None else (" ok" if row["ticks_per_s"] >= target else " MISS")
        lines.append(
            f"{row['record']:<8}{row['form']:<10}{row['ticks_per_message']:>10,}"
            f"{row['ticks_per_s']:>14,.0f}"
            f"{(f'{target:,}' + mark) if target else '':>15}"
            f"{row['server_cpu']:>12.0%}{row['producer_cpu']:>14.0%}"
            f"{row['max_ack_gap_ms']:>12,.0f}"
        )
    return "\n".join(lines)


def _run(main: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        result: dict[str, Any] = asyncio.run(main)
    else:
        result = uvloop.run(main)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_socket",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--window", type=int, default=4, help="messages in flight")
    parser.add_argument("--messages", type=int, default=32, help="distinct messages per form")
    parser.add_argument("--objects-batch", type=int, default=1000, help="ticks per message")
    parser.add_argument("--columnar-batch", type=int, default=10000, help="ticks per message")
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--profile", action="store_true", help="py-spy on the server as well")
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest_socket.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat, args.messages = 0.3, 0.1, 1, 4
    result = _run(run(args))
    print(table(result))
    for name, top in (result["profile"] or {}).items():
        if name == "error":
            print(f"profile: {top}")
            continue
        print(f"server profile, {name} (share of samples; native time goes to its caller):")
        for kind in ("own", "inclusive"):
            print(f"  {kind}:")
            for frame, share in top[kind]:
                print(f"    {share:6.1%}  {frame}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
