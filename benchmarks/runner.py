"""One benchmark run: start a server, drive it with the load generator, measure, stop it all.

The server and the load generator run in their own processes, pinned to separate cores when the
machine has two or more, so that neither steals the other's CPU. In the external market mode
(`Scenario.market`), a third process, the producer (`feed simulate`), writes the ticks into a
pipe that is the server's standard input; it shares the load generator's core, and its CPU is
its own, not the server's. Everything started here is stopped here, by process group, whatever
happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks import procstats
from benchmarks.scenarios import Scenario
from benchmarks.servers import ServerSpec
from simulators import symbol_names

LISTENING = re.compile(rb"listening on (ws://[\w.:\[\]-]+/ws)")
SATURATED_CPU = 85.0
"""Client CPU (% of one core) above which its figures are marked: it may be measuring itself."""
BEHIND = 0.99
"""A market that achieved less than this share of the rate asked for is flagged."""
CLIENTS = {"python": "benchmarks.loadgen", "c": "benchmarks.cclient"}
"""The load generators (`--client`): the same command line, line protocol and subscriptions;
`c` is the compiled check on the Python one (benchmarks/cclient)."""
PIPE_BYTES = 1 << 20
"""The size asked for the producer's pipe (F_SETPIPE_SZ; 1 MiB is what Linux lets anyone ask):
room for a stall of the server without holding the producer up, like a socket's buffers."""
PRIME_TIMEOUT = 120.0
"""Seconds the producer and the server may take to write and fold the opening of the market."""


class BenchmarkError(RuntimeError):
    pass


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(server cores, load generator cores): separate cores when there are two or more."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


def _pinned(cpus: set[int] | None) -> Any:
    """A pre-exec hook: pin the child to `cpus`, and let it open as many files as it may."""

    def prepare() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return prepare


def open_files_limit() -> int:
    """The open-files limit children get (the hard limit, see `_pinned`)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return orjson.loads(response.read())


def stop_group(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM to the process's group, SIGKILL to whatever of it is left after `grace`
    seconds; the process's exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything of the group still alive
    return process.wait()


def ticks_of(stats: dict[str, Any]) -> int:
    """Ticks folded so far, from our /stats or a peer's."""
    if "market" in stats:
        return int(stats["market"]["ticks"])
    return int(stats["ticks"])


class Server:
    """A server process, its log, and how to reach it."""

    listening: re.Pattern[bytes] = LISTENING
    """The start-up line that says it is ready; its group 1 is `url`."""

    def __init__(self, spec: ServerSpec, scenario: Scenario, log_path: Path) -> None:
        self.spec = spec
        self.scenario = scenario
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, cpus: set[int] | None, timeout: float = 60.0, stdin: int | None = None) -> None:
        """Start the server (its standard input `stdin`, a descriptor, else /dev/null) and
        return once it listens and answers `GET /stats`."""
        command = self.spec.command(self.scenario)
        log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self._log = log
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            start_new_session=True,
            preexec_fn=_pinned(cpus),
        )
        deadline = time.monotonic() + timeout
        while True:
            match = self.listening.search(self.log_path.read_bytes())
            if match:
                self.url = match.group(1).decode()
                break
            if self.process.poll() is not None:
                raise BenchmarkError(
                    f"{self.spec.name} exited with {self.process.returncode} before listening:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.spec.name} did not listen within {timeout:.0f} s")
            time.sleep(0.05)
        while True:  # listening; ready once /stats answers
            try:
                _get_json(self.http("/stats"))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def http(self, path: str) -> str:
        return self.url.replace("ws://", "http://").removesuffix("/ws") + path

    def pids(self) -> list[int]:
        """The server's process and its descendants (helpers included)."""
        return procstats.tree(self.process.pid) if self.process else []

    def sample(self) -> procstats.Sample:
        assert self.process is not None
        return procstats.sample(self.process.pid, self.spec.exclude)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = _get_json(self.http("/stats"), timeout=30)
        return stats

    def ticks(self) -> int:
        return ticks_of(self.stats())

    def stop(self) -> int | None:
        """SIGTERM to the whole group, SIGKILL after 10 s; returns the exit code."""
        if self.process is None:
            return None
        code = stop_group(self.process, 10)
        self._log.close()
        return code


