"""The `ingest` kind: producers push ticks over WebSocket to `GET /ingest`.

Any number of producers may connect, each with a token from `ingest.tokens` or the environment
variable `FEED_INGEST_TOKENS` (comma-separated); the kind runs whenever one is set, without
being listed in `source.kinds`. docs/protocol.md ("Producers: `/ingest`") is the contract a
producer sees; this module implements it:

- Authentication happens before the upgrade: no token or a wrong one is answered with HTTP 401
  and a JSON body, and nothing of that request reaches the market. A token is compared in
  constant time against every configured token and never logged.
- Each text message is parsed by `feed.tickparse.parse_message` (a tick object, an array or a
  `ticks` envelope, a columnar `batch`); its good ticks are folded and fanned out at once, its
  bad ones counted and named to the producer, never applied. A message with an `id`, or with
  any reject, is answered with `accepted`; a message that cannot be read with `error`, and the
  connection lives on.
- New symbols join the market as a producer first ticks them (`Ingest.symbol`), up to
  `limits.max_symbols`; past it, or for a symbol another source owns, the tick is rejected on
  field `symbol` with the reason.
- Stale: the symbols a producer connection sent go stale when it disconnects or stays silent
  (no message) for `ingest.stale_after` seconds, unless another connected producer that is not
  silent sends them too; they turn live with their next tick.

Backpressure, not buffering: the receive loop handles one message completely (parse, fold,
fan-out, answer) before it reads the next, so a producer faster than the feed is slowed by its
own socket. What is buffered for one producer is bounded in three places: aiohttp's frame queue
(`WebSocketDataQueue`, high-water mark 2 x `DEFAULT_CHUNK_SIZE` = 512 KiB of parsed messages;
above it the transport stops reading and the parser parks the unparsed rest, at most one
partial message of `ingest.max_message_size`), the message being handled, and the kernel's
receive buffer; beyond those the producer's own writes block. A producer that awaits its
acknowledgements (as `feed publish` does) bounds it further to its window of messages in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import WSMsgType, web

from feed import protocol, tickparse
from feed.auth import token_of
from feed.config import Config, ConfigError, at_least_one, key, positive
from feed.gcwatch import release_websocket
from feed.protocol import CloseCode, ErrorCode
from feed.ratelimit import TokenBucket
from feed.sources.base import BaseSource, Ingest, SourceState, SymbolRejected
from feed.sources.registry import SourceKind, register

log = logging.getLogger(__name__)

ENV_TOKENS: Final = "FEED_INGEST_TOKENS"
"""Environment variable with producer tokens, comma-separated (added to `ingest.tokens`)."""
PATH: Final = "/ingest"
MAX_LISTED_REJECTS: Final = 100
"""Rejects listed in one `accepted` answer; `rejected_count` gives them all."""
DISCONNECTED: Final = "producer disconnected"


def _tokens(value: Any) -> str | None:
    for token in value:
        if not token or token != "".join(token.split()) or "," in token:
            return "must be a list of non-empty tokens without spaces or commas"
    return None


@dataclass(frozen=True)
class IngestConfig:
    tokens: tuple[str, ...] = key((), _tokens)
    stale_after: float = key(5.0, positive)
    max_message_size: int = key(4 * 1024 * 1024, at_least_one)
    message_rate: float = key(5000.0, positive)
    message_burst: int = key(10000, at_least_one)


def env_tokens() -> tuple[str, ...]:
    """The tokens in `FEED_INGEST_TOKENS` (comma-separated, blanks ignored)."""
    raw = os.environ.get(ENV_TOKENS, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def all_tokens(settings: IngestConfig) -> tuple[str, ...]:
    """The tokens of the config section and of the environment, duplicates removed."""
    return tuple(dict.fromkeys(settings.tokens + env_tokens()))


class _Producer:
    """One producer connection: the symbols it sent, when it was last heard, its rate."""

    __slots__ = ("bucket", "last_heard", "may_publish", "name", "silent", "syms", "ws")

    def __init__(
        self, name: str, ws: web.WebSocketResponse, bucket: TokenBucket, now: float
    ) -> None:
        self.name = name
        self.ws = ws
        self.bucket = bucket
        self.last_heard = now
        self.silent = False
        self.syms: set[int] = set()
        self.may_publish: Callable[[str], bool] | None = None
        """The token's publish patterns (None: every symbol, an ingest.tokens token)."""


