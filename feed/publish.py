"""`feed publish [URL] [--token T] [--batch N] [--window W]`: NDJSON ticks from standard input
to a feed's producer endpoint, every message acknowledged.

    feed simulate --rate 2000 | feed publish ws://127.0.0.1:8080/ingest --token T

Contract:
- input: one tick object per line (the interchange format `feed simulate` writes; `ts` may be
  left out, the feed stamps it on receipt); blank lines are skipped, and a line that is not JSON
  is rejected here, by line number, without being sent;
- batching never delays a tick for long: a message is sent when it holds `--batch` ticks (or
  about 1 MiB), and a partial one as soon as standard input has nothing more ready, so a paced
  producer upstream is forwarded tick by tick;
- every message is a `{"type":"ticks","id":N,"ticks":[...]}` envelope; at most `--window`
  messages are in flight unacknowledged, so a feed slower than the input slows the reading of
  standard input instead of filling memory;
- at the end (end of input, every message acknowledged) it prints to stderr what was accepted
  and rejected, with the first reasons by line number, and exits 0 when every tick was
  accepted, 1 when some were rejected, 2 on a usage or connection error (cannot connect, 401,
  the connection lost before every message was acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import select
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    import aiohttp

DEFAULT_URL: Final = "ws://127.0.0.1:8080/ingest"
DEFAULT_BATCH: Final = 1000
DEFAULT_WINDOW: Final = 8
MAX_MESSAGE_BYTES: Final = 1 << 20
"""A message is sent once its ticks pass this size, whatever --batch says (the feed's limit,
`ingest.max_message_size`, is 4 MiB by default)."""
READ_SIZE: Final = 1 << 18
SHOWN_REJECTS: Final = 10


def add_parser(commands: Any) -> None:
    """The `publish` subcommand, on the CLI's subparsers."""
    parser = commands.add_parser(
        "publish", help="send NDJSON ticks from stdin to a feed's producer endpoint (/ingest)"
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"(default {DEFAULT_URL})")
    parser.add_argument(
        "--token", help="producer token (default: the first of FEED_INGEST_TOKENS, or FEED_TOKEN)"
    )
    parser.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help=f"ticks per message ({DEFAULT_BATCH})"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"messages in flight unacknowledged ({DEFAULT_WINDOW})",
    )


def default_token() -> str | None:
    """The first token of FEED_INGEST_TOKENS, else FEED_TOKEN, else None."""
    for part in os.environ.get("FEED_INGEST_TOKENS", "").split(","):
        if part.strip():
            return part.strip()
    return os.environ.get("FEED_TOKEN", "").strip() or None


def main(args: argparse.Namespace, err: IO[str] = sys.stderr) -> int:
    """Run `feed publish` with parsed arguments; returns the exit code."""
    token = args.token or default_token()
    if not token:
        print("feed publish: no token: pass --token or set FEED_INGEST_TOKENS", file=err)
        return 2
    if args.batch < 1 or args.window < 1:
        print("feed publish: --batch and --window must be at least 1", file=err)
        return 2
    try:
        return _run(publish(args.url, token, args.batch, args.window, sys.stdin.fileno(), err))
    except KeyboardInterrupt:
        print("feed publish: interrupted", file=err)
        return 130


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


@dataclass
class Report:
    """What happened to the input, for the summary."""

    url: str
    ticks: int = 0
    """Ticks read (non-blank lines)."""
    messages: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: list[tuple[int, str]] = field(default_factory=list)
    """The first rejects heard of: line number, `line N: field: reason`."""
    error: str | None = None
    """A connection error; the exit code is then 2."""

    def reject(self, line: int, field_name: str | None, reason: str) -> None:
        self.rejected += 1
        self.note(line, field_name, reason)

    def note(self, line: int, field_name: str | None, reason: str) -> None:
        if len(self.reasons) < SHOWN_REJECTS:
            where = f"line {line}" + (f": {field_name}" if field_name else "")
            self.reasons.append((line, f"{where}: {reason}"))

    def lines(self) -> list[str]:
        out = []
        if self.error:
            out.append(f"feed publish: {self.error}")
        out.append(
            f"feed publish: {self.ticks} ticks in {self.messages} messages to {self.url}: "
            f"{self.accepted} accepted, {self.rejected} rejected"
        )
        out.extend(f"  {reason}" for _, reason in sorted(self.reasons))
        if self.rejected > len(self.reasons):
            out.append(f"  ... and {self.rejected - len(self.reasons)} more")
        return out

    @property
    def code(self) -> int:
        return 2 if self.error else 1 if self.rejected else 0


