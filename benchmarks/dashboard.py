"""Dashboard: what the browser page at `/` costs a browser under a fast feed.

`feed serve` with 200 simulated symbols at 10,000 ticks/s (the `overload` scenario's rate),
pinned to the first core; headless Chromium (Debian's, on the second core with this process
and Playwright's driver) opens the page at 1280x800 in the dark theme with all 200 symbols on
its watchlist, waits until it is live and `--warmup` seconds more, then measures over
`--duration` seconds:

- frames/s: animation frames the page drew (its own count: it asks for a frame whenever
  something is to be shown, so under this feed, every display frame);
- main thread busy: Chrome's `Performance.getMetrics` TaskDuration over the wall time (the
  wall time of the page's main-thread tasks, waits inside them included), and the main
  thread's CPU time (from /proc) over the wall time;
- updates/s: snapshots the page received, and rows it wrote to the screen (each the newest
  snapshot of its symbol; rows off screen are written when they scroll into view);
- latency p50/p99: what the page reports, from each painted snapshot's `ts` to the frame that
  painted it, over its last 10 s;
- CPU of the server and of every browser process.

The issue's bar: at least 50 frames/s with the main thread busy under half the time.

    .venv/bin/python -m benchmarks.dashboard                  # 10 s, median of 3 (about 1 min)
    .venv/bin/python -m benchmarks.dashboard --symbols 20 --rate 2000 --repeat 1
    .venv/bin/python -m benchmarks.dashboard --quick          # seconds, for the tests

Writes `benchmarks/results/dashboard-<time>.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from benchmarks import procstats, report
from benchmarks.browser import ARGS, CHROMIUM, unavailable
from benchmarks.runner import cores

if TYPE_CHECKING:
    from playwright.sync_api import Browser, CDPSession, Page

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BAR_FPS = 50.0
BAR_BUSY = 0.5
_TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """`feed serve --port 0` with the simulator, pinned to `cpus`; its log kept."""

    def __init__(self, symbols: int, rate: float, cpus: set[int] | None) -> None:
        def pin() -> None:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        command = [sys.executable, "-m", "feed", "serve", "--port", "0"]
        command += ["--symbols", str(symbols), "--rate", str(rate)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, preexec_fn=pin,
        )  # fmt: skip
        assert self.process.stderr is not None
        self.log: list[str] = []
        deadline = time.monotonic() + 30
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"listening on ws://(\S+)/ws", line)
            if found:
                self.http = f"http://{found.group(1)}"
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("feed serve exited early:\n" + "".join(self.log))
        if not hasattr(self, "http"):
            self.stop()
            raise RuntimeError("feed serve did not listen within 30 s:\n" + "".join(self.log))
        self._drain = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._drain.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.log.append(line)

    def symbols(self) -> list[str]:
        with urllib.request.urlopen(self.http + "/symbols", timeout=10) as answer:
            names: list[str] = json.load(answer)
        return names

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _thread_cpu(pid: int) -> float:
    """CPU seconds of the main thread of `pid` (the thread whose id is the process's)."""
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _sample(page: Page, cdp: CDPSession, browser_cdp: CDPSession, server: int) -> dict[str, Any]:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    processes: dict[str, float] = {}
    renderers: dict[int, float] = {}
    for info in browser_cdp.send("SystemInfo.getProcessInfo")["processInfo"]:
        kind = str(info["type"]).removesuffix(".mojom.NetworkService")
        processes[kind] = processes.get(kind, 0.0) + float(info["cpuTime"])
        if info["type"] == "renderer":
            renderers[int(info["id"])] = _thread_cpu(int(info["id"]))
    return {
        "wall": time.perf_counter(),
        "metrics": metrics,
        "page": page.evaluate("feedDashboard.counters()"),
        "processes": processes,
        "renderer_main": renderers,
        "server_cpu": procstats.sample(server).cpu_seconds,
    }


def measure(browser: Browser, url: str, args: argparse.Namespace, server: int) -> dict[str, Any]:
    """One run: a fresh page, live, warmed up, measured over `args.duration` seconds."""
    width, height = (int(x) for x in args.viewport.split("x"))
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme="dark")
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_function(
            "window.feedDashboard?.state === 'live' && feedDashboard.counters().painted > 0",
            timeout=30_000,
        )
        page.wait_for_timeout(args.warmup * 1000)
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        browser_cdp = browser.new_browser_cdp_session()
        first = _sample(page, cdp, browser_cdp, server)
        page.wait_for_timeout(args.duration * 1000)
        last = _sample(page, cdp, browser_cdp, server)
        latency = page.evaluate("feedDashboard.latency()")
        frame = page.evaluate("feedDashboard.frame()")
        state = page.evaluate("feedDashboard.state")
        shown = page.locator("#rows .row:not(.waiting)").count()
    finally:
        context.close()
    wall = float(last["wall"] - first["wall"])
    timestamp = float(last["metrics"]["Timestamp"] - first["metrics"]["Timestamp"])

    def share(key: str) -> float:
        return float(last["metrics"][key] - first["metrics"][key]) / timestamp

    def rate(key: str) -> float:
        return float(last["page"][key] - first["page"][key]) / wall

    # The page's renderer: the one whose main thread worked the most in the window.
    main_cpu = max(
        (cpu - first["renderer_main"].get(pid, cpu) for pid, cpu in last["renderer_main"].items()),
        default=0.0,
    )
    return {
        "seconds": wall,
        "fps": rate("frames"),
        "main_busy": share("TaskDuration"),
        "main_script": share("ScriptDuration"),
        "main_layout": share("LayoutDuration"),
        "main_style": share("RecalcStyleDuration"),
        "main_cpu": main_cpu / wall,
        "received_per_s": rate("received"),
        "painted_per_s": rate("painted"),
        "latency_ms": latency,
        "frame": frame,
        "state": state,
        "rows_shown": shown,
        "server_cpu": (last["server_cpu"] - first["server_cpu"]) / wall,
        "browser_cpu": {
            kind: (cpu - first["processes"].get(kind, 0.0)) / wall
            for kind, cpu in last["processes"].items()
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    # Separate cores when this process may use two (`taskset -c 0,1` widens a narrower mask).
    server_cpus, browser_cpus = cores() if args.pin else (None, None)
    server = Server(args.symbols, args.rate, server_cpus)
    runs = []
    try:
        if browser_cpus is not None:
            os.sched_setaffinity(0, browser_cpus)  # Playwright's driver and Chromium inherit it
        symbols = server.symbols()[: args.symbols]
        url = f"{server.http}/?symbols=" + ",".join(symbols)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(ARGS))
            version = browser.version
            for number in range(args.repeat):
                runs.append(measure(browser, url, args, server.process.pid))
                print(f"  run {number + 1}: {_line(runs[-1])}", flush=True)
            browser.close()
    finally:
        exit_code = server.stop()
    keys = ("fps", "main_busy", "main_cpu", "received_per_s", "painted_per_s", "server_cpu")
    medians: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in keys}
    for q in ("p50", "p99"):
        values = [r["latency_ms"][q] for r in runs if r["latency_ms"][q] is not None]
        medians[f"latency_{q}_ms"] = statistics.median(values) if values else None
    medians["browser_cpu"] = statistics.median(sum(r["browser_cpu"].values()) for r in runs)
    return {
        "benchmark": "dashboard",
        "machine": report.machine(),
        "browser": {"path": str(CHROMIUM), "version": version, "args": list(ARGS)},
        "pinned": {"server": sorted(server_cpus or []), "browser": sorted(browser_cpus or [])},
        "params": {
            key: getattr(args, key)
            for key in ("symbols", "rate", "duration", "warmup", "repeat", "viewport")
        },
        "bar": {"fps": BAR_FPS, "main_busy": BAR_BUSY},
        "median": medians,
        "met": medians["fps"] >= BAR_FPS and medians["main_busy"] < BAR_BUSY,
        "runs": runs,
        "server_exit_code": exit_code,
    }