def producer_command(scenario: Scenario) -> list[str]:
    """The external market: `feed simulate`, paced, primed, with the scenario's market flags."""
    return [
        sys.executable, "-m", "feed", "simulate", "--prime",
        "--symbols", str(scenario.symbols),
        "--rate", repr(scenario.rate),
        "--seed", str(scenario.seed),
        "--burst-factor", repr(scenario.burst_factor),
        "--burst-every", repr(scenario.burst_every),
        "--burst-length", repr(scenario.burst_length),
    ]  # fmt: skip


class Producer:
    """The producer of the external market: `feed simulate` writing into the server's stdin.

    It reports on its stderr (this log) as JSON lines: once how many ticks it primed the market
    with, and on each SIGUSR1 the ticks it has written and the seconds since its stream began,
    which is how its own rate is measured (`count`)."""

    def __init__(self, scenario: Scenario, log_path: Path) -> None:
        self.scenario = scenario
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.primed = 0

    def start(self, stdout: int, cpus: set[int] | None) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self._log = log
        self.process = subprocess.Popen(
            producer_command(self.scenario),
            stdout=stdout,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_pinned(cpus),
        )

    def reports(self) -> list[dict[str, Any]]:
        """What the producer said on stderr, JSON lines only."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    found.append(orjson.loads(line))
        return found

    def _died(self, what: str) -> BenchmarkError:
        assert self.process is not None
        return BenchmarkError(
            f"the producer exited with {self.process.returncode} {what}:\n"
            + self.log_path.read_text(errors="replace")[-2000:]
        )

    def wait_primed(self, server: Server, timeout: float = PRIME_TIMEOUT) -> int:
        """Wait until the producer has written the opening of the market and `server` has
        folded it (every symbol has ticked); return the primed tick count."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            primed = [r for r in self.reports() if "primed" in r]
            if primed:
                self.primed = int(primed[0]["primed"])
                break
            if self.process.poll() is not None:
                raise self._died("before priming the market")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the producer did not prime the market in {timeout:.0f} s")
            time.sleep(0.02)
        while server.ticks() < self.primed:
            if self.process.poll() is not None:
                raise self._died("while the server folded the opening of the market")
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"{server.spec.name} did not fold the {self.primed:,} opening ticks "
                    f"in {timeout:.0f} s"
                )
            time.sleep(0.02)
        _check_symbols(server, self.scenario)
        return self.primed

    async def count(self, timeout: float = 5.0) -> dict[str, Any]:
        """The producer's own count: ticks written and seconds since its stream began."""
        assert self.process is not None
        before = len(self.reports())
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            # Only a report written after this signal: one already there (or a line of
            # another kind arriving late) is not this count.
            found = [r for r in self.reports()[before:] if "ticks" in r]
            if found:
                return found[-1]
            if self.process.poll() is not None:
                raise self._died("during the run")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the producer did not report its count in {timeout:g} s")
            await asyncio.sleep(0.005)

    def sample(self) -> procstats.Sample:
        assert self.process is not None
        return procstats.sample(self.process.pid)

    def stop(self) -> int | None:
        """SIGTERM to its group, SIGKILL after 5 s; returns the exit code."""
        if self.process is None:
            return None
        code = stop_group(self.process, 5)
        self._log.close()
        return code


def _check_symbols(server: Server, scenario: Scenario) -> None:
    """A server that lists its symbols (ours learns them from the ticks) must list the
    simulator's, in its order: the load generator draws each client's symbols from that list,
    and the peers know the simulator's up front."""
    try:
        listed = _get_json(server.http("/symbols"))
    except urllib.error.HTTPError:
        return  # a peer: no such route
    expected = list(symbol_names(scenario.symbols))
    if listed != expected:
        raise BenchmarkError(
            f"{server.spec.name} lists {len(listed)} symbols after the opening of the market, "
            f"not the simulator's {len(expected)} in order: its clients would subscribe to "
            "other symbols than on the other servers"
        )


def _rate(requested: float, ticks: float, seconds: float) -> dict[str, Any]:
    """A tick rate over a window against the rate asked for, flagged when behind."""
    if seconds <= 0:
        raise BenchmarkError(f"a window of {seconds} s on the producer's clock: no rate")
    achieved = ticks / seconds
    # Arrivals are Poisson: allow three standard deviations of the count on top of 1%.
    noise = 3 * (requested * seconds) ** 0.5 / seconds
    return {
        "requested": requested,
        "achieved": achieved,
        "ratio": achieved / requested,
        "behind": achieved < BEHIND * requested - noise,
    }