class IngestSource(BaseSource):
    """Ticks pushed by producers over `/ingest` (see the module docstring).

    State: `connecting` until a first producer connects, `live` while at least one producer is
    connected and not silent, `stale` otherwise. Which symbols are stale is decided per
    producer, not by this state. Counters: `producers` (connected now), `messages`, `errors`
    (messages answered with an error frame), `unauthorized` (refused upgrades),
    `closed_rate_limited` (1008) and `closed_too_big` (1009).
    """

    kind = "ingest"

    def __init__(
        self,
        settings: IngestConfig,
        tokens: tuple[str, ...],
        *,
        ping_interval: float | None = 20.0,
        close_timeout: float = 2.0,
        publishers: Any = None,
    ) -> None:
        super().__init__(stale_after=settings.stale_after)
        if not tokens and publishers is None:
            raise ValueError("an ingest source needs at least one token")
        self._publishers = publishers
        """feed.auth.Authenticator: [[auth.tokens]] with publish patterns (or None)."""
        self.settings = settings
        self._tokens = [token.encode() for token in tokens]
        self._ping_interval = ping_interval
        self._close_timeout = close_timeout
        self._producers: set[_Producer] = set()
        self._names: dict[str, int] = {}
        """Market indices of the symbols this source has claimed."""
        self._numbers = itertools.count(1)
        self.counters = dict.fromkeys(
            (
                "producers",
                "messages",
                "errors",
                "unauthorized",
                "closed_rate_limited",
                "closed_too_big",
            ),
            0,
        )

    # -- Source -------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.handle, allow_head=False)]

    async def run(self, ingest: Ingest) -> None:
        """Producers are served by `handle`; this only waits until the feed stops."""
        if self._ingest is not ingest:
            self.attach(ingest)
        await asyncio.Event().wait()

    def check(self, now: float) -> None:
        """Producers silent for `stale_after` seconds make their symbols stale."""
        stale_after = self.settings.stale_after
        for producer in list(self._producers):
            if not producer.silent and now - producer.last_heard > stale_after:
                producer.silent = True
                log.info("producer %s silent for %g s", producer.name, stale_after)
                self._stale(producer, f"no data from its producer for {stale_after:g} s")
        self._summarize()

    async def shutdown(
        self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Close every producer connection (the server is stopping) and wait until each has
        answered or `websocket.close_timeout` has passed."""
        closing = [
            _close(producer.ws, code, reason, self._close_timeout) for producer in self._producers
        ]
        if closing:
            await asyncio.gather(*closing)

    def describe(self) -> str:
        return (
            f"ingest: producers on {PATH} with {len(self._tokens)} token(s), "
            f"stale after {self.settings.stale_after:g} s"
        )

    def heard(self) -> None:
        # Liveness is per producer (`_Producer.last_heard`), not for the source as a whole.
        self.last_heard = time.monotonic()

    def set_state(self, state: SourceState, reason: str | None = None) -> None:
        """The state summarizes the producers and stales no symbol itself (each producer's
        symbols are staled by `_stale`); only `failed` stales them all."""
        if state is SourceState.FAILED:
            super().set_state(state, reason)
            return
        if state is self.state and reason == self.reason:
            return
        if state is not self.state:
            log.info(
                "source %s: %s -> %s%s",
                self.name,
                self.state,
                state,
                f" ({reason})" if reason else "",
            )
        self.state, self.reason = state, reason

    # -- producers ----------------------------------------------------------------------------

    def authorized(self, request: web.BaseRequest) -> Callable[[str], bool] | bool:
        """What the request's token (`Authorization: Bearer` or `?token=`) may publish: True
        for an `ingest.tokens` one (every symbol), the check of an `[[auth.tokens]]` one's
        `publish` patterns, False for none; compared in constant time against every token."""
        given = token_of(request)
        if not given:
            return False
        candidate = given.encode()
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(candidate, token)
        if found:
            return True
        if self._publishers is not None:
            principal = self._publishers.publisher(given)
            if principal is not None:
                check: Callable[[str], bool] = principal.may_publish
                return check
        return False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`GET /ingest`: authenticate, upgrade, then one message at a time until it closes."""
        rights = self.authorized(request)
        if rights is False:
            self.count("unauthorized")
            log.info("refused a producer from %s: no or wrong token", request.remote)
            return _json_error(
                401,
                "unauthorized",
                "a producer needs a token: 'Authorization: Bearer <token>' or ?token=<token>",
                {"WWW-Authenticate": 'Bearer realm="feed"'},
            )
        ws = web.WebSocketResponse(
            heartbeat=self._ping_interval,
            timeout=self._close_timeout,
            compress=False,
            # aiohttp refuses a message of max_msg_size bytes or more; ours may have max bytes.
            max_msg_size=self.settings.max_message_size + 1,
            decode_text=False,
        )
        if not ws.can_prepare(request).ok:
            return _json_error(
                400, "bad_request", f"{PATH} is a WebSocket endpoint: send an upgrade request"
            )
        try:
            await ws.prepare(request)
        except ConnectionError:
            return ws
        now = time.monotonic()
        settings = self.settings
        producer = _Producer(
            f"#{next(self._numbers)} ({request.remote})",
            ws,
            TokenBucket(settings.message_rate, settings.message_burst, now),
            now,
        )
        if rights is not True:
            producer.may_publish = rights
        self._connect(producer)
        try:
            await self._serve(producer, ws)
        finally:
            self._disconnect(producer)
            release_websocket(request, ws)
        return ws

    async def _serve(self, producer: _Producer, ws: web.WebSocketResponse) -> None:
        intern = self._intern_for(producer)
        bucket = producer.bucket
        async for message in ws:
            kind = message.type
            if kind is not WSMsgType.TEXT and kind is not WSMsgType.BINARY:
                # ERROR: aiohttp has closed the socket already (1009 for a message too big).
                error = message.data
                if getattr(error, "code", None) == CloseCode.MESSAGE_TOO_BIG:
                    self.count("closed_too_big")
                log.info("closing producer %s: %s", producer.name, error)
                return
            now = time.monotonic()
            if not bucket.take(now):
                self.count("closed_rate_limited")
                reason = f"more than {self.settings.message_rate:g} messages per second"
                log.info("closing producer %s: 1008 %s", producer.name, reason)
                await _close(ws, CloseCode.POLICY_VIOLATION, reason, self._close_timeout)
                return
            answer = self._message(
                producer, message.data, intern, now, binary=kind is WSMsgType.BINARY
            )
            if answer is not None and not ws.closed:
                await ws.send_frame(answer, WSMsgType.TEXT)

    def _message(
        self,
        producer: _Producer,
        data: bytes,
        intern: tickparse.Intern,
        now: float,
        *,
        binary: bool = False,
    ) -> bytes | None:
        """Parse, apply and answer one message, text or a binary batch (None: no answer is
        due)."""
        self.counters["messages"] += 1
        producer.last_heard = now
        if producer.silent:
            producer.silent = False
            self._summarize()
        try:
            if binary:
                parsed = tickparse.parse_binary(data, intern, time.time_ns())
            else:
                parsed = tickparse.parse_message(data, intern, time.time_ns())
        except tickparse.MessageError as exc:
            self.count("errors")
            code = (
                ErrorCode.BAD_JSON if isinstance(exc, tickparse.NotJson) else ErrorCode.BAD_REQUEST
            )
            return protocol.error(code, str(exc), None if binary else _readable_id(data))
        batch, rejects = parsed.batch, parsed.rejects
        if len(batch):
            self.emit(batch)
        if rejects:
            self.rejected(len(rejects))
        elif parsed.id is None:
            return None
        return accepted(parsed.id, len(batch), rejects)

    def _intern_for(self, producer: _Producer) -> tickparse.Intern:
        """The parser's symbol lookup for one producer: claims new symbols for this source and
        remembers which symbols the producer sent (the parser asks only for good ticks)."""
        names = self._names
        sent = producer.syms.add
        may_publish = producer.may_publish

        def intern(name: str) -> int:
            if may_publish is not None and not may_publish(name):
                raise SymbolRejected(
                    f"this token may not publish {name!r} (its [[auth.tokens]] publish patterns)"
                )
            sym = names.get(name)
            if sym is None:
                # Raises SymbolRejected (another source owns it, or limits.max_symbols), which
                # the parser turns into a reject of the tick on field `symbol`.
                sym = names[name] = self.ingest.symbol(self, name)
            sent(sym)
            return sym

        return intern

    def _connect(self, producer: _Producer) -> None:
        self._producers.add(producer)
        self.counters["producers"] = len(self._producers)
        log.info("producer %s connected", producer.name)
        self._summarize()

    def _disconnect(self, producer: _Producer) -> None:
        self._producers.discard(producer)
        self.counters["producers"] = len(self._producers)
        log.info("producer %s disconnected", producer.name)
        self._stale(producer, DISCONNECTED)
        self._summarize()

    def _stale(self, producer: _Producer, reason: str) -> None:
        """Stale the symbols `producer` sent that no other active producer sends."""
        if not producer.syms or self._ingest is None:
            return
        covered: set[int] = set()
        for other in self._producers:
            if other is not producer and not other.silent:
                covered |= other.syms
        syms = producer.syms - covered
        if syms:
            self._ingest.stale(self, sorted(syms), reason)

    def _summarize(self) -> None:
        """The source's state from its producers'."""
        if any(not producer.silent for producer in self._producers):
            self.set_state(SourceState.LIVE)
        elif self._producers:
            self.set_state(SourceState.STALE, "every producer is silent")
        elif self.state is not SourceState.CONNECTING:
            self.set_state(SourceState.STALE, "no producer connected")


def accepted(message_id: tickparse.MessageId, count: int, rejects: list[tickparse.Reject]) -> bytes:
    """The answer to a message with an id or with rejects: what was applied, what was not."""
    answer: dict[str, Any] = {"type": "accepted"}
    if message_id is not None:
        answer["id"] = message_id
    answer["accepted"] = count
    answer["rejected"] = [reject.to_json() for reject in rejects[:MAX_LISTED_REJECTS]]
    answer["rejected_count"] = len(rejects)
    return orjson.dumps(answer)


def _readable_id(data: bytes) -> protocol.RequestId:
    """The id of a message the parser refused, when it has a readable one (decoded again: this
    is the rare path)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    message_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(message_id, bool) or not isinstance(message_id, int | str):
        return None
    if isinstance(message_id, str) and len(message_id) > protocol.MAX_ID_LENGTH:
        return None
    return message_id


def _json_error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": error, "message": message}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _close(ws: web.WebSocketResponse, code: int, reason: str, timeout: float) -> None:
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:123]), timeout)


def enabled(section: Any, config: Config) -> bool:
    from feed.auth import Authenticator

    return bool(all_tokens(section)) or Authenticator(config.auth).publishers


def create(section: Any, config: Config) -> IngestSource:
    from feed.auth import Authenticator

    settings: IngestConfig = section
    tokens = all_tokens(settings)
    publishers = Authenticator(config.auth)
    if not tokens and not publishers.publishers:
        raise ConfigError(
            "config key 'ingest.tokens' is empty, but producers need a token: set "
            f"ingest.tokens or {ENV_TOKENS}, or give an [[auth.tokens]] table publish patterns "
            "(the endpoint runs whenever one is set)"
        )
    bad = _tokens(tokens) if tokens else None
    if bad:
        raise ConfigError(f"the tokens in {ENV_TOKENS} {bad}")
    return IngestSource(
        settings,
        tokens,
        ping_interval=config.websocket.ping_interval,
        close_timeout=config.websocket.close_timeout,
        publishers=publishers if publishers.publishers else None,
    )


KIND = register(SourceKind("ingest", IngestConfig, create, enabled))
