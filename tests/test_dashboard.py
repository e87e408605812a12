"""The dashboard page at `/`, in real headless Chromium against real `feed serve` processes:
what a person sees on it (rows, figures, the banner, greyed rows) as the feed runs, stops,
goes stale and comes back.

Skipped when Chromium or Playwright is missing, except under CI (`CI=true`), where it fails.
A screenshot of the board goes to tests/artifacts/ (not committed)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from benchmarks.browser import ARGS, CHROMIUM, unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
WAIT_MS = 15_000
"""How long a condition may take to show on the page (reconnecting included)."""


class FeedProcess:
    """`feed serve ARGS` until it listens; its log read by a thread, its stdin a pipe."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "feed", "serve", "--port", str(port), *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stderr is not None
        self.log: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr, lines))
        self._reader.start()
        while True:
            try:
                line = lines.get(timeout=20)
            except queue.Empty:
                self.close()
                message = "feed serve did not listen within 20 s: " + self.text
                raise AssertionError(message) from None
            if line is None:
                self.close()
                raise AssertionError("feed serve exited early: " + self.text)
            found = re.search(r"listening on ws://([\d.]+):(\d+)/ws", line)
            if found:
                self.port = int(found.group(2))
                self.url = f"http://{found.group(1)}:{self.port}"
                return

    def _read(self, stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            self.log.append(line)
            lines.put(line)
        lines.put(None)

    @property
    def text(self) -> str:
        return "".join(self.log)

    def write(self, *ticks: dict[str, Any]) -> None:
        """NDJSON ticks to the process's standard input (the `stdin` source)."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"".join(json.dumps(t).encode() + b"\n" for t in ticks))
        self.process.stdin.flush()

    def symbols(self) -> list[str]:
        with urllib.request.urlopen(self.url + "/symbols", timeout=5) as answer:
            names: list[str] = json.load(answer)
        return names

    def stop(self) -> int:
        """SIGTERM, as a restart would: subscribers are closed with 1001."""
        self.process.terminate()
        return self.process.wait(15)

    def close(self) -> None:
        """Killed if still running; its pipes closed once its log is read to the end."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        assert self.process.stdin is not None and self.process.stderr is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self._reader.join(10)
        self.process.stderr.close()


@contextlib.contextmanager
def serving(*args: str, port: int = 0) -> Iterator[FeedProcess]:
    feed = FeedProcess(*args, port=port)
    try:
        yield feed
    finally:
        feed.close()
    assert "Traceback" not in feed.text, feed.text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the dashboard tests need a browser under CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(ARGS))
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def simulated() -> Iterator[FeedProcess]:
    """The built-in simulator, busy enough that every row changes within a second or so."""
    with serving("--symbols", "40", "--rate", "800") as feed:
        yield feed


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (its own storage), 1280x800, dark."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    context.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    opened = context.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors


def expect(target: Locator | Page) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def rows(page: Page) -> Locator:
    return page.locator("#rows .row")


def row(page: Page, symbol: str) -> Locator:
    return page.locator(f'#rows .row[data-symbol="{symbol}"]')


def symbols_shown(page: Page) -> list[str]:
    """The symbols of the rows, top to bottom."""
    shown: list[str] = rows(page).evaluate_all("rows => rows.map(r => r.dataset.symbol)")
    return shown


def expect_order(page: Page, symbols: list[str]) -> None:
    """Until the rows are these symbols, top to bottom (fails naming what they are)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    script = """want => JSON.stringify([...document.querySelectorAll("#rows .row")]
        .map(r => r.dataset.symbol)) === JSON.stringify(want)"""
    try:
        page.wait_for_function(script, arg=symbols, timeout=WAIT_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"rows {symbols_shown(page)}, not {symbols}") from None


def wait_for_change(cell: Locator) -> None:
    """Until the cell's text differs from what it shows now."""
    before = cell.inner_text()
    expect(cell).not_to_have_text(before)


def milliseconds(text: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?) (ms|s)", text)
    assert found, f"not a latency: {text!r}"
    return float(found.group(1)) * (1000 if found.group(2) == "s" else 1)