async def _lines(stream: asyncio.StreamReader, timeout: float) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), timeout)
    if not line:
        raise BenchmarkError("the load generator exited early (see its log)")
    message: dict[str, Any] = orjson.loads(line)
    return message


async def drive(
    server: Server | None,
    url: str,
    scenario: Scenario,
    cpus: set[int] | None,
    log_path: Path,
    label: str,
    remote: bool = False,
    producer: Producer | None = None,
    client: str = "python",
    timed: str | None = None,
) -> dict[str, Any]:
    """Run the load generator against `url` for one measured window; return every figure.

    `client` names the load generator (`CLIENTS`); `timed`, if given, is its `--timed`."""
    args = [
        sys.executable, "-m", CLIENTS[client],
        "--url", url,
        "--clients", str(scenario.clients),
        "--per-client", str(scenario.per_client),
        "--slow", str(scenario.slow),
        "--seed", str(scenario.seed),
        "--symbols", str(scenario.symbols),
    ]  # fmt: skip
    if remote:
        args.append("--remote")
    if timed is not None:
        args += ["--timed", timed]
    baseline = server.sample() if server else None
    idle_cpu = None
    if server is not None:
        # The server with no client: what its tick source and housekeeping cost by themselves.
        await asyncio.sleep(scenario.idle)
        idle = server.sample()
        assert baseline is not None
        idle_cpu = 100 * (idle.cpu_seconds - baseline.cpu_seconds) / scenario.idle
        baseline = idle
    with open(log_path, "wb") as log:
        loadgen = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            preexec_fn=_pinned(cpus),
            start_new_session=True,
            limit=2**26,  # the report is one long line
        )
        try:
            result = await _measure(server, scenario, loadgen, baseline, label, producer)
            if idle_cpu is not None:
                result["idle_cpu"] = idle_cpu
                result["fanout_cpu"] = result["server_cpu"] - idle_cpu
            return result
        finally:
            if loadgen.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(loadgen.pid, signal.SIGKILL)
                await loadgen.wait()


