"""Peer 2, the `websockets` library with `broadcast()`: encode once, push to all, no backpressure.

Each tick is folded, encoded once, and `websockets.broadcast(subscribers, frame)` writes that
frame synchronously to every subscriber's transport: one frame per tick, no queue, no await.
This is the fan-out the `websockets` documentation recommends (docs/topics/broadcast.rst).
Answers to requests are sent by the connection's handler with `await ws.send()`.

Slow client: none of this waits for it and nothing is dropped or conflated. `broadcast()`
has no backpressure (its docstring says so): frames pile up in the connection's write buffer
without bound, and the connection stays open. The library's keepalive does not end it: its ping
waits for that same buffer to drain (websockets 17.4), so it is never sent.

    python -m benchmarks.peers.broadcast --port 0 --symbols 100 --rate 2000
    python -m feed simulate --symbols 100 --rate 2000 | python -m benchmarks.peers.broadcast \
        --port 0 --symbols 100 --stdin
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from benchmarks.peers import common
from benchmarks.peers.fold import Book

CLOSE_TIMEOUT = 2.0  # seconds a client has to answer our close frame (library default: 10)


class Peer:
    """The market (`book`), who wants what (`registry`) and the connection count."""

    def __init__(self, book: Book) -> None:
        self.book = book
        self.registry: common.Registry[ServerConnection] = common.Registry(len(book.symbols))
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        """Answer this connection's requests until it closes."""
        self.connections += 1
        try:
            async for message in ws:
                if not isinstance(message, str):
                    continue
                for frame in common.answer(message, self.book, self.registry, ws):
                    await ws.send(frame, text=True)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self.registry.remove(ws)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Let `/ws` upgrade, serve `GET /stats` over plain HTTP, answer 404 to anything else."""
        if request.path == "/ws":
            return None
        if request.path != "/stats":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        body = common.stats(self.book, self.connections, 0).decode()
        response = connection.respond(HTTPStatus.OK, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def produce(self, market: common.Market) -> None:
        """Fold every tick and broadcast its frame to the subscribers of its symbol."""
        fold, subscribers = self.book.fold, self.registry.subscribers
        async for batch in market.batches(self.book):
            for tick in batch:
                snapshot = fold(*tick)
                connections = subscribers[tick[0]]
                if connections:
                    websockets.broadcast(connections, common.update_frame(snapshot), text=True)


async def _run(args: argparse.Namespace, market: common.Market) -> None:
    """Serve until SIGINT or SIGTERM (the end of the market's input does not stop it); closing
    the server closes every client with 1001."""
    peer = Peer(Book(market.symbols))
    async with serve(
        peer.handler,
        args.host,
        args.port,
        compression=None,
        process_request=peer.process_request,
        close_timeout=CLOSE_TIMEOUT,
        backlog=1024,
    ) as server:
        try:
            producer = asyncio.create_task(peer.produce(market))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            host, port = next(iter(server.sockets)).getsockname()[:2]
            common.announce(host, port)
            await common.until_stopped(producer, stop)
        finally:
            await _close(server)


async def _close(server: Server) -> None:
    """Close every connection with 1001, aborting those still open after CLOSE_TIMEOUT.

    The library's own close waits for a connection's write buffer to drain before its close
    timeout starts, so a client that stopped reading would hold shutdown until the keepalive's
    next ping (up to 20 s) notices the connection is closing and aborts it."""
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)
    except TimeoutError:
        for connection in list(server.all_connections):
            connection.transport.abort()


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("broadcast", "websockets broadcast() peer", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
