"""Configuration: `config.toml`, overridden by command-line values, checked before start-up.

Every key has a default here, is documented in the root `config.toml`, and is validated with a
message naming the key and the value, so a bad value stops start-up instead of a client later.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

Check = Callable[[Any], str | None]


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number from 0 to 65535"


def _fraction(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _key(default: Any, check: Check | None = None) -> Any:
    return field(default=default, metadata={"check": check})


# The checks and the key helper, for the config sections that source kinds declare.
key = _key
positive = _positive
non_negative = _non_negative
fraction = _fraction
at_least_one = _at_least_one
one_of = _one_of


@dataclass(frozen=True)
class ServerConfig:
    host: str = _key("127.0.0.1")
    port: int = _key(8080, _port)
    workers: int = _key(1, _at_least_one)


def _known_kinds(value: Any) -> str | None:
    from feed.sources import registry

    if not value:
        return "must name at least one source kind"
    unknown = [kind for kind in value if kind not in registry.KINDS]
    if unknown:
        return f"names unknown source kind(s) {', '.join(unknown)} (known: {registry.names()})"
    if len(set(value)) != len(value):
        return "names a source kind twice"
    return None


@dataclass(frozen=True)
class SourceConfig:
    kinds: tuple[str, ...] = _key(("simulator",), _known_kinds)


@dataclass(frozen=True)
class RecordConfig:
    file: str = _key("")
    flush_interval: float = _key(1.0, _positive)


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = _key(10_000, _at_least_one)
    max_symbols: int = _key(100_000, _at_least_one)
    max_message_size: int = _key(4096, _at_least_one)
    max_symbols_per_connection: int = _key(1000, _at_least_one)
    control_rate: float = _key(20.0, _positive)
    control_burst: int = _key(50, _at_least_one)
    slow_consumer_timeout: float = _key(10.0, _positive)
    handshakes_per_turn: int = _key(64, _at_least_one)
    requests_per_turn: int = _key(64, _at_least_one)
    opens_per_turn: int = _key(64, _at_least_one)
    reads_per_turn: int = _key(256, _at_least_one)
    closes_per_turn: int = _key(64, _at_least_one)


@dataclass(frozen=True)
class WebSocketConfig:
    heartbeat_interval: float = _key(5.0, _positive)
    ping_interval: float = _key(20.0, _positive)
    close_timeout: float = _key(2.0, _positive)
    compress: bool = _key(False)
    write_buffer_limit: int = _key(65536, _at_least_one)
    send_buffer_size: int = _key(65536, _non_negative)


@dataclass(frozen=True)
class GcConfig:
    freeze: bool = _key(True)
    settle: float = _key(10.0, _positive)
    compact_after: int = _key(100_000, _at_least_one)


@dataclass(frozen=True)
class MemoryConfig:
    allocator: str = _key("pymalloc", _one_of("pymalloc", "malloc"))
    """The allocator the server's Python runs on (`PYTHONMALLOC`; `feed serve`, `ingest` and
    `gateway` start again under it when it is not the one they were started with). pymalloc
    is faster (the fan-out's instructions per frame 4% fewer, storms shorter); malloc gives a
    storm's memory back (docs/performance.md, step 25)."""


def _subscribe_mode(value: Any) -> str | None:
    return None if value in ("all", "held") else "must be all or held"


def _subject_token(value: Any) -> str | None:
    if not value:
        return "must not be empty"
    bad = [part for part in value.split(".") if not part or any(c in part for c in " *>\t")]
    return f"must be NATS subject tokens joined by dots ({bad[0]!r} is not one)" if bad else None


def _urls(value: Any) -> str | None:
    if not value:
        return "must name at least one NATS URL"
    bad = [url for url in value if not url.startswith(("nats://", "tls://", "ws://", "wss://"))]
    return f"must be nats:// (or tls://, ws://, wss://) URLs ({bad[0]!r} is not)" if bad else None


@dataclass(frozen=True)
class BusConfig:
    """NATS, for `feed ingest` and `feed gateway` (docs/scaling.md); `feed serve` never uses it."""

    url: tuple[str, ...] = _key(("nats://127.0.0.1:4222",), _urls)
    prefix: str = _key("feed", _subject_token)
    stream: str = _key("")
    user: str = _key("")
    password: str = _key("")
    token: str = _key("")
    creds: str = _key("")
    node: str = _key("")
    subscribe: str = _key("all", _subscribe_mode)
    heartbeat_interval: float = _key(1.0, _positive)
    stale_after: float = _key(3.0, _positive)
    reconnect_wait: float = _key(0.5, _positive)
    reconnect_max: float = _key(5.0, _positive)
    connect_timeout: float = _key(2.0, _positive)
    read_timeout: float = _key(10.0, _positive)
    storage: str = _key("file", _one_of("file", "memory"))
    replicas: int = _key(1, _at_least_one)
    pending_messages: int = _key(100_000, _at_least_one)
    pending_bytes: int = _key(64 * 1024 * 1024, _at_least_one)


TokenTables = tuple[dict[str, Any], ...]
"""`[[auth.tokens]]`: tables checked by feed.auth.validate_tokens."""


@dataclass(frozen=True)
class AuthConfig:
    """Who may connect and read what (feed/auth.py, docs/operations.md)."""

    required: bool = _key(False)
    origins: tuple[str, ...] = _key(())
    tokens: TokenTables = _key(())  # noqa: RUF009 (a tuple: immutable)
    allow_open: bool = _key(False)


@dataclass(frozen=True)
class LogConfig:
    level: str = _key("info", _one_of("debug", "info", "warning", "error"))
    format: str = _key("text", _one_of("text", "json"))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _key(True)


def _default_kind_sections() -> dict[str, Any]:
    from feed.sources import registry

    return {name: kind.settings() for name, kind in registry.KINDS.items()}


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    kinds: dict[str, Any] = field(default_factory=_default_kind_sections)
    """One section per registered source kind (`[simulator]`, `[replay]`, ...), by kind name:
    declared by the kind (`feed.sources.registry`), not here."""

    def section(self, kind: str) -> Any:
        """The config section of source kind `kind`."""
        return self.kinds[kind]

    @property
    def simulator(self) -> Any:
        return self.kinds["simulator"]


class ConfigError(ValueError):
    """A config value is missing its key, of the wrong type or out of range."""


def _section_types() -> dict[str, type[Any]]:
    from feed.sources import registry

    types = {name: hint for name, hint in get_type_hints(Config).items() if name != "kinds"}
    for name, kind in registry.KINDS.items():
        types.setdefault(name, kind.settings)
    return types


_TYPE_NAMES: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    tuple[str, ...]: "a list of strings",
}


