"""Peer 1, the tutorial hub: aiohttp, a bounded queue and a writer task per client.

This is the pattern of most WebSocket tutorials and of the gorilla/websocket chat hub: each
tick is folded, encoded once, and its frame is `put_nowait` on the `asyncio.Queue(maxsize=256)`
of every subscriber; each client's writer task awaits `ws.send_str(frame)` one frame per tick.
Answers to requests go through the same queue, so they wait behind queued updates.

Slow client: once its queue is full, the producer drops it: it is unsubscribed at once, closed
with 4008 (given 10 s, like gorilla's write deadline, then aborted) and counted in `dropped`.

    python -m benchmarks.peers.naive_hub --port 0 --symbols 100 --rate 2000
    python -m feed simulate --symbols 100 --rate 2000 | python -m benchmarks.peers.naive_hub \
        --port 0 --symbols 100 --stdin
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Final

from aiohttp import WSMsgType, web

from benchmarks.peers import common
from benchmarks.peers.fold import Book

QUEUE_SIZE: Final = 256
CLOSE_TIMEOUT: Final = 10.0  # seconds a dropped client's close may take before we abort it
SHUTDOWN_CLOSE_TIMEOUT: Final = 2.0  # the same on shutdown, kept short so that we stop promptly
SLOW_CONSUMER: Final = 4008


class Client:
    """One connection: its socket, its queue of frames and the task writing them out."""

    __slots__ = ("queue", "request", "writer", "ws")

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.writer: asyncio.Task[None] | None = None

    async def write(self) -> None:
        """Send queued frames one by one until the connection fails or the task is cancelled."""
        ws, queue = self.ws, self.queue
        with contextlib.suppress(ConnectionError):
            while True:
                await ws.send_str(await queue.get())

    async def close(self, code: int, timeout: float) -> None:
        """Stop writing, send a close frame and wait for the answer; abort after `timeout`."""
        if self.writer is not None:
            self.writer.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=code), timeout)
        except (TimeoutError, ConnectionError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()


class Hub:
    """The market (`book`), who wants what (`registry`) and the clients being served."""

    def __init__(self, book: Book) -> None:
        self.book = book
        self.registry: common.Registry[Client] = common.Registry(len(book.symbols))
        self.clients: set[Client] = set()  # connected and not dropped
        self.connections = 0  # open WebSocket connections, dropped ones until they close
        self.dropped = 0
        self._closing: set[asyncio.Task[None]] = set()

    def send(self, client: Client, frame: str) -> None:
        """Queue `frame` for `client`, dropping the client if its queue is full."""
        try:
            client.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.drop(client)

    def drop(self, client: Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.registry.remove(client)
        self.dropped += 1
        task = asyncio.create_task(client.close(SLOW_CONSUMER, CLOSE_TIMEOUT))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def produce(self, market: common.Market) -> None:
        """Fold every tick and queue its frame to each subscriber of its symbol."""
        fold, subscribers = self.book.fold, self.registry.subscribers
        async for batch in market.batches(self.book):
            for tick in batch:
                snapshot = fold(*tick)
                clients = subscribers[tick[0]]
                if not clients:
                    continue
                frame = common.update_frame(snapshot).decode()
                slow: list[Client] = []
                for client in clients:
                    try:
                        client.queue.put_nowait(frame)
                    except asyncio.QueueFull:
                        slow.append(client)
                for client in slow:
                    self.drop(client)

    async def close_all(self) -> None:
        """Close every connection with 1001 (going away), promptly."""
        clients = list(self.clients)
        self.clients.clear()
        for task in self._closing:
            task.cancel()
        await asyncio.gather(
            *(c.close(1001, SHUTDOWN_CLOSE_TIMEOUT) for c in clients),
            *self._closing,
            return_exceptions=True,
        )


HUB: Final = web.AppKey("hub", Hub)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB]
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    client = Client(request, ws)
    client.writer = writer = asyncio.create_task(client.write())
    hub.clients.add(client)
    hub.connections += 1
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            for frame in common.answer(message.data, hub.book, hub.registry, client):
                if client not in hub.clients:
                    break
                hub.send(client, frame.decode())
    finally:
        hub.connections -= 1
        if client in hub.clients:
            hub.clients.discard(client)
            hub.registry.remove(client)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return ws


async def stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    body = common.stats(hub.book, hub.connections, hub.dropped)
    return web.Response(body=body, content_type="application/json")


async def serve(args: argparse.Namespace, market: common.Market) -> None:
    """Serve until SIGINT or SIGTERM (the end of the market's input does not stop it)."""
    hub = Hub(Book(market.symbols))
    app = web.Application()
    app[HUB] = hub
    app.router.add_get("/ws", websocket)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
        producer = asyncio.create_task(hub.produce(market))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host, port = runner.addresses[0][:2]
        common.announce(host, port)
        await common.until_stopped(producer, stop)
        await hub.close_all()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("naive_hub", "aiohttp tutorial hub peer", serve, argv)


if __name__ == "__main__":
    sys.exit(main())
