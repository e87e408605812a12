"""A bare WebSocket client over a plain socket, for tests that need control aiohttp's client
does not give: a small receive buffer, and a client that simply stops reading."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Any

import orjson


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str = "/ws", rcvbuf: int | None = None
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        return cls(reader, writer)

    async def send(self, message: dict[str, Any] | str) -> None:
        payload = message.encode() if isinstance(message, str) else orjson.dumps(message)
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        else:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON text frame; raises Closed on a close frame."""
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self.frame()
                if opcode == 0x1:
                    result: dict[str, Any] = orjson.loads(payload)
                    return result
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    raise Closed(code, payload[2:].decode(errors="replace"))

    def close(self) -> None:
        """Go with a FIN and no close frame."""
        self.writer.close()

    def reset(self) -> None:
        """Vanish with a reset (SO_LINGER 0): what a crashed client or a dropped link does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def send_close(self, code: int = 1000) -> None:
        """A close frame; the server answers with its own."""
        mask = os.urandom(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(struct.pack("!H", code)))
        self.writer.write(struct.pack("!BB", 0x88, 0x80 | 2) + mask + payload)
        await self.writer.drain()
