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


@dataclass(frozen=True)
class ServerConfig:
    host: str = _key("127.0.0.1")
    port: int = _key(8080, _port)


@dataclass(frozen=True)
class SourceConfig:
    kind: str = _key("simulator", _one_of("simulator"))


@dataclass(frozen=True)
class SimulatorConfig:
    symbols: int = _key(100, _at_least_one)
    rate: float = _key(2000.0, _positive)
    seed: int = _key(42, _non_negative)
    step: float = _key(0.001, _positive)
    trade_ratio: float = _key(0.3, _fraction)
    burst_factor: float = _key(1.0, _positive)
    burst_every: float = _key(5.0, _positive)
    burst_length: float = _key(1.0, _non_negative)
    paced: bool = _key(True)


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = _key(10_000, _at_least_one)
    max_message_size: int = _key(4096, _at_least_one)
    max_symbols_per_connection: int = _key(1000, _at_least_one)
    control_rate: float = _key(20.0, _positive)
    control_burst: int = _key(50, _at_least_one)
    slow_consumer_timeout: float = _key(10.0, _positive)


@dataclass(frozen=True)
class WebSocketConfig:
    heartbeat_interval: float = _key(5.0, _positive)
    ping_interval: float = _key(20.0, _positive)
    close_timeout: float = _key(2.0, _positive)
    compress: bool = _key(False)
    write_buffer_limit: int = _key(65536, _at_least_one)
    send_buffer_size: int = _key(65536, _non_negative)


@dataclass(frozen=True)
class LogConfig:
    level: str = _key("info", _one_of("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    log: LogConfig = field(default_factory=LogConfig)


class ConfigError(ValueError):
    """A config value is missing its key, of the wrong type or out of range."""


def _section_types() -> dict[str, type[Any]]:
    return {name: hint for name, hint in get_type_hints(Config).items()}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(key: str, value: Any, kind: type[Any]) -> Any:
    """The value as `kind`, accepting an integer where a float is wanted, nothing looser."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and is_number:
        return float(value)
    if kind is int and is_number and isinstance(value, int):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
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
    return Config(**sections)


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
    return dataclasses.asdict(config)