def test_the_board_fills_with_live_rows_that_update(page: Page, simulated: FeedProcess) -> None:
    page.goto(simulated.url + "/")
    expect(page.locator("#conn-text")).to_have_text("Live")
    # The first time: the feed's first 16 symbols, in its order.
    expect_order(page, simulated.symbols()[:16])
    aapl = row(page, "AAPL")
    expect(aapl).not_to_have_class(re.compile(r"\bwaiting\b"))
    last = aapl.locator(".c-last")
    expect(last).to_have_text(re.compile(r"^\d[\d,]*\.\d{2,}$"))  # at its own precision
    wait_for_change(last)
    expect(aapl.locator(".c-bid")).to_have_text(re.compile(r"^\d[\d,]*\.\d{2,}$"))
    expect(aapl.locator(".c-age")).to_have_text(re.compile(r"^(<1s|\d+[smh])$"))
    # The header: tick-to-screen latency, a plausible figure (not a speed check).
    p50 = page.locator("#lat-p50")
    expect(p50).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(page.locator("#lat-p99")).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    both = "['lat-p50', 'lat-p99'].map(id => document.getElementById(id).textContent)"
    low, high = (milliseconds(text) for text in page.evaluate(both))  # at once: it moves
    assert 0 <= low <= high < 5000
    expect(page.locator("#rate")).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    expect(page.locator("#banner")).to_be_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png")


def test_adding_removing_and_moving_symbols_survive_a_reload(
    page: Page, simulated: FeedProcess
) -> None:
    page.goto(simulated.url + "/")
    expect(rows(page)).to_have_count(16)
    extra = simulated.symbols()[20]
    search = page.locator("#search")
    search.fill(extra.lower())  # any case: the feed's spelling is used
    search.press("Enter")
    expect(rows(page)).to_have_count(17)
    added = row(page, extra)
    expect(added.locator(".c-last")).to_have_text(re.compile(r"^\d[\d,]*\.\d+$"))
    expect(search).to_have_value("")
    page.get_by_role("button", name="Remove MSFT").click()
    expect(row(page, "MSFT")).to_have_count(0)
    page.get_by_role("button", name=f"Move {extra} up").click()
    shown = [s for s in simulated.symbols()[:15] if s != "MSFT"] + [extra, simulated.symbols()[15]]
    expect_order(page, shown)
    # Reorder by keyboard (Alt+Down on a focused row) and by dragging a row onto another.
    assert shown[0] == "AAPL"
    row(page, "AAPL").focus()
    page.keyboard.press("Alt+ArrowDown")
    expect(row(page, "AAPL")).to_be_focused()
    expect_order(page, [shown[1], "AAPL", *shown[2:]])
    # Dropped on the upper half of AAPL's row: goes just above it.
    row(page, shown[-1]).drag_to(row(page, "AAPL"), target_position={"x": 300, "y": 4})
    shown = [shown[1], shown[-1], "AAPL", *shown[2:-1]]
    expect_order(page, shown)
    search.fill("NOPE")
    search.press("Enter")
    expect(page.locator("#notice")).to_have_text("Unknown symbol NOPE")
    expect(rows(page)).to_have_count(16)

    page.reload()
    expect_order(page, shown)
    expect(row(page, extra).locator(".c-last")).to_have_text(re.compile(r"^\d[\d,]*\.\d+$"))


def test_symbols_in_the_address_override_the_saved_list(page: Page, simulated: FeedProcess) -> None:
    page.goto(simulated.url + "/")
    expect(rows(page)).to_have_count(16)
    page.get_by_role("button", name="Remove AAPL").click()  # now a saved list
    expect(rows(page)).to_have_count(15)

    page.goto(simulated.url + "/?symbols=NVDA,MSFT")
    expect_order(page, ["NVDA", "MSFT"])
    expect(row(page, "NVDA").locator(".c-last")).to_have_text(re.compile(r"^\d[\d,]*\.\d+$"))
    expect(page.locator("#share")).to_have_attribute("href", "?symbols=NVDA,MSFT")

    page.goto(simulated.url + "/")  # the saved list is still the user's
    expect(rows(page)).to_have_count(15)
    expect(row(page, "AAPL")).to_have_count(0)


