"""The bus: NATS between `feed ingest` nodes and `feed gateway` nodes (docs/scaling.md).

What travels, under `bus.prefix` (here `feed`):
- `feed.snap.<SYMBOL>`: each changed snapshot, encoded once by the ingest node that owns the
  symbol, exactly the bytes a client receives inside an update; header `Feed-Node` names the node.
  A JetStream stream keeping one message per subject holds the newest of every symbol, so a
  gateway that starts or reconnects reads them all, and an ingest node that restarts carries on.
- `feed.new.<SYMBOL>`: a symbol's first snapshot, once more (gateways with `bus.subscribe =
  "held"` follow only the symbols their clients hold, and learn of new ones here).
- `feed.hb.<NODE>`: each ingest node's heartbeat, every `bus.heartbeat_interval` and at once when
  its stale symbols change: its epoch, how many symbols it owns and which of them are stale.

Symbol names become one subject token each (`encode_symbol`): letters, digits, `-` and `_` stay,
every other byte is `%XX`, so dots, spaces and wildcards never split or widen a subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import socket
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from feed.config import BusConfig

log = logging.getLogger(__name__)

NODE_HEADER = "Feed-Node"

_SAFE = frozenset(string.ascii_letters + string.digits + "-_")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")


def encode_symbol(name: str) -> str:
    """`name` as one NATS subject token: reversible, and never a wildcard or a separator."""
    if name and all(char in _SAFE for char in name):
        return name
    if not name:
        return "%"  # the empty name (never a valid symbol, but never an invalid subject)
    out = []
    for char in name:
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode())
    return "".join(out)


def decode_symbol(token: str) -> str:
    """The symbol name `encode_symbol` made `token` from."""
    if "%" not in token:
        return token
    if token == "%":
        return ""
    raw = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(token):
        raw += token[pos : match.start()].encode()
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += token[pos:].encode()
    return raw.decode()


@dataclass(frozen=True)
class Subjects:
    prefix: str

    def snap(self, name: str) -> str:
        return f"{self.prefix}.snap.{encode_symbol(name)}"

    @property
    def snaps(self) -> str:
        return f"{self.prefix}.snap.>"

    def new(self, name: str) -> str:
        """Where a symbol's first snapshot is announced too (gateways following what is held
        learn of new symbols there)."""
        return f"{self.prefix}.new.{encode_symbol(name)}"

    @property
    def news(self) -> str:
        return f"{self.prefix}.new.>"

    def heartbeat(self, node: str) -> str:
        return f"{self.prefix}.hb.{encode_symbol(node)}"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.hb.*"

    def symbol_of(self, subject: str) -> str:
        """The symbol a snapshot (or announcement) subject is about."""
        return decode_symbol(subject[subject.index(".", len(self.prefix) + 1) + 1 :])


def stream_name(config: BusConfig) -> str:
    if config.stream:
        return config.stream
    return re.sub(r"[^A-Za-z0-9_-]", "_", config.prefix).upper()


def node_name(config: BusConfig) -> str:
    return config.node or socket.gethostname()


_SEQ = re.compile(rb'^\{"symbol":"(?:[^"\\]|\\.)*","seq":(\d+),')
_EPOCH = re.compile(rb',"epoch":(\d+)\}$')


def version(payload: bytes) -> tuple[int, int] | None:
    """The (epoch, seq) of an encoded snapshot (our encoder's field order), None if it is not
    one: read without decoding the rest."""
    seq = _SEQ.match(payload)
    epoch = _EPOCH.search(payload, max(0, len(payload) - 40))
    if seq is None or epoch is None:
        return None
    return int(epoch.group(1)), int(seq.group(1))


Callback = Callable[[], Awaitable[None]]


async def connect(
    config: BusConfig,
    name: str,
    *,
    disconnected: Callback | None = None,
    reconnected: Callback | None = None,
    error: Callable[[Exception], Awaitable[None]] | None = None,
    closed: Callback | None = None,
) -> NATS:
    """Connect to the first reachable server of `bus.url`, trying again every
    `bus.reconnect_wait` until one answers; nats-py then reconnects by itself, forever, each
    try after an exponential backoff with full jitter (`reconnect_wait` doubling up to
    `reconnect_max`), to the server of the list tried least."""
    options: dict[str, Any] = {
        "servers": list(config.url),
        "name": name,
        "connect_timeout": config.connect_timeout,
        "reconnect_time_wait": config.reconnect_wait,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
        "reconnect_to_server_handler": _backoff(config),
    }
    if config.user:
        options["user"], options["password"] = config.user, config.password
    if config.token:
        options["token"] = config.token
    if config.creds:
        options["user_credentials"] = config.creds

    said: dict[str, float] = {}

    async def report(exc: Exception) -> None:
        """Say each kind of error at most every 10 s (a server refusing our credentials is
        retried forever, and must not flood the log)."""
        if error is not None:
            await error(exc)
        if isinstance(exc, nats.errors.SlowConsumerError):
            return  # counted and handled by the gateway
        key = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - said.get(key, -math.inf) >= 10.0:
            said[key] = now
            log.warning("NATS at %s: %s (retrying)", ", ".join(config.url), key)

    for key, callback in (
        ("disconnected_cb", disconnected),
        ("reconnected_cb", reconnected),
        ("closed_cb", closed),
    ):
        if callback is not None:
            options[key] = callback
    options["error_cb"] = report
    attempt = 0
    while True:
        try:
            return await nats.connect(**options)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            attempt += 1
            if attempt == 1 or attempt % 20 == 0:
                log.warning(
                    "NATS at %s not reachable (%s: %s); retrying every %.1f s",
                    ", ".join(config.url),
                    type(exc).__name__,
                    exc,
                    config.reconnect_wait,
                )
            await asyncio.sleep(config.reconnect_wait)


def _backoff(config: BusConfig) -> Callable[[list[Any], dict[str, Any]], tuple[Any, float]]:
    def choose(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        server = min(servers, key=lambda candidate: candidate.reconnects)
        ceiling = min(config.reconnect_max, config.reconnect_wait * 2 ** min(server.reconnects, 20))
        return server, random.uniform(0, ceiling)

    return choose


async def ensure_stream(js: JetStreamContext, config: BusConfig) -> None:
    """The stream keeping the newest snapshot of every symbol, created if missing."""
    name = stream_name(config)
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    storage = js_api.StorageType.FILE if config.storage == "file" else js_api.StorageType.MEMORY
    with contextlib.suppress(nats.js.errors.BadRequestError):  # another node created it first
        await js.add_stream(
            name=name,
            subjects=[Subjects(config.prefix).snaps],
            max_msgs_per_subject=1,
            storage=storage,
            num_replicas=config.replicas,
            discard=js_api.DiscardPolicy.OLD,
            allow_direct=True,
        )
        log.info("created JetStream stream %s (newest snapshot per symbol)", name)


async def read_newest(
    js: JetStreamContext,
    config: BusConfig,
    on_message: Callable[[Msg], None],
) -> int:
    """Deliver the newest stored snapshot of every symbol to `on_message` (an ordered consumer,
    last per subject); returns how many. Raises TimeoutError past `bus.read_timeout`."""
    done = asyncio.get_running_loop().create_future()
    count = 0

    async def deliver(msg: Msg) -> None:
        nonlocal count
        count += 1
        on_message(msg)
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    sub = await js.subscribe(
        Subjects(config.prefix).snaps,
        stream=stream_name(config),
        cb=deliver,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return count  # nothing stored (a new or a purged stream)
        await asyncio.wait_for(done, config.read_timeout)
        return count
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def heartbeat_message(
    node: str, epoch: int, symbols: int, stale: dict[str, list[str]], interval: float
) -> bytes:
    return orjson.dumps(
        {
            "node": node,
            "epoch": epoch,
            "symbols": symbols,
            "stale": stale,
            "interval": interval,
            "ts": time.time_ns(),
        }
    )


def group_by_reason(stale: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, reason in stale.items():
        grouped.setdefault(reason, []).append(name)
    return grouped


def names_of(grouped: dict[str, Iterable[str]]) -> dict[str, str]:
    return {name: reason for reason, names in grouped.items() for name in names}