async def _measure(
    server: Server | None,
    scenario: Scenario,
    loadgen: asyncio.subprocess.Process,
    baseline: procstats.Sample | None,
    label: str,
    producer: Producer | None = None,
) -> dict[str, Any]:
    assert loadgen.stdout is not None and loadgen.stdin is not None
    connect_timeout = 660.0  # the load generator gives up on its own after 600 s
    while True:
        ready = await _lines(loadgen.stdout, connect_timeout)
        if ready.get("event") == "ready":
            break
        if ready.get("event") != "connecting":
            raise BenchmarkError(f"unexpected message from the load generator: {ready}")
        print(
            f"  {label}: connecting: {ready['open']:,} open, {ready['subscribed']:,} of "
            f"{ready['of']:,} subscribed",
            flush=True,
        )
    print(
        f"  {label}: {scenario.clients + scenario.slow:,} clients subscribed in "
        f"{ready['connect_seconds']:.1f} s; warming up {scenario.warmup:g} s",
        flush=True,
    )
    await asyncio.sleep(scenario.warmup)

    start_sample = server.sample() if server else None
    stats_start = server.stats() if server else None
    producer_start = await producer.count() if producer else None
    producer_cpu_start = producer_cpu_last = producer.sample() if producer else None
    scrapes: list[tuple[float, float]] = []
    scraper = None
    if scenario.scrape_metrics and server is not None and server.spec.name == "feed":
        url = server.http("/metrics")
        scraper = asyncio.create_task(_scrape_metrics(url, scenario.scrape_metrics, scrapes))
    started = last = time.monotonic()
    loadgen.stdin.write(b"start\n")
    await loadgen.stdin.drain()
    progress: list[dict[str, Any]] = []
    while time.monotonic() - started < scenario.duration:
        remaining = scenario.duration - (time.monotonic() - started)
        try:
            message = await _lines(loadgen.stdout, max(0.05, remaining))
        except TimeoutError:
            break
        if message.get("event") == "progress":
            shared = ""
            if producer is not None and producer_cpu_last is not None:
                # The producer shares the load generator's core: their sum is that core's load.
                now, sample = time.monotonic(), producer.sample()
                cpu = 100 * (sample.cpu_seconds - producer_cpu_last.cpu_seconds) / (now - last)
                message["producer_cpu"] = cpu
                producer_cpu_last, last = sample, now
                shared = f"  producer CPU {cpu:5.1f}%"
            progress.append(message)
            print(
                f"  {label}: {message['elapsed']:5.1f}/{scenario.duration:g} s "
                f"{message['snapshots_per_s']:>9,} snapshots/s  "
                f"p99 {message['p99_us'] / 1000:7.2f} ms  client CPU {message['client_cpu']:5.1f}%"
                f"{shared}  dropped {message['dropped']}",
                flush=True,
            )
    end_sample = server.sample() if server else None
    if scraper is not None:
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
    stats_end = server.stats() if server else None
    producer_end = await producer.count() if producer else None
    producer_cpu_end = producer.sample() if producer else None
    elapsed = time.monotonic() - started
    loadgen.stdin.write(b"stop\n")
    await loadgen.stdin.drain()
    while True:
        message = await _lines(loadgen.stdout, 60)
        if message.get("event") == "report":
            break
    loadgen.stdin.close()
    await asyncio.wait_for(loadgen.wait(), 30)

    result: dict[str, Any] = dict(message)
    result.pop("event")
    if "timed" in result:
        print(f"  {label}: {result['client']} client; timed {result['timed']['how']}", flush=True)
    result["market"] = scenario.market if server is not None else "remote"
    result["clock"] = ready["clock"]
    result["loadgen_pid"] = ready["pid"]
    result["open_files_limit"] = ready["open_files_limit"]
    if producer is not None:
        assert producer_start and producer_end and producer_cpu_start and producer_cpu_end
        assert producer.process is not None
        result["producer_cpu"] = (
            100 * (producer_cpu_end.cpu_seconds - producer_cpu_start.cpu_seconds) / elapsed
        )
        seconds = producer_end["seconds"] - producer_start["seconds"]
        result["producer"] = {
            "pid": producer.process.pid,
            "command": producer_command(scenario),
            "primed_ticks": producer.primed,
            # its own count of the ticks it wrote in the window, on its own clock
            "rate": _rate(
                scenario.requested_rate, producer_end["ticks"] - producer_start["ticks"], seconds
            ),
            "lag_s": producer_end["behind"],
        }
    # The load generator's core: its own CPU, and the producer's when it shares that core.
    result["client_saturated"] = result["client_cpu"] + result.get(
        "producer_cpu", 0.0
    ) > SATURATED_CPU or any(
        p["client_cpu"] + p.get("producer_cpu", 0.0) > SATURATED_CPU for p in progress
    )
    if scraper is not None:
        result["metrics_scrapes"] = _scrape_summary(scenario.scrape_metrics, scrapes)
    if server is not None and start_sample and end_sample and baseline:
        assert stats_start is not None and stats_end is not None
        result["tick_rate"] = _rate(
            scenario.requested_rate, ticks_of(stats_end) - ticks_of(stats_start), elapsed
        )
        if "market" in stats_end:  # ours: how often it folded, and what its source refused
            result["folds_per_s"] = (
                stats_end["market"]["batches"] - stats_start["market"]["batches"]
            ) / elapsed
            result["rejected"] = sum(s.get("ticks_rejected", 0) for s in stats_end["sources"])
        if "gc" in stats_end:  # ours: what the cyclic collector cost inside the window
            result["gc"] = gc_window(stats_start["gc"], stats_end["gc"], elapsed)
        result["server_cpu"] = 100 * (end_sample.cpu_seconds - start_sample.cpu_seconds) / elapsed
        connections = scenario.clients + scenario.slow
        result["rss"] = {
            "baseline": baseline.rss_bytes,
            "start": start_sample.rss_bytes,
            "end": end_sample.rss_bytes,
            "growth": end_sample.rss_bytes - start_sample.rss_bytes,
            "per_connection": (start_sample.rss_bytes - baseline.rss_bytes) / max(1, connections),
        }
    return result


async def _scrape_metrics(url: str, every: float, scrapes: list[tuple[float, float]]) -> None:
    """GET `url` (/metrics) every `every` seconds until cancelled, as Prometheus would; keep
    each scrape's round trip and the render time the server reports of the scrape before it."""
    render = re.compile(rb"^feed_metrics_render_seconds (\S+)$", re.MULTILINE)

    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
            return body

    while True:
        started = time.monotonic()
        body = await asyncio.to_thread(get)
        took = time.monotonic() - started
        match = render.search(body)
        scrapes.append((took, float(match.group(1)) if match else float("nan")))
        await asyncio.sleep(max(0.0, every - took))


