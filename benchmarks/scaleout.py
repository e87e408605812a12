"""Scale-out over NATS: what the split (`feed ingest` -> NATS -> `feed gateway`) costs and keeps.

Three measurements (figures, not thresholds):

- `latency light|fanout [--gateways 1|2]`: in the same run, the scenario against one
  `feed serve --source stdin` (exactly `python -m benchmarks run`: `runner.run_server`) and
  through the split: a private `nats-server -js` (free port, temporary store), one
  `feed ingest --source stdin` fed by the same producer (`feed simulate --prime`), and one
  gateway (`--gateways 2`: `feed gateway --workers 2`) that the same load generator connects to.
  Latency from the tick's birth (`ts`, stamped by the producer), CPU of every role, snapshots
  per second; medians over `--repeat`. Every server-side process is on the first core, the load
  generator and the producer on the second, as the runner does.
- `overload`: the `overload` market (500 symbols, 10,000 ticks/s) into `feed ingest`, one
  gateway and a couple of clients; whether every snapshot the ingest published reached the
  gateway (its counters against the ingest's), and a subscriber to `<prefix>.snap.>` in this
  process (nats-py, on the second core) checking each symbol's seq only goes up and that the
  newest seqs add up to every tick folded.
- `startup`: a fresh stream holding N symbols' snapshots (published here, encoded as feed
  encodes them), then `feed gateway --port 0`: its own read time, process start to `listening
  on`, and a client's subscription to all N symbols right after.

`report.json` under benchmarks/results/<time>-scaleout-<command>/, and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks import procstats, report, runner
from benchmarks.scenarios import SCENARIOS, Scenario
from benchmarks.servers import SERVERS, ServerSpec

RESULTS = Path(__file__).resolve().parent / "results"
NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)
PREFIX = "feed"
NODE = "bench"
READY_TIMEOUT = 60.0
LIGHT_P50_TARGET_MS = 0.5
"""The issue's target: the NATS hop adds at most this much to p50 in `light`."""
STARTUP_TARGET_S = 1.0
"""The issue's target: a gateway serving 10,000 symbols within this from its start."""
READ_LINE = re.compile(r"read the newest snapshots of (\d+) symbol\(s\) in ([\d.]+) s")
LISTENING_LINE = re.compile(r"listening on (ws://[\w.:\[\]-]+/ws)")


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(what: str, done: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
    """Poll `done` (a /stats reading, a log) every 20 ms until it holds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise runner.BenchmarkError(f"{what}: not within {timeout:g} s")
        time.sleep(0.02)


def _pinning(
    server: set[int] | None,
    client: set[int] | None,
    servers: str = "feed serve | ingest, nats-server, gateway",
    clients: str = "load generator and producer",
) -> str:
    if server is None or client is None:
        return "not pinned (fewer than two cores available)"
    return f"server side ({servers}) on core {min(server)}; {clients} on core {min(client)}"


class NatsServer:
    """A private `nats-server -js` on a free port, its store in a temporary directory."""

    def __init__(self, log_path: Path) -> None:
        if NATS_SERVER is None:
            raise runner.BenchmarkError(
                "nats-server is not installed (apt-get install nats-server)"
            )
        self.port = _free_port()
        self.log_path = log_path
        self.store = Path(tempfile.mkdtemp(prefix="feed-scaleout-js-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, cpus: set[int] | None) -> None:
        assert NATS_SERVER is not None
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        command = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "-sd", str(self.store)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=runner._pinned(cpus),
        )
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise runner.BenchmarkError(
                    f"nats-server exited with {process.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            return b"Server is ready" in self.log_path.read_bytes()

        _wait("nats-server ready", ready)

    def sample(self) -> procstats.Sample:
        assert self.process is not None
        return procstats.sample(self.process.pid)

    def stop(self) -> int | None:
        code = None
        if self.process is not None:
            code = runner.stop_group(self.process, 10)
            self._log.close()
        shutil.rmtree(self.store, ignore_errors=True)
        return code


class Ingest(runner.Server):
    """`feed ingest`: ready once it listens on HTTP (it has no /ws)."""

    listening = re.compile(rb"listening on (http://[\w.:\[\]-]+)/ ")


def _settings(scenario: Scenario) -> list[str]:
    """The `--set` arguments the runner gives our server for `scenario` (limits sized to it)."""
    command = SERVERS["feed"].command(scenario)
    found: list[str] = []
    for index, word in enumerate(command):
        if word == "--set":
            found += ["--set", command[index + 1]]
    return found


def ingest_spec(nats_url: str) -> ServerSpec:
    def build(scenario: Scenario) -> list[str]:
        return [
            sys.executable, "-m", "feed", "ingest", "--host", "127.0.0.1", "--port", "0",
            "--source", "stdin", "--set", f"bus.url={nats_url}", "--set", f"bus.node={NODE}",
            *_settings(scenario),
        ]  # fmt: skip

    return ServerSpec("ingest", "feed ingest --source stdin", build)


def gateway_command(nats_url: str, workers: int, settings: list[str]) -> list[str]:
    command = [sys.executable, "-m", "feed", "gateway", "--host", "127.0.0.1", "--port", "0"]
    if workers > 1:
        command += ["--workers", str(workers)]
    return [*command, "--set", f"bus.url={nats_url}", *settings]


def gateway_spec(nats_url: str, workers: int) -> ServerSpec:
    return ServerSpec(
        "split" if workers == 1 else f"split-{workers}",
        f"feed ingest -> nats-server -> feed gateway (workers {workers})",
        lambda scenario: gateway_command(nats_url, workers, _settings(scenario)),
    )


class Split(runner.Server):
    """The gateway, as `runner.drive` sees the server: its samples are every server-side
    process's (ingest, nats-server, the gateway's), kept per role at each call, and its stats
    the ingest's (the market it folded), with the gateway's /stats read at the same moments."""

    ingest: Ingest
    nats: NatsServer

    def attach(self, ingest: Ingest, nats: NatsServer) -> None:
        assert self.process is not None
        self.ingest, self.nats = ingest, nats
        self.workers = procstats.tree(self.process.pid)[1:]
        self.samples: list[tuple[float, dict[str, procstats.Sample]]] = []
        self.readings: list[tuple[float, dict[str, Any], dict[str, Any]]] = []

    def roles(self) -> dict[str, procstats.Sample]:
        assert self.process is not None and self.ingest.process is not None
        found = {
            "ingest": procstats.sample(self.ingest.process.pid),
            "nats-server": self.nats.sample(),
        }
        whole = procstats.sample(self.process.pid)
        if not self.workers:
            found["gateway"] = whole
            return found
        cpu, rss = whole.cpu_seconds, whole.rss_bytes
        for index, pid in enumerate(self.workers, 1):
            worker = procstats.sample(pid)
            found[f"gateway worker {index}"] = worker
            cpu -= worker.cpu_seconds
            rss -= worker.rss_bytes
        found["gateway supervisor"] = procstats.Sample(cpu, rss)
        return found

    def sample(self) -> procstats.Sample:
        roles = self.roles()
        self.samples.append((time.monotonic(), roles))
        return procstats.Sample(
            sum(s.cpu_seconds for s in roles.values()), sum(s.rss_bytes for s in roles.values())
        )

    def stats(self) -> dict[str, Any]:
        ingest = self.ingest.stats()
        gateway: dict[str, Any] = runner._get_json(self.http("/stats"), timeout=30)
        self.readings.append((time.monotonic(), ingest, gateway))
        return ingest

    def cpu_between(self, first: int, last: int) -> dict[str, float]:
        """Each role's CPU (% of one core) between two of the samples taken."""
        (t0, a), (t1, b) = self.samples[first], self.samples[last]
        return {role: 100 * (b[role].cpu_seconds - a[role].cpu_seconds) / (t1 - t0) for role in b}