def test_a_stale_symbol_is_greyed_with_the_reason(page: Page) -> None:
    def trade(symbol: str, price: float) -> dict[str, Any]:
        return {"type": "trade", "symbol": symbol, "price": price, "size": 100}

    def quote(symbol: str, bid: float, ask: float) -> dict[str, Any]:
        return {"type": "quote", "symbol": symbol, "bid": bid, "ask": ask,
                "bid_size": 300, "ask_size": 200}  # fmt: skip

    with serving("--source", "stdin", "--set", "stdin.stale_after=0.5") as feed:
        feed.write(trade("ACME", 12.5), quote("ACME", 12.49, 12.51), trade("BETA", 7.25))
        page.goto(feed.url + "/?symbols=ACME,BETA")
        acme, beta = row(page, "ACME"), row(page, "BETA")
        expect(acme.locator(".c-last")).to_have_text("12.50")
        expect(acme.locator(".c-bid")).to_have_text("12.49")
        # Nothing more comes: both turn stale, greyed, the reason on hover.
        for stale in (acme, beta):
            expect(stale).to_have_class(re.compile(r"\bstale\b"))
            expect(stale).to_have_attribute("title", "no data from stdin for 0.5 s")
        feed.write(trade("ACME", 12.75))
        expect(acme).not_to_have_class(re.compile(r"\bstale\b"))
        expect(acme).not_to_have_attribute("title", re.compile("."))
        expect(acme.locator(".c-last")).to_have_text("12.75")
        expect(acme.locator(".c-chg")).to_have_text("+0.25")
        expect(beta).to_have_class(re.compile(r"\bstale\b"))


def test_a_lost_connection_shows_the_banner_and_a_restarted_feed_brings_it_back(
    page: Page,
) -> None:
    with serving("--symbols", "20", "--rate", "400") as first:
        port = first.port
        page.goto(first.url + "/?symbols=AAPL,MSFT")
        last = row(page, "AAPL").locator(".c-last")
        expect(last).to_have_text(re.compile(r"^\d"))
        expect(page.locator("#conn-text")).to_have_text("Live")
        expect(page.locator("#banner")).to_be_hidden()
        assert first.stop() == 0

    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Connection lost")
    expect(page.locator("#board")).to_have_class(re.compile(r"\boffline\b"))
    expect(page.locator("#conn-text")).to_have_text(re.compile(r"^Reconnecting"))

    with serving("--symbols", "20", "--rate", "400", port=port):
        # No reload: the page reconnects, subscribes again and updates.
        expect(page.locator("#conn-text")).to_have_text("Live", timeout=30_000)
        expect(banner).to_be_hidden()
        expect(page.locator("#board")).not_to_have_class(re.compile(r"\boffline\b"))
        wait_for_change(last)


def test_the_render_benchmark_runs_and_reports(browser: Browser, tmp_path: Path) -> None:
    """`python -m benchmarks.dashboard --quick` end to end: sane figures, no judgement of speed."""
    out = tmp_path / "dashboard.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.dashboard", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "frames/s" in done.stdout and "main thread busy" in done.stdout
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["state"] == "live" and run["rows_shown"] > 0
    assert run["fps"] > 0 and 0 < run["main_busy"] <= 1 and 0 < run["main_cpu"] <= 1
    assert run["received_per_s"] > 0 and run["painted_per_s"] > 0
    assert 0 <= run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] < 10_000
    assert run["server_cpu"] > 0 and run["browser_cpu"]["renderer"] > 0
    assert result["server_exit_code"] == 0


def test_the_dashboard_takes_a_token_and_shows_only_what_it_may_read(page: Page) -> None:
    import hashlib

    token = "desk-t0ken"
    digest = hashlib.sha256(token.encode()).hexdigest()
    tables = f'[{{sha256="{digest}", read=["AAPL", "MSFT"]}}]'
    args = ("--symbols", "10", "--set", "auth.required=true", "--set", f"auth.tokens={tables}")
    with serving(*args) as feed:
        page.goto(feed.url + f"/?token={token}")
        expect(page.locator("#conn-text")).to_have_text("Live")
        # Its first watchlist is what /symbols lists for this token: only what it may read.
        expect_order(page, ["AAPL", "MSFT"])
        wait_for_change(row(page, "AAPL").locator(".c-last"))
