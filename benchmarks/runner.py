"""One benchmark run: start a server, drive it with the load generator, measure, stop it all.

The server and the load generator run in their own processes, pinned to separate cores when the
machine has two or more, so that neither steals the other's CPU. Everything started here is
stopped here, by process group, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks import procstats
from benchmarks.scenarios import Scenario
from benchmarks.servers import ServerSpec

LISTENING = re.compile(rb"listening on (ws://[\w.:\[\]-]+/ws)")
SATURATED_CPU = 85.0
"""Client CPU (% of one core) above which its figures are marked: it may be measuring itself."""
IDLE_WINDOW = 1.5
"""Seconds the server runs with no client before the load generator starts, to measure its idle
CPU (the market alone)."""
BEHIND = 0.99
"""A market that achieved less than this share of the rate asked for is flagged."""


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


def ticks_of(stats: dict[str, Any]) -> int:
    """Ticks folded so far, from our /stats or a peer's."""
    if "market" in stats:
        return int(stats["market"]["ticks"])
    return int(stats["ticks"])


class Server:
    """A server process, its log, and how to reach it."""

    def __init__(self, spec: ServerSpec, scenario: Scenario, log_path: Path) -> None:
        self.spec = spec
        self.scenario = scenario
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, cpus: set[int] | None, timeout: float = 60.0) -> None:
        command = self.spec.command(self.scenario)
        log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self._log = log
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_pinned(cpus),
        )
        deadline = time.monotonic() + timeout
        while True:
            match = LISTENING.search(self.log_path.read_bytes())
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

    def ticks(self) -> int:
        return ticks_of(_get_json(self.http("/stats"), timeout=30))

    def stop(self) -> int | None:
        """SIGTERM to the whole group, SIGKILL after 10 s; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of the group still alive
        process.wait()
        self._log.close()
        return process.returncode


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
) -> dict[str, Any]:
    """Run the load generator against `url` for one measured window; return every figure."""
    args = [
        sys.executable, "-m", "benchmarks.loadgen",
        "--url", url,
        "--clients", str(scenario.clients),
        "--per-client", str(scenario.per_client),
        "--slow", str(scenario.slow),
        "--seed", str(scenario.seed),
        "--symbols", str(scenario.symbols),
    ]  # fmt: skip
    if remote:
        args.append("--remote")
    baseline = server.sample() if server else None
    idle_cpu = None
    if server is not None:
        # The server with no client: what its tick source and housekeeping cost by themselves.
        await asyncio.sleep(IDLE_WINDOW)
        idle = server.sample()
        assert baseline is not None
        idle_cpu = 100 * (idle.cpu_seconds - baseline.cpu_seconds) / IDLE_WINDOW
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
            result = await _measure(server, scenario, loadgen, baseline, label)
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
    ticks_start = server.ticks() if server else None
    started = time.monotonic()
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
            progress.append(message)
            print(
                f"  {label}: {message['elapsed']:5.1f}/{scenario.duration:g} s "
                f"{message['snapshots_per_s']:>9,} snapshots/s  "
                f"p99 {message['p99_us'] / 1000:7.2f} ms  client CPU {message['client_cpu']:5.1f}%"
                f"  dropped {message['dropped']}",
                flush=True,
            )
    end_sample = server.sample() if server else None
    ticks_end = server.ticks() if server else None
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
    result["clock"] = ready["clock"]
    result["loadgen_pid"] = ready["pid"]
    result["open_files_limit"] = ready["open_files_limit"]
    result["client_saturated"] = result["client_cpu"] > SATURATED_CPU or any(
        p["client_cpu"] > SATURATED_CPU for p in progress
    )
    if server is not None and start_sample and end_sample and baseline:
        assert ticks_start is not None and ticks_end is not None
        achieved = (ticks_end - ticks_start) / elapsed
        requested = scenario.requested_rate
        # Arrivals are Poisson: allow three standard deviations of the count on top of 1%.
        noise = 3 * (requested * elapsed) ** 0.5 / elapsed
        result["tick_rate"] = {
            "requested": requested,
            "achieved": achieved,
            "ratio": achieved / requested,
            "behind": achieved < BEHIND * requested - noise,
        }
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


def run_server(
    spec: ServerSpec, scenario: Scenario, results_dir: Path, label: str
) -> dict[str, Any]:
    """Start `spec`, measure it under `scenario`, stop it; the figures, or the error."""
    server_cpus, client_cpus = cores()
    server = Server(spec, scenario, results_dir / f"{label}-server.log")
    pids: list[int] = []
    try:
        server.start(server_cpus)
        pids = server.pids()
        result = asyncio.run(
            drive(
                server,
                server.url,
                scenario,
                client_cpus,
                results_dir / f"{label}-loadgen.log",
                label,
            )
        )
    finally:
        exit_code = server.stop()
    result["server"] = spec.name
    result["server_exit_code"] = exit_code
    result["server_pids"] = pids
    result["pinned"] = {"server": sorted(server_cpus or []), "client": sorted(client_cpus or [])}
    return result


def run_remote(url: str, scenario: Scenario, results_dir: Path, label: str) -> dict[str, Any]:
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
        )
    )
    result["server"] = "remote"
    result["url"] = url
    return result


def scenario_dict(scenario: Scenario) -> dict[str, Any]:
    return asdict(scenario) | {"requested_rate": scenario.requested_rate}