async def publish(url: str, token: str, batch: int, window: int, fd: int, err: IO[str]) -> int:
    """Connect, publish the ticks read from `fd`, print the summary to `err`; the exit code."""
    import aiohttp

    report = Report(url)
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(
                url, headers={"Authorization": f"Bearer {token}"}, autoclose=False
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                print("feed publish: 401 unauthorized: check --token", file=err)
            else:
                print(
                    f"feed publish: {url} refused the WebSocket upgrade: "
                    f"HTTP {exc.status} {exc.message}",
                    file=err,
                )
            return 2
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error)
            print(f"feed publish: cannot connect to {url}: {reason}", file=err)
            return 2
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            print(f"feed publish: cannot connect to {url}: {exc}", file=err)
            return 2
        async with ws:
            reader = StdinReader(fd, asyncio.get_running_loop())
            await Publisher(ws, reader, report, batch, window).run()
    for line in report.lines():
        print(line, file=err)
    return report.code


class StdinReader:
    """Reads a file descriptor in a daemon thread (a regular file, a pipe or a terminal alike),
    at most a few chunks ahead of the consumer; the thread never keeps the process alive."""

    AHEAD: Final = 4

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = fd
        self._loop = loop
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._room = threading.Semaphore(self.AHEAD)
        self.error: OSError | None = None
        threading.Thread(target=self._read, name="feed-publish-stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            self._room.acquire()
            try:
                data = os.read(self._fd, READ_SIZE)
            except OSError as exc:
                self.error, data = exc, b""
            try:
                self._loop.call_soon_threadsafe(self._chunks.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody is reading any more
                return
            if not data:
                return

    async def read(self) -> bytes:
        """The next chunk; b"" at the end of input."""
        data = await self._chunks.get()
        self._room.release()
        return data

    def ready(self) -> bool:
        """Whether more input can be read at once (always, for a regular file)."""
        if not self._chunks.empty():
            return True
        try:
            readable, _, _ = select.select([self._fd], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)


@dataclass(slots=True)
class _Sent:
    id: int
    lines: list[int]
    """The input line number of each tick of the message."""


class Publisher:
    """Sends batches of lines as `ticks` messages, at most `window` unacknowledged, and tallies
    the answers (the feed answers every message with an id, in order)."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        reader: StdinReader,
        report: Report,
        batch: int,
        window: int,
    ) -> None:
        self.ws = ws
        self.reader = reader
        self.report = report
        self.batch = batch
        self.window = window
        self.in_flight: collections.deque[_Sent] = collections.deque()
        self.closed = False
        """The connection is over: nothing more can be sent or acknowledged."""
        self.finished = False
        """Every message was acknowledged and we closed the connection ourselves."""
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        producer = asyncio.create_task(self._produce())
        await asyncio.wait({receiver, producer}, return_when=asyncio.FIRST_COMPLETED)
        if not producer.done():  # the connection ended first
            producer.cancel()
        try:
            await producer
        except asyncio.CancelledError:
            if not producer.cancelled():
                raise
        except ConnectionError:  # a failed send: the receiver says why
            pass
        else:
            await self._wait(lambda: not self.in_flight)
            if not self.closed:
                self.finished = True
                with contextlib.suppress(Exception):
                    await self.ws.close()
        await receiver
        report = self.report
        if not self.finished and not report.error:
            report.error = "connection lost"
        unacknowledged = sum(len(sent.lines) for sent in self.in_flight)
        if unacknowledged:
            report.error = f"{report.error}; {unacknowledged} ticks unacknowledged"
        if self.reader.error is not None and not report.error:
            report.error = f"cannot read standard input: {self.reader.error}"

    async def _wait(self, done: Any) -> None:
        while not done() and not self.closed:
            self._changed.clear()
            await self._changed.wait()

    # -- sending ------------------------------------------------------------------------------

    async def _produce(self) -> None:
        reader = self.reader
        lines: list[bytes] = []
        numbers: list[int] = []
        size = 0
        tail = b""
        number = 0
        while data := await reader.read():
            parts = (tail + data).split(b"\n") if tail else data.split(b"\n")
            tail = parts.pop()
            for part in parts:
                number += 1
                line = part.strip()
                if not line:
                    continue
                lines.append(line)
                numbers.append(number)
                size += len(line) + 1
                if len(lines) >= self.batch or size >= MAX_MESSAGE_BYTES:
                    await self._send(lines, numbers)
                    lines, numbers, size = [], [], 0
            if lines and not reader.ready():
                await self._send(lines, numbers)
                lines, numbers, size = [], [], 0
        if tail.strip():
            lines.append(tail.strip())
            numbers.append(number + 1)
        if lines:
            await self._send(lines, numbers)

    async def _send(self, lines: list[bytes], numbers: list[int]) -> None:
        if self.closed:
            raise ConnectionResetError("the feed closed the connection")
        report = self.report
        report.ticks += len(lines)
        message_id = next(self._ids)
        message = b'{"type":"ticks","id":%d,"ticks":[%b]}' % (message_id, b",".join(lines))
        if not _whole(message, len(lines)):  # some line is not JSON: find it, send the rest
            good = []
            for line, number in zip(lines, numbers, strict=True):
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    report.reject(number, None, f"line is not valid JSON: {exc.msg}")
                else:
                    good.append((line, number))
            if not good:
                return
            lines = [line for line, _ in good]
            numbers = [number for _, number in good]
            message = b'{"type":"ticks","id":%d,"ticks":[%b]}' % (message_id, b",".join(lines))
        await self._wait(lambda: len(self.in_flight) < self.window)
        if self.closed:
            raise ConnectionResetError("the feed closed the connection")
        from aiohttp import WSMsgType

        self.in_flight.append(_Sent(message_id, numbers))
        report.messages += 1
        await self.ws.send_frame(message, WSMsgType.TEXT)

    # -- answers ------------------------------------------------------------------------------

    async def _receive(self) -> None:
        from aiohttp import WSMsgType

        try:
            while True:
                message = await self.ws.receive()
                if message.type is WSMsgType.TEXT:
                    self._answer(orjson.loads(message.data))
                    self._changed.set()
                    continue
                if message.type is WSMsgType.CLOSE and not self.finished:
                    code, reason = message.data, message.extra
                    error = (
                        f"the feed closed the connection: {code}{f' {reason}' if reason else ''}"
                    )
                    if code == 1009:
                        error += " (a message was too big: lower --batch)"
                    self.report.error = error
                    with contextlib.suppress(Exception):
                        await self.ws.close()
                return  # CLOSE, CLOSING (our own close), CLOSED, ERROR
        finally:
            self.closed = True
            self._changed.set()

    def _answer(self, frame: dict[str, Any]) -> None:
        sent = self._match(frame.get("id"))
        if sent is None:
            return
        report = self.report
        if frame.get("type") == "accepted":
            report.accepted += int(frame.get("accepted", 0))
            report.rejected += int(frame.get("rejected_count", 0))
            for reject in frame.get("rejected", ()):
                index = reject.get("index")
                line = sent.lines[index] if isinstance(index, int) else 0
                report.note(line, reject.get("field"), str(reject.get("reason")))
        elif frame.get("type") == "error":  # the whole message was refused
            report.rejected += len(sent.lines)
            report.note(
                sent.lines[0], None, f"{frame.get('code')}: {frame.get('message')} (whole message)"
            )

    def _match(self, message_id: Any) -> _Sent | None:
        """The in-flight message an answer is for: by id, else the oldest (answers come in
        order)."""
        in_flight = self.in_flight
        if message_id is None:
            return in_flight.popleft() if in_flight else None
        while in_flight:
            sent = in_flight.popleft()
            if sent.id == message_id:
                return sent
        return None


def _whole(message: bytes, count: int) -> bool:
    """Whether the envelope is valid JSON with one element per line (a line holding two JSON
    values, or none, would shift the indices)."""
    try:
        decoded = orjson.loads(message)
    except orjson.JSONDecodeError:
        return False
    return isinstance(decoded, dict) and len(decoded.get("ticks", ())) == count