def _line(r: dict[str, Any]) -> str:
    latency = r["latency_ms"]
    p50 = "-" if latency["p50"] is None else f"{latency['p50']:.1f}"
    p99 = "-" if latency["p99"] is None else f"{latency['p99']:.1f}"
    return (
        f"{r['fps']:.1f} fps, main thread busy {r['main_busy']:.0%} (CPU {r['main_cpu']:.0%}), "
        f"{r['received_per_s']:,.0f} updates/s received, {r['painted_per_s']:,.0f} rows/s "
        f"painted, latency p50 {p50} ms p99 {p99} ms"
    )


def table(result: dict[str, Any]) -> str:
    m = result["median"]
    p = result["params"]
    pinned = result["pinned"]
    where = (
        f"feed serve on core {pinned['server']}, Chromium {result['browser']['version']} "
        f"on core {pinned['browser']}"
        if pinned["server"]
        else f"not pinned, Chromium {result['browser']['version']}"
    )

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def bar(ok: bool) -> str:
        return "ok" if ok else "MISS"

    rows = [
        ("frames/s", f"{m['fps']:.1f}", f">= {BAR_FPS:.0f}  {bar(m['fps'] >= BAR_FPS)}"),
        (
            "main thread busy (tasks)",
            f"{m['main_busy']:.0%}",
            f"< {BAR_BUSY:.0%}  {bar(m['main_busy'] < BAR_BUSY)}",
        ),
        ("main thread CPU", f"{m['main_cpu']:.0%}", ""),
        ("updates received/s", f"{m['received_per_s']:,.0f}", ""),
        ("rows painted/s", f"{m['painted_per_s']:,.0f}", ""),
        ("latency p50 ms", ms(m["latency_p50_ms"]), ""),
        ("latency p99 ms", ms(m["latency_p99_ms"]), ""),
        ("server CPU", f"{m['server_cpu']:.0%}", ""),
        ("browser CPU, all processes", f"{m['browser_cpu']:.0%}", ""),
    ]
    lines = [
        f"dashboard: {p['symbols']} symbols at {p['rate']:,.0f} ticks/s, {p['viewport']}; "
        f"{where}; {p['duration']:g} s, median of {p['repeat']}",
        f"{'figure':<28}{'value':>10}  bar",
    ]
    lines += [f"{name:<28}{value:>10}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--symbols", type=int, default=200, help="on the server and the page")
    parser.add_argument("--rate", type=float, default=10_000, help="ticks per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds live before that")
    parser.add_argument("--repeat", type=int, default=3, help="runs (a fresh page each)")
    parser.add_argument("--viewport", default="1280x800", help="WIDTHxHEIGHT")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave cores free")
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--out", type=Path, help="the JSON file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\d+x\d+", args.viewport):
        parser.error(f"--viewport must be WIDTHxHEIGHT, e.g. 1280x800, not {args.viewport!r}")
    if args.quick:
        args.symbols, args.rate, args.duration, args.warmup, args.repeat = 20, 1000, 1.0, 0.5, 1
    reason = unavailable()
    if reason:
        print(f"cannot run the dashboard benchmark: {reason}", file=sys.stderr)
        return 1
    result = run(args)
    print(table(result))
    out = args.out or RESULTS / f"dashboard-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