def _open_pipe() -> tuple[int, int, int]:
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, runner.PIPE_BYTES)
    return read_fd, write_fd, fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)


def _gateway_ready(gateway: runner.Server, scenario: Scenario, workers: int) -> list[int]:
    """Wait until every gateway process holds every symbol; then check its list is the
    simulator's, in order (the load generator draws each client's symbols from it, so the
    clients subscribe to the same symbols as against `feed serve`). The pids that answered."""
    seen: dict[int, int] = {}

    def ready() -> bool:
        stats = runner._get_json(gateway.http("/stats"))
        seen[int(stats["pid"])] = int(stats["market"]["symbols"])
        return len(seen) >= workers and all(n >= scenario.symbols for n in seen.values())

    _wait(f"every gateway process holding {scenario.symbols} symbols", ready)
    for _ in range(4 * workers):  # new connections: each worker is asked in turn, likely
        runner._check_symbols(gateway, scenario)
    return sorted(seen)


def run_split(
    scenario: Scenario,
    workers: int,
    out: Path,
    label: str,
    client: str = "python",
    timed: str | None = None,
    on_ready: Callable[[str], None] | None = None,
    after: Callable[[runner.Producer, Ingest, Split], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The scenario through the split; `runner.run_server`'s figures, with each role's CPU.

    Started in this order: nats-server, the ingest (it creates the stream), the gateway (it
    reads the empty stream and listens), `on_ready(nats_url)`, the producer; the load
    generator once the ingest folded the opening and the gateway holds every symbol. `after`
    runs once the window is over, before anything is stopped (it may stop the producer).
    Stopped: the producer, the gateway, the ingest, nats-server."""
    server_cpus, client_cpus = runner.cores()
    nats = NatsServer(out / f"{label}-nats.log")
    ingest = Ingest(ingest_spec(nats.url), scenario, out / f"{label}-ingest.log")
    gateway = Split(gateway_spec(nats.url, workers), scenario, out / f"{label}-gateway.log")
    producer: runner.Producer | None = None
    read_fd = write_fd = -1
    exits: dict[str, int | None] = {}
    try:
        nats.start(server_cpus)
        read_fd, write_fd, pipe_bytes = _open_pipe()
        ingest.start(server_cpus, stdin=read_fd)
        os.close(read_fd)
        read_fd = -1
        _wait(
            "the ingest connected to NATS",
            lambda: ingest.stats().get("bus", {}).get("state") == "connected",
        )
        gateway.start(server_cpus)
        if on_ready is not None:
            on_ready(nats.url)
        producer = runner.Producer(scenario, out / f"{label}-producer.log")
        producer.start(write_fd, client_cpus)
        os.close(write_fd)
        write_fd = -1
        primed = producer.wait_primed(ingest)
        answered = _gateway_ready(gateway, scenario, workers)
        print(f"  {label}: the producer primed the market with {primed:,} ticks", flush=True)
        gateway.attach(ingest, nats)
        result = asyncio.run(
            runner.drive(
                gateway,
                gateway.url,
                scenario,
                client_cpus,
                out / f"{label}-loadgen.log",
                label,
                producer=producer,
                client=client,
                timed=timed,
            )
        )
        # samples: 0 before the idle wait, 1 after it, 2 and 3 the window's start and end
        result["role_cpu"] = gateway.cpu_between(-2, -1)
        result["role_idle_cpu"] = gateway.cpu_between(0, 1)
        (t0, ingest0, gateway0), (t1, ingest1, gateway1) = gateway.readings[-2:]
        seconds = t1 - t0
        result["bus"] = {
            "seconds": seconds,
            "published_per_s": (ingest1["bus"]["published"] - ingest0["bus"]["published"])
            / seconds,
            "received_per_s": (gateway1["bus"]["received"] - gateway0["bus"]["received"]) / seconds,
            "ingest_end": ingest1["bus"],
            "gateway_end": gateway1["bus"],
            "gateway_pid": gateway1["pid"],
        }
        result["gateway_pids"] = answered
        if after is not None:
            result["after"] = after(producer, ingest, gateway)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if producer is not None:
            exits["producer"] = producer.stop()
        exits["gateway"] = gateway.stop()
        exits["ingest"] = ingest.stop()
        exits["nats-server"] = nats.stop()
    result["server"] = gateway.spec.name
    result["exit_codes"] = exits
    result["server_exit_code"] = exits["gateway"]
    result["pinned"] = {
        "server": sorted(server_cpus or []),
        "client": sorted(client_cpus or []),
        "producer": sorted(client_cpus or []),
    }
    assert producer is not None
    result["producer"]["exit_code"] = exits["producer"]
    result["producer"]["pipe_bytes"] = pipe_bytes
    return result


# -- latency ------------------------------------------------------------------------------------


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = report.summarize(runs)
    if "role_cpu" in runs[0]:
        summary["role_cpu"] = {
            role: _median([run["role_cpu"][role] for run in runs]) for role in runs[0]["role_cpu"]
        }
        summary["role_idle_cpu"] = {
            role: _median([run["role_idle_cpu"][role] for run in runs])
            for role in runs[0]["role_idle_cpu"]
        }
        summary["published_per_s"] = _median([run["bus"]["published_per_s"] for run in runs])
    else:
        summary["role_cpu"] = {"feed serve": summary.get("server_cpu")}
    return summary


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def latency_table(summaries: list[dict[str, Any]], scenario: Scenario) -> str:
    roles: list[str] = []
    for s in summaries:
        roles += [role for role in s["role_cpu"] if role not in roles]
    head = ["arrangement", "p50 ms", "p99 ms", "p99.9 ms", "snapshots/s", "market"]
    head += [f"{role} %" for role in roles]
    head += ["server side %", "loadgen %", "producer %"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in summaries:
        latency = s["latency_us"]
        row = [
            f"`{s['server']}`",
            f"{latency['p50'] / 1000:.2f}",
            f"{latency['p99'] / 1000:.2f}",
            f"{latency['p99.9'] / 1000:.2f}",
            f"{s['snapshots_per_s']:,.0f}",
            f"{100 * s['tick_rate']['ratio']:.0f}%" + (" !" if s["tick_rate"]["behind"] else ""),
        ]
        row += [_cpu(s["role_cpu"].get(role)) for role in roles]
        row += [_cpu(s.get("server_cpu")), _cpu(s.get("client_cpu")), _cpu(s.get("producer_cpu"))]
        lines.append("| " + " | ".join(row) + " |")
    title = (
        f"**{scenario.name}** ({scenario.symbols} symbols, {scenario.rate:g} ticks/s, "
        f"{scenario.clients:,} clients x {scenario.per_client}; {scenario.duration:g} s; "
        f"median of {summaries[0]['runs']} run(s)); CPU in % of one core"
    )
    return title + "\n\n" + "\n".join(lines)


def latency(args: argparse.Namespace) -> int:
    scenario = SCENARIOS[args.scenario].with_overrides(
        duration=args.duration,
        warmup=args.warmup,
        idle=args.idle,
        clients=args.clients,
        per_client=args.per_client,
    )
    out = _out(args, f"latency-{scenario.name}" + ("-2gw" if args.gateways > 1 else ""))
    server_cpus, client_cpus = runner.cores()
    pinning = _pinning(server_cpus, client_cpus)
    print(f"pinning: {pinning}", flush=True)
    notes = []
    if args.gateways > 1 and server_cpus is not None and len(server_cpus) == 1:
        notes.append(
            f"--gateways {args.gateways}: the {args.gateways} gateway workers share core "
            f"{min(server_cpus)} with the ingest and nats-server: this measures the overhead of "
            "the workers, not scaling over cores"
        )
    for note in notes:
        print(f"note: {note}", flush=True)
    split_name = gateway_spec("", args.gateways).name
    runs: dict[str, list[dict[str, Any]]] = {"feed": [], split_name: []}
    failures: dict[str, str] = {}
    for repeat in range(args.repeat):
        for name in runs:
            label = f"{name}-{repeat + 1}"
            print(f"[{label}] {scenario.name}", flush=True)
            try:
                if name == "feed":
                    result = runner.run_server(
                        SERVERS["feed"], scenario, out, label, args.client, args.timed
                    )
                else:
                    result = run_split(scenario, args.gateways, out, label, args.client, args.timed)
            except (runner.BenchmarkError, OSError, TimeoutError) as exc:
                failures[label] = str(exc)
                print(f"[{label}] failed: {exc}", file=sys.stderr, flush=True)
                continue
            runs[name].append(result)
    summaries = [_summary(server_runs) for server_runs in runs.values() if server_runs]
    difference = None
    if len(summaries) == 2:
        serve, split = summaries
        difference = {
            key: (split["latency_us"][key] - serve["latency_us"][key]) / 1000
            for key in ("p50", "p99")
        }
    document = {
        "benchmark": "scaleout latency",
        "scenario": runner.scenario_dict(scenario),
        "gateways": args.gateways,
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": report.machine(),
        "client": args.client,
        "pinning": pinning,
        "notes": notes,
        "clock": "same host: latency = receive time - ts (stamped by the producer) on one clock",
        "split_minus_serve_ms": difference,
        "target": {"light_p50_added_ms": LIGHT_P50_TARGET_MS},
        "failures": failures,
        "summary": summaries,
        "runs": runs,
    }
    report.write_json(out / "report.json", document)
    if summaries:
        print()
        print(latency_table(summaries, scenario))
        print(f"pinning: {pinning}")
        for note in notes:
            print(f"note: {note}")
        if difference is not None:
            line = (
                f"split - serve: p50 {difference['p50']:+.3f} ms, p99 {difference['p99']:+.3f} ms"
            )
            if scenario.name == "light":
                line += (
                    f" (target: the NATS hop adds at most {LIGHT_P50_TARGET_MS} ms at p50: "
                    + ("met" if difference["p50"] <= LIGHT_P50_TARGET_MS else "MISSED")
                    + ")"
                )
            print(line)
        for s in summaries:
            if s["client_saturated"]:
                print(f"warning: the load generator's core was near saturation for {s['server']}")
            if s["tick_rate"]["behind"]:
                print(f"warning: {s['server']}'s market fell behind the rate asked for")
    print(f"written: {out / 'report.json'}")
    return 1 if failures else 0


# -- overload -----------------------------------------------------------------------------------


class SnapChecker:
    """A subscriber to `<prefix>.snap.>` in this process (its own thread and event loop): how
    many snapshots, and per symbol whether seq only went up, and the newest seq."""

    def __init__(self) -> None:
        self.count = 0
        self.unparsed = 0
        self.not_newer = 0
        """Snapshots whose (epoch, seq) was not above the one before on their subject."""
        self.newest: dict[str, tuple[int, int]] = {}
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_seconds = 0.0

    def start(self, url: str) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(url)), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise runner.BenchmarkError("the NATS checker did not subscribe in 10 s")

    async def _main(self, url: str) -> None:
        import nats

        from feed import bus

        started = time.thread_time()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        skip = len(PREFIX) + 6
        newest = self.newest

        async def error(exc: Exception) -> None:
            self.errors.append(repr(exc))

        async def take(msg: Any) -> None:
            self.count += 1
            version = bus.version(msg.data)
            if version is None:
                self.unparsed += 1
                return
            name = msg.subject[skip:]
            if version <= newest.get(name, (0, 0)):
                self.not_newer += 1
            else:
                newest[name] = version

        nc = await nats.connect(url, name="scaleout-checker", error_cb=error)
        await nc.subscribe(
            f"{PREFIX}.snap.>", cb=take, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()
        self.cpu_seconds = time.thread_time() - started

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def result(self) -> dict[str, Any]:
        return {
            "snapshots": self.count,
            "unparsed": self.unparsed,
            "not_newer": self.not_newer,
            "symbols": len(self.newest),
            "seq_sum": sum(seq for _, seq in self.newest.values()),
            "errors": self.errors[:10],
        }


def _settle(read: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Read until two readings 0.2 s apart agree (a counter that stopped moving)."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now == last:
            return now
        last = now
    raise runner.BenchmarkError(f"still moving after {timeout:g} s: {last}")


def overload(args: argparse.Namespace) -> int:
    scenario = SCENARIOS["overload"].with_overrides(
        duration=args.duration,
        warmup=args.warmup,
        idle=args.idle,
        clients=args.clients,
        per_client=args.per_client,
        symbols=args.symbols,
        rate=args.rate,
    )
    out = _out(args, "overload")
    server_cpus, client_cpus = runner.cores()
    pinning = _pinning(
        server_cpus,
        client_cpus,
        "ingest, nats-server, gateway",
        "load generator, producer and this process (its NATS checker)",
    )
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # the checker's thread: off the server's core
    print(f"pinning: {pinning}", flush=True)
    checker = SnapChecker() if not args.no_check else None
    self_start = resource.getrusage(resource.RUSAGE_SELF)

    def after(producer: runner.Producer, ingest: Ingest, gateway: Split) -> dict[str, Any]:
        """The producer stopped, the ingest drained: every snapshot it published, in the
        gateway and in the checker; the newest seqs against every tick folded."""
        producer.stop()

        def ingest_done() -> tuple[int, int, int]:
            stats = ingest.stats()
            return stats["market"]["ticks"], stats["bus"]["published"], stats["bus"]["pending"]

        ticks, published, pending = (int(value) for value in _settle(ingest_done))

        def gateway_counts() -> dict[str, int]:
            bus = runner._get_json(gateway.http("/stats"))["bus"]
            return {key: value for key, value in bus.items() if isinstance(value, int)}

        def caught_up() -> bool:
            counts = gateway_counts()
            live = counts["received"] - counts["read_snapshots"]
            seen = checker.count if checker is not None else published
            return live >= published and seen >= published

        with contextlib.suppress(runner.BenchmarkError):
            _wait("the gateway and the checker caught up", caught_up, timeout=15)
        counts = _settle(gateway_counts)
        symbols = list(runner._get_json(gateway.http("/symbols")))
        held = runner._get_json(
            gateway.http("/snapshot?symbols=" + urllib.parse.quote(",".join(symbols)))
        )
        found: dict[str, Any] = {
            "ingest": {"ticks": ticks, "published": published, "pending": pending},
            "gateway": counts,
            "gateway_live_received": counts["received"] - counts["read_snapshots"],
            "gateway_seq_sum": sum(int(s["seq"]) for s in held),
        }
        if checker is not None:
            checker.stop()
            found["checker"] = checker.result()
            mismatched = [
                s["symbol"]
                for s in held
                if checker.newest.get(s["symbol"], (0, 0)) != (int(s["epoch"]), int(s["seq"]))
            ]
            found["checker"]["gateway_differs"] = mismatched[:20]
            found["checker"]["gateway_differs_count"] = len(mismatched)
        return found

    def on_ready(url: str) -> None:
        if checker is not None:
            checker.start(url)

    failures: dict[str, str] = {}
    result: dict[str, Any] | None = None
    try:
        result = run_split(
            scenario, 1, out, "overload", args.client, args.timed, on_ready=on_ready, after=after
        )
    except (runner.BenchmarkError, OSError, TimeoutError) as exc:
        failures["overload"] = str(exc)
        print(f"[overload] failed: {exc}", file=sys.stderr, flush=True)
    finally:
        if checker is not None:
            checker.stop()
    self_end = resource.getrusage(resource.RUSAGE_SELF)
    document: dict[str, Any] = {
        "benchmark": "scaleout overload",
        "scenario": runner.scenario_dict(scenario),
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": report.machine(),
        "pinning": pinning,
        "checker": "nats-py subscriber to feed.snap.> in the benchmark process"
        if checker is not None
        else "off (--no-check): counters only",
        "benchmark_process_cpu_seconds": (self_end.ru_utime + self_end.ru_stime)
        - (self_start.ru_utime + self_start.ru_stime),
        "checker_thread_cpu_seconds": checker.cpu_seconds if checker is not None else None,
        "failures": failures,
        "result": result,
    }
    if result is not None:
        document["figures"] = figures = overload_figures(result)
        print()
        print(overload_table(figures, scenario))
        print(f"pinning: {pinning}")
    report.write_json(out / "report.json", document)
    print(f"written: {out / 'report.json'}")
    return 1 if failures else 0


def overload_figures(result: dict[str, Any]) -> dict[str, Any]:
    after = result["after"]
    published = after["ingest"]["published"]
    figures: dict[str, Any] = {
        "publish_per_s": result["bus"]["published_per_s"],
        "received_per_s": result["bus"]["received_per_s"],
        "ingest_cpu": result["role_cpu"]["ingest"],
        "nats_cpu": result["role_cpu"]["nats-server"],
        "gateway_cpu": result["role_cpu"]["gateway"],
        "client_cpu": result["client_cpu"],
        "producer_cpu": result.get("producer_cpu"),
        "market_kept": result["tick_rate"]["ratio"],
        "market_behind": result["tick_rate"]["behind"],
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "published": published,
        "gateway_received": after["gateway"]["received"],
        "gateway_live_received": after["gateway_live_received"],
        "gateway_older": after["gateway"]["older"],
        "gateway_unparsed": after["gateway"]["unparsed"],
        "gateway_slow_consumer": after["gateway"]["slow_consumer"],
        "gateway_reads": after["gateway"]["reads"],
        "missing_at_gateway": published - after["gateway_live_received"],
        "ticks_folded": after["ingest"]["ticks"],
        "gateway_seq_sum": after["gateway_seq_sum"],
    }
    checker = after.get("checker")
    if checker is not None:
        figures |= {
            "checker_snapshots": checker["snapshots"],
            "checker_not_newer": checker["not_newer"],
            "checker_seq_sum": checker["seq_sum"],
            "checker_gateway_differs": checker["gateway_differs_count"],
        }
    figures["every_snapshot_reached_the_gateway"] = (
        figures["missing_at_gateway"] == 0 and figures["gateway_slow_consumer"] == 0
    )
    figures["newest_seqs_cover_every_tick"] = figures["gateway_seq_sum"] == figures["ticks_folded"]
    return figures


def overload_table(f: dict[str, Any], scenario: Scenario) -> str:
    rows = [
        ("publish rate (ingest, window)", f"{f['publish_per_s']:,.0f} msg/s"),
        ("received rate (gateway, window)", f"{f['received_per_s']:,.0f} msg/s"),
        ("market kept (ingest folded / asked)", f"{100 * f['market_kept']:.1f}%"),
        ("ingest CPU", f"{f['ingest_cpu']:.0f}%"),
        ("nats-server CPU", f"{f['nats_cpu']:.0f}%"),
        ("gateway CPU", f"{f['gateway_cpu']:.0f}%"),
        ("loadgen / producer CPU", f"{f['client_cpu']:.0f}% / {f['producer_cpu'] or 0:.0f}%"),
        ("client latency p50 / p99", f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms"),
        ("published (ingest bus.published, whole run)", f"{f['published']:,}"),
        (
            "gateway bus.received (live + read) / older / unparsed",
            f"{f['gateway_received']:,} / {f['gateway_older']:,} / {f['gateway_unparsed']:,}",
        ),
        ("published - received live at the gateway", f"{f['missing_at_gateway']:,}"),
        (
            "gateway slow-consumer events / reads",
            f"{f['gateway_slow_consumer']} / {f['gateway_reads']}",
        ),
        (
            "ticks folded = sum of newest seqs at the gateway",
            f"{f['ticks_folded']:,} = {f['gateway_seq_sum']:,}",
        ),
    ]
    if "checker_snapshots" in f:
        rows += [
            ("checker: snapshots seen on feed.snap.>", f"{f['checker_snapshots']:,}"),
            ("checker: (epoch, seq) not above the previous", f"{f['checker_not_newer']:,}"),
            ("checker: sum of newest seqs", f"{f['checker_seq_sum']:,}"),
            (
                "checker: symbols whose newest differs at the gateway",
                f"{f['checker_gateway_differs']}",
            ),
        ]
    rows += [
        (
            "every snapshot reached the gateway",
            "yes" if f["every_snapshot_reached_the_gateway"] else "NO",
        ),
        (
            "newest seqs cover every tick folded",
            "yes" if f["newest_seqs_cover_every_tick"] else "NO",
        ),
    ]
    title = (
        f"**overload through the split** ({scenario.symbols} symbols, {scenario.rate:g} ticks/s, "
        f"{scenario.clients} client(s) x {scenario.per_client}; {scenario.duration:g} s)"
    )
    return (
        title
        + "\n\n| figure | value |\n| --- | --- |\n"
        + "\n".join(f"| {name} | {value} |" for name, value in rows)
    )


# -- startup ------------------------------------------------------------------------------------


async def fill(url: str, count: int) -> dict[str, Any]:
    """A fresh stream holding the newest snapshot of `count` symbols, as `feed ingest`
    publishes them: encoded by feed.protocol, fields in feed.coalescer's order, `epoch` last,
    header Feed-Node."""
    import nats

    from feed import bus, protocol
    from feed.coalescer import SNAPSHOT_FIELDS
    from feed.config import BusConfig
    from feed.market import new_epoch
    from simulators import symbol_names

    config = BusConfig(url=(url,), prefix=PREFIX)
    nc = await nats.connect(url, name="scaleout-fill")
    try:
        js = nc.jetstream()
        await bus.ensure_stream(js, config)
        subjects = bus.Subjects(PREFIX)
        headers = {bus.NODE_HEADER: NODE}
        epoch, now = new_epoch(), time.time_ns()
        started = time.perf_counter()
        for index, name in enumerate(symbol_names(count)):
            price = 100.0 + index % 500
            values = {
                "symbol": name, "seq": 7, "ts": now, "last": price, "last_size": 100,
                "bid": price - 0.01, "ask": price + 0.01, "bid_size": 300, "ask_size": 200,
                "open": price - 1, "high": price + 2, "low": price - 2, "volume": 700,
                "vwap": price + 0.1234, "trades": 3, "epoch": epoch,
            }  # fmt: skip
            snapshot = {key: values[key] for key in SNAPSHOT_FIELDS}
            payload = protocol.encode_snapshot(snapshot)
            await nc.publish(subjects.snap(name), payload, headers=headers)
        await nc.flush()
        seconds = time.perf_counter() - started
        info = await js.stream_info(bus.stream_name(config))
        deadline = time.monotonic() + 30
        while info.state.messages < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            info = await js.stream_info(bus.stream_name(config))
        return {"symbols": count, "stored": info.state.messages, "publish_seconds": seconds}
    finally:
        await nc.close()


async def start_gateway(
    url: str, count: int, cpus: set[int] | None, log_path: Path
) -> dict[str, Any]:
    """`feed gateway --port 0` over the stream: its start-up timed from the moment it is
    started, then one client subscribing to every symbol; the gateway stopped."""
    import aiohttp

    from simulators import symbol_names

    settings = [
        "--set", f"limits.max_symbols_per_connection={max(1000, count)}",
        "--set", f"limits.max_message_size={max(4096, 16 * count + 1024)}",
    ]  # fmt: skip
    command = gateway_command(url, 1, settings)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=runner._pinned(cpus),
    )
    assert process.stderr is not None
    found: dict[str, Any] = {}
    try:
        while "listening_s" not in found:
            raw = await asyncio.wait_for(process.stderr.readline(), READY_TIMEOUT)
            if not raw:
                raise runner.BenchmarkError(
                    f"the gateway exited with {await process.wait()} before listening:\n"
                    + "\n".join(line for _, line in lines[-20:])
                )
            at, line = time.monotonic() - started, raw.decode(errors="replace").rstrip()
            lines.append((at, line))
            if "reading the newest snapshots from NATS" in line:
                found["app_ready_s"] = at  # interpreter, imports and the app built
            match = READ_LINE.search(line)
            if match:
                found["read_symbols"] = int(match.group(1))
                found["read_logged_s"] = float(match.group(2))
                found["read_line_s"] = at
            match = LISTENING_LINE.search(line)
            if match:
                found["listening_s"] = at
                ws_url = match.group(1)
        names = list(symbol_names(count))
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url, max_msg_size=0) as ws,
        ):
            asked = time.monotonic()
            await ws.send_str(orjson.dumps({"op": "subscribe", "symbols": names, "id": 1}).decode())
            while True:
                frame = orjson.loads((await ws.receive(timeout=30)).data)
                if frame.get("type") == "subscribed":
                    found["subscribed_s"] = time.monotonic() - asked
                elif frame.get("type") == "snapshot":
                    found["snapshot_s"] = time.monotonic() - asked
                    found["snapshot_symbols"] = len(frame["data"])
                    break
                elif frame.get("type") == "error":
                    raise runner.BenchmarkError(f"the gateway refused the subscription: {frame}")
        found["first_client_s"] = found["listening_s"] + found["snapshot_s"]
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        with contextlib.suppress(Exception):
            rest = await asyncio.wait_for(process.stderr.read(), 5)
            lines += [(time.monotonic() - started, text) for text in rest.decode().splitlines()]
        log_path.write_text("".join(f"{at:9.3f} {line}\n" for at, line in lines))
    found["exit_code"] = process.returncode
    return found


STARTUP_KEYS = (
    "app_ready_s", "read_logged_s", "read_line_s", "listening_s", "snapshot_s", "first_client_s",
)  # fmt: skip


def startup(args: argparse.Namespace) -> int:
    counts = [int(part) for part in args.symbols.split(",") if part.strip()]
    out = _out(args, "startup")
    server_cpus, client_cpus = runner.cores()
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # the filler and the client: off the gateway's core
    pinning = _pinning(
        server_cpus,
        client_cpus,
        "nats-server, the gateway",
        "this process (the filler and the client)",
    )
    print(f"pinning: {pinning}", flush=True)
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for count in counts:
        nats = NatsServer(out / f"startup-{count}-nats.log")
        try:
            nats.start(server_cpus)
            filled = asyncio.run(fill(nats.url, count))
            print(
                f"[{count}] stream filled: {filled['stored']:,} snapshots "
                f"({filled['publish_seconds']:.2f} s to publish)",
                flush=True,
            )
            runs = []
            for repeat in range(args.repeat):
                run = asyncio.run(
                    start_gateway(
                        nats.url, count, server_cpus, out / f"startup-{count}-{repeat + 1}.log"
                    )
                )
                runs.append(run)
                print(
                    f"[{count}-{repeat + 1}] read {run['read_symbols']:,} in "
                    f"{run['read_logged_s']:.3f} s (logged); listening {run['listening_s']:.3f} s "
                    f"after start; subscribe to all {run['snapshot_symbols']:,}: "
                    f"{1000 * run['snapshot_s']:.1f} ms",
                    flush=True,
                )
            results[str(count)] = {
                "fill": filled,
                "runs": runs,
                "median": {key: _median([run[key] for run in runs]) for key in STARTUP_KEYS},
            }
        except (runner.BenchmarkError, OSError, TimeoutError) as exc:
            failures[str(count)] = str(exc)
            print(f"[{count}] failed: {exc}", file=sys.stderr, flush=True)
        finally:
            nats.stop()
    document = {
        "benchmark": "scaleout startup",
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": report.machine(),
        "pinning": pinning,
        "target": {"symbols": 10_000, "seconds": STARTUP_TARGET_S},
        "failures": failures,
        "results": results,
    }
    report.write_json(out / "report.json", document)
    if results:
        print()
        print(startup_table(results, args.repeat))
        print(f"pinning: {pinning}")
    print(f"written: {out / 'report.json'}")
    return 1 if failures else 0


def startup_table(results: dict[str, Any], repeat: int) -> str:
    head = (
        "| symbols | read (logged) s | app built s | listening s | subscribe all ms "
        "| start to first client's snapshot s |\n| --- | --- | --- | --- | --- | --- |"
    )
    rows = []
    for count, found in results.items():
        m = found["median"]
        rows.append(
            f"| {int(count):,} | {m['read_logged_s']:.3f} | {m['app_ready_s']:.3f} | "
            f"{m['listening_s']:.3f} | {1000 * m['snapshot_s']:.1f} | {m['first_client_s']:.3f} |"
        )
    return (
        f"**gateway start-up** (median of {repeat}; from the process's start; target: at most "
        f"{STARTUP_TARGET_S:g} s for 10,000 symbols)\n\n" + head + "\n" + "\n".join(rows)
    )


# -- the command line ---------------------------------------------------------------------------


def _out(args: argparse.Namespace, name: str) -> Path:
    out: Path = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-scaleout-{name}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", type=Path, help=f"results folder (default {RESULTS}/...)")

    def driven(sub: argparse.ArgumentParser) -> None:
        common(sub)
        sub.add_argument("--duration", type=float, help="seconds measured")
        sub.add_argument("--warmup", type=float)
        sub.add_argument("--idle", type=float)
        sub.add_argument("--clients", type=int)
        sub.add_argument("--per-client", type=int)
        sub.add_argument("--client", choices=sorted(runner.CLIENTS), default="python")
        sub.add_argument("--timed", help="the load generator's --timed (auto)")

    sub = commands.add_parser("latency", help="serve vs the split, same run, same load")
    sub.add_argument("scenario", choices=["light", "fanout"])
    sub.add_argument("--gateways", type=int, choices=[1, 2], default=1)
    sub.add_argument("--repeat", type=int, default=3)
    driven(sub)
    sub = commands.add_parser("overload", help="every snapshot through NATS at 10,000 ticks/s")
    driven(sub)
    sub.set_defaults(clients=2)
    sub.add_argument("--symbols", type=int)
    sub.add_argument("--rate", type=float)
    sub.add_argument("--no-check", action="store_true", help="no subscriber in this process")
    sub = commands.add_parser("startup", help="a gateway's start over a full stream")
    common(sub)
    sub.add_argument("--symbols", default="1000,10000", help="comma-separated counts")
    sub.add_argument("--repeat", type=int, default=3)
    return parser


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if NATS_SERVER is None:
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so that every process a run started is stopped on the way.
    signal.signal(signal.SIGTERM, _terminated)
    if args.command == "latency":
        return latency(args)
    if args.command == "overload":
        return overload(args)
    return startup(args)


if __name__ == "__main__":
    sys.exit(main())