def _coerce(key: str, value: Any, kind: type[Any]) -> Any:
    """The value as `kind`, accepting an integer where a float is wanted, nothing looser."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and is_number:
        return float(value)
    if kind is int and is_number and isinstance(value, int):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    if kind == TokenTables:
        from feed.auth import validate_tokens

        return tuple(validate_tokens(key, value))
    if kind == tuple[str, ...]:
        if isinstance(value, str):  # `--set source.kinds=stdin`: one name is a list of one
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
    raise ConfigError(f"config key '{key}' must be {_TYPE_NAMES[kind]}, got {value!r}")


def build(values: Mapping[str, Any]) -> Config:
    """A Config from nested values (as read from TOML), every key checked."""
    sections: dict[str, Any] = {}
    types = _section_types()
    for section_name, section_values in values.items():
        if section_name not in types:
            known = ", ".join(types)
            raise ConfigError(f"unknown config section '{section_name}' (known: {known})")
        if not isinstance(section_values, Mapping):
            raise ConfigError(f"config key '{section_name}' must be a table")
        cls = types[section_name]
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in section_values.items():
            full = f"{section_name}.{key}"
            if key not in fields:
                known = ", ".join(fields)
                raise ConfigError(
                    f"unknown config key '{full}' (known in [{section_name}]: {known})"
                )
            value = _coerce(full, raw, hints[key])
            check: Check | None = fields[key].metadata.get("check")
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"config key '{full}' {problem}, got {raw!r}")
            kwargs[key] = value
        sections[section_name] = cls(**kwargs)
    fixed = {name for name in get_type_hints(Config) if name != "kinds"}
    kinds = _default_kind_sections()
    kinds.update({name: value for name, value in sections.items() if name not in fixed})
    return Config(**{name: value for name, value in sections.items() if name in fixed}, kinds=kinds)


def parse_override(assignment: str) -> tuple[str, str, Any]:
    """`section.key=value` (value in TOML syntax, bare words taken as strings)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    path, text = assignment.split("=", 1)
    path = path.strip()
    if path.count(".") != 1:
        raise ConfigError(f"override key {path!r} must look like section.key")
    section, key = path.split(".")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return section, key, value


def load(
    path: str | Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Config:
    """Read `path` (if given), apply `overrides` (section -> key -> value), validate all."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                values = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for section, keys in (overrides or {}).items():
        existing = values.setdefault(section, {})
        if not isinstance(existing, dict):
            raise ConfigError(f"config key '{section}' must be a table")
        existing.update(keys)
    return build(values)


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Every section by name, as config.toml spells it (lists, not tuples)."""
    result: dict[str, dict[str, Any]] = {}
    for item in dataclasses.fields(config):
        if item.name != "kinds":
            result[item.name] = _plain(dataclasses.asdict(getattr(config, item.name)))
    for name, section in config.kinds.items():
        result[name] = _plain(dataclasses.asdict(section))
    return result


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
