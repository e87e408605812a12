"""`feed watch`, run as a real process in a pseudo-terminal against a real `feed serve` fed
through its standard input, read from what it draws."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import termios
from collections.abc import AsyncIterator

import pytest

from tests.test_cli import FEED, ROOT
from tests.test_stdin import Served, serve

ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()=>][0-9A-Za-z]?")
ACME_TRADE = b'{"type":"trade","symbol":"ACME","price":12.5,"size":100}\n'
ACME_QUOTE = (
    b'{"type":"quote","symbol":"ACME","bid":12.49,"ask":12.51,"bid_size":300,"ask_size":200}\n'
)
BOLT_TRADE = b'{"type":"trade","symbol":"BOLT","price":40,"size":7}\n'


def environment() -> dict[str, str]:
    """Ours, with the size and kind of terminal left to the terminal itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    return env


class Terminal:
    """A process whose standard streams are a pseudo-terminal; what it wrote, as text."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self.master = master
        self.raw = bytearray()
        self.ended = False
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the other side is closed
            data = b""
        if data:
            self.raw += data
        else:
            self.ended = True
            asyncio.get_running_loop().remove_reader(self.master)
        self._changed.set()

    @property
    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.raw)).replace(b"\r", b"").decode(errors="replace")

    def mark(self) -> int:
        """Where the text ends now: `wait(..., since=mark)` looks at what is drawn after."""
        return len(self.text)

    async def wait(self, pattern: str, since: int = 0, timeout: float = 15.0) -> str:
        """The first match of `pattern` in the text drawn after `since`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    match = re.search(pattern, self.text[since:])
                    if match:
                        return match.group(0)
                    if self.ended:
                        break
                    await self._changed.wait()
        raise AssertionError(f"no {pattern!r} in what was drawn:\n{self.text[since:]}")

    async def exit_code(self, timeout: float = 15.0) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            while not self.ended:  # the rest of the output
                self._changed.clear()
                await self._changed.wait()
        return code


@contextlib.asynccontextmanager
async def in_terminal(*args: str, rows: int = 30, columns: int = 200) -> AsyncIterator[Terminal]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    try:
        process = await asyncio.create_subprocess_exec(
            *FEED, *args, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env=environment()
        )
    finally:
        os.close(slave)
    terminal = Terminal(process, master)
    try:
        yield terminal
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if not terminal.ended:
            asyncio.get_running_loop().remove_reader(master)
        os.close(master)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A feed of ACME (traded and quoted) and BOLT (traded), from its standard input."""
    async with serve("--source", "stdin") as feed:
        await feed.write(ACME_TRADE + ACME_QUOTE + BOLT_TRADE)
        await feed.wait_log("connecting -> live")
        yield feed


def row(*cells: str) -> str:
    """A table row holding these cells in this order, as the text shows it."""
    return r"\s*│\s*".join(re.escape(cell) for cell in cells)


async def test_watch_draws_a_live_table_with_the_state_in_a_terminal(served: Served) -> None:
    async with in_terminal("watch", "ACME", "BOLT", "--url", served.ws, "--refresh", "0.1") as t:
        await t.wait(rf"feed watch {re.escape(served.ws)}\s+● connected")
        for name in ("symbol", "last", "change", "bid", "ask", "spread", "volume", "VWAP"):
            await t.wait(rf"┃\s*{name}\s*┃")  # the header row
        for name in ("latency", "conflated", "age", "status"):
            await t.wait(rf"┃\s*{name}\s*┃")  # the header row
        await t.wait(row("ACME", "12.50", "+0.00", "12.49", "12.51", "0.02", "100", "12.50"))
        await t.wait(row("BOLT", "40.00", "+0.00", "-", "-", "-", "7", "40.00"))
        await t.wait(r"ACME.*│\s*live\s*│")

        mark = t.mark()
        await served.write(b'{"type":"trade","symbol":"ACME","price":13,"size":100}\n')
        await t.wait(row("ACME", "13.00", "+0.50", "12.49", "12.51", "0.02", "200", "12.75"), mark)
        await t.wait(r"ACME.*│\s*-?\d+\.\d\d ms\s*│\s*0\s*│\s*\d+\.\d s\s*│\s*live", mark)

        mark = t.mark()
        await served.end_input()  # the source ends: its symbols turn stale
        await t.wait(r"ACME.*│\s*stale: end of input", mark)
        await t.wait(r"BOLT.*│\s*stale: end of input", mark)
        await t.wait(r"● connected.*2 stale", mark)

        mark = t.mark()
        assert await served.stop() == 0
        await t.wait(r"● disconnected: closed by the feed: 1001 \(going away\)", mark)

        t.process.send_signal(signal.SIGINT)
        assert await t.exit_code() == 0
        assert "Traceback" not in t.text and "KeyboardInterrupt" not in t.text


async def test_a_symbol_a_restarted_feed_lacks_shows_as_refused(served: Served) -> None:
    port = served.ws.rsplit(":", 1)[1].split("/")[0]
    async with in_terminal("watch", "ACME", "BOLT", "--url", served.ws, "--refresh", "0.1") as t:
        await t.wait(row("BOLT", "40.00", "+0.00", "-", "-", "-", "7", "40.00"))
        assert await served.stop() == 0
        mark = t.mark()
        async with serve("--port", port, "--source", "stdin") as second:
            await second.write(ACME_TRADE)  # ACME only: BOLT has not ticked on this one
            await second.wait_log("connecting -> live")
            reason = "refused: unknown_symbol: unknown symbol(s): BOLT"
            await t.wait(rf"BOLT.*│\s*{re.escape(reason)}", mark, timeout=30)
            await t.wait(r"● connected.*1 refused", mark)
            await t.wait(r"ACME.*│\s*live\s*│", mark)
        t.process.send_signal(signal.SIGINT)
        assert await t.exit_code() == 0


async def test_count_prints_the_table_once_and_exits(served: Served) -> None:
    result = await asyncio.create_subprocess_exec(
        *FEED, "watch", "ACME", "--url", served.ws, "--count", "1",
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(result.communicate(), 30)
    assert result.returncode == 0, err
    text = out.decode()
    assert re.search(row("ACME", "12.50", "+0.00", "12.49", "12.51", "0.02", "100"), text), text
    assert "● connected" in text and "\x1b[" not in text  # not a terminal: plain text


async def test_an_unknown_symbol_exits_2_naming_it(served: Served) -> None:
    async with in_terminal("watch", "ACME", "NOPE", "--url", served.ws) as t:
        assert await t.exit_code() == 2
    assert "feed watch: unknown symbol(s): NOPE" in t.text
    assert "Traceback" not in t.text


async def test_a_feed_that_is_not_there_exits_2() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{probe.getsockname()[1]}/ws"
    result = await asyncio.create_subprocess_exec(
        *FEED, "watch", "ACME", "--url", url, cwd=ROOT, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(result.communicate(), 30)
    assert result.returncode == 2
    assert f"feed watch: cannot connect to {url}: " in err.decode()
    assert "Traceback" not in err.decode()
