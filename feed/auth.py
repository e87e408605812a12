"""Who may see what: API tokens, their entitlements, and the browsers' Origin allow-list.

One resolve-and-authorize path for every route (`authorize`), WebSocket and HTTP alike:
- the token comes from `Authorization: Bearer <token>` or `?token=<token>` (browsers cannot set
  headers on a WebSocket);
- tokens are configured as the hex SHA-256 of the token (`[[auth.tokens]]` in config.toml, or
  `FEED_AUTH_TOKENS`, a JSON list of the same tables), so the config never holds a secret; a
  presented token is hashed and compared in constant time against every configured hash, and
  never logged (a connection is logged by the first 8 hex digits of its hash);
- each token carries `read`, the symbol patterns it may subscribe to and read (`*` for all), and
  `publish`, those it may send on `/ingest` (none by default; `ingest.tokens` may publish all).

With `auth.required = false` (the default, for the embedded demo on 127.0.0.1) every request is
let in with the right to read everything; `check_bind` refuses to start a server bound to another
address that way unless `auth.allow_open` says so.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from feed.config import AuthConfig, ConfigError

TOKENS_ENV = "FEED_AUTH_TOKENS"
"""A JSON list of token tables ({"sha256": ..., "read": [...]}) added to `auth.tokens`."""


@dataclass(frozen=True)
class Principal:
    """What one presented token may do."""

    name: str
    """For logs: `token:` and the first 8 hex digits of its hash, or `open` without auth."""
    read: tuple[str, ...]
    _read: re.Pattern[str] | None
    publish: tuple[str, ...] = ()
    """Symbol patterns it may send on /ingest (none: it may not publish)."""
    _publish: re.Pattern[str] | None = None

    def may_read(self, symbol: str) -> bool:
        return self._read is None or bool(self._read.match(symbol))

    def may_publish(self, symbol: str) -> bool:
        return self._publish is not None and bool(self._publish.match(symbol))

    @property
    def reads_all(self) -> bool:
        return self._read is None


OPEN = Principal("open", ("*",), None)


def _patterns(patterns: Sequence[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile("(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _principal(name: str, read: Sequence[str], publish: Sequence[str] = ()) -> Principal:
    return Principal(
        name,
        tuple(read),
        None if "*" in read else _patterns(read),
        tuple(publish),
        _patterns(publish) if publish else None,
    )


class Authenticator:
    def __init__(self, config: AuthConfig, environ: dict[str, str] | None = None) -> None:
        self.required = config.required
        self.origins = frozenset(config.origins)
        tables: list[dict[str, Any]] = [dict(t) for t in config.tokens]
        raw = (environ if environ is not None else os.environ).get(TOKENS_ENV, "")
        if raw.strip():
            try:
                extra = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{TOKENS_ENV} must be a JSON list of tables: {exc}") from None
            tables += validate_tokens(TOKENS_ENV, extra)
        self._hashes: list[tuple[bytes, Principal]] = [
            (
                bytes.fromhex(t["sha256"]),
                _principal(f"token:{t['sha256'][:8]}", t["read"], t["publish"]),
            )
            for t in tables
        ]
        if self.required and not self._hashes:
            raise ConfigError(
                "config key 'auth.required' is true but no token is configured "
                f"([[auth.tokens]] or {TOKENS_ENV}): nobody could connect"
            )

    @property
    def publishers(self) -> bool:
        """Whether some token may publish on /ingest."""
        return any(principal.publish for _, principal in self._hashes)

    def publisher(self, token: str | None) -> Principal | None:
        """The principal of `token` if it may publish some symbols on /ingest, whether or not
        auth is required for readers."""
        principal = self._match(token)
        return principal if principal is not None and principal.publish else None

    def resolve(self, token: str | None) -> Principal | None:
        """The principal of `token`; OPEN when auth is not required; None if refused."""
        if not self.required:
            return OPEN
        return self._match(token)

    def _match(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for expected, principal in self._hashes:  # every one, whatever matched: constant time
            if hmac.compare_digest(digest, expected):
                found = principal
        return found

    def authorize(self, request: web.Request) -> Principal | web.Response:
        """The principal of `request`, or the answer refusing it (401, or 403 for an Origin
        that is not allowed)."""
        origin = request.headers.get("Origin")
        if origin is not None and self.origins and origin not in self.origins:
            return _refusal(403, "origin_not_allowed", f"origin {origin!r} is not allowed")
        principal = self.resolve(token_of(request))
        if principal is None:
            response = _refusal(
                401,
                "unauthorized",
                "a valid token is needed: 'Authorization: Bearer <token>' or ?token=<token>",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return principal


def token_of(request: web.BaseRequest) -> str | None:
    """The token a request presents: `Authorization: Bearer <token>`, else `?token=`."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query.get("token") or None


def _refusal(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": code, "message": message}),
        status=status,
        content_type="application/json",
    )


_HEX = re.compile(r"^[0-9a-f]{64}$")


def validate_tokens(key: str, value: Any) -> list[dict[str, Any]]:
    """Token tables checked: `sha256` (64 lowercase hex digits), `read` (a list of symbol
    patterns, default every symbol); a bad one stops start-up naming the key."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"config key '{key}' must be a list of tables, got {value!r}")
    tables = []
    for i, table in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"config key '{where}' must be a table, got {table!r}")
        unknown = set(table) - {"sha256", "read", "publish", "name"}
        if unknown:
            raise ConfigError(
                f"unknown config key '{where}.{sorted(unknown)[0]}' (known: sha256, read, "
                "publish, name)"
            )
        digest = table.get("sha256")
        if not isinstance(digest, str) or not _HEX.match(digest.lower()):
            raise ConfigError(
                f"config key '{where}.sha256' must be the hex SHA-256 of the token (64 hex "
                f"digits; e.g. printf %s TOKEN | sha256sum), got {digest!r}"
            )
        read = table.get("read", ["*"])
        publish = table.get("publish", [])
        for name, patterns in (("read", read), ("publish", publish)):
            if not isinstance(patterns, list | tuple) or not all(
                isinstance(p, str) and p for p in patterns
            ):
                raise ConfigError(f"config key '{where}.{name}' must be a list of symbol patterns")
        tables.append({"sha256": digest.lower(), "read": list(read), "publish": list(publish)})
    return tables


def check_bind(config: AuthConfig, host: str) -> None:
    """Refuse to serve without auth on an address other than loopback, unless asked to."""
    if config.required or config.allow_open:
        return
    if _loopback(host):
        return
    raise ConfigError(
        f"refusing to serve on {host!r} without auth: anyone who can reach it could read the "
        "feed. Set auth.required = true with [[auth.tokens]], or auth.allow_open = true to "
        "serve it open on purpose"
    )


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