def _scrape_summary(every: float, scrapes: list[tuple[float, float]]) -> dict[str, Any]:
    """The scrapes of the window: how many, their round trips and render times (ms)."""
    trips = sorted(took * 1000 for took, _ in scrapes)
    renders = sorted(r * 1000 for _, r in scrapes[1:])  # the first reports no scrape before it

    def middle(values: list[float]) -> float | None:
        return values[len(values) // 2] if values else None

    return {
        "every_s": every,
        "scrapes": len(scrapes),
        "round_trip_ms_median": middle(trips),
        "round_trip_ms_max": trips[-1] if trips else None,
        "render_ms_median": middle(renders),
        "render_ms_max": renders[-1] if renders else None,
    }


def gc_window(start: dict[str, Any], end: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The collections of each generation between two `/stats` readings, and the share of the
    window they held the process (in % of the wall clock)."""
    collections = [b - a for a, b in zip(start["collections"], end["collections"], strict=True)]
    seconds = [b - a for a, b in zip(start["seconds"], end["seconds"], strict=True)]
    return {
        "collections": collections,
        "ms": [round(1000 * s, 3) for s in seconds],
        "percent": round(100 * sum(seconds) / elapsed, 3) if elapsed > 0 else 0.0,
    }


def run_server(
    spec: ServerSpec,
    scenario: Scenario,
    results_dir: Path,
    label: str,
    client: str = "python",
    timed: str | None = None,
) -> dict[str, Any]:
    """Start `spec`, measure it under `scenario`, stop it; the figures, or the error.

    External market: the server starts with a pipe as its stdin; once it listens, the producer
    starts writing into that pipe (pinned to the load generator's core), and the load generator
    starts once the server has folded the opening of the market. The producer is stopped first
    at the end, then the server."""
    server_cpus, client_cpus = cores()
    server = Server(spec, scenario, results_dir / f"{label}-server.log")
    producer = None
    pids: list[int] = []
    read_fd = write_fd = -1
    pipe_bytes = None
    producer_exit = None
    try:
        if scenario.market == "external":
            read_fd, write_fd = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            pipe_bytes = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
        server.start(server_cpus, stdin=read_fd if read_fd >= 0 else None)
        if read_fd >= 0:
            os.close(read_fd)
            read_fd = -1
        if write_fd >= 0:
            producer = Producer(scenario, results_dir / f"{label}-producer.log")
            producer.start(write_fd, client_cpus)
            os.close(write_fd)
            write_fd = -1
            print(
                f"  {label}: the producer primed the market with "
                f"{producer.wait_primed(server):,} ticks",
                flush=True,
            )
        pids = server.pids()
        result = asyncio.run(
            drive(
                server,
                server.url,
                scenario,
                client_cpus,
                results_dir / f"{label}-loadgen.log",
                label,
                producer=producer,
                client=client,
                timed=timed,
            )
        )
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if producer is not None:
            producer_exit = producer.stop()
        exit_code = server.stop()
    result["server"] = spec.name
    result["server_exit_code"] = exit_code
    result["server_pids"] = pids
    result["pinned"] = {"server": sorted(server_cpus or []), "client": sorted(client_cpus or [])}
    if producer is not None:
        result["producer"]["exit_code"] = producer_exit
        result["producer"]["pipe_bytes"] = pipe_bytes
        result["pinned"]["producer"] = sorted(client_cpus or [])
    return result


def run_remote(
    url: str,
    scenario: Scenario,
    results_dir: Path,
    label: str,
    client: str = "python",
    timed: str | None = None,
) -> dict[str, Any]:
    """Drive a server already running elsewhere (LAN mode): no CPU or memory figures."""
    _, client_cpus = cores()
    result = asyncio.run(
        drive(
            None,
            url,
            scenario,
            client_cpus,
            results_dir / f"{label}-loadgen.log",
            label,
            remote=True,
            client=client,
            timed=timed,
        )
    )
    result["server"] = "remote"
    result["url"] = url
    return result


def scenario_dict(scenario: Scenario) -> dict[str, Any]:
    return asdict(scenario) | {"requested_rate": scenario.requested_rate}
