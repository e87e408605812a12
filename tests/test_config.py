"""Config: defaults documented in config.toml, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from feed import config
from feed.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_config_toml_documents_every_key_with_its_default() -> None:
    with open(ROOT / "config.toml", "rb") as file:
        documented = tomllib.load(file)
    defaults = config.to_dict(Config())
    assert documented == defaults
    assert config.load(ROOT / "config.toml") == Config()


def test_every_key_has_a_comment_in_config_toml() -> None:
    lines = (ROOT / "config.toml").read_text().splitlines()
    for line in lines:
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"config.toml key without a comment: {line!r}"


def test_overrides_apply_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\n[simulator]\nrate = 5\n")
    loaded = config.load(path, {"server": {"host": "0.0.0.0"}, "simulator": {"rate": 7.5}})
    assert loaded.server == config.ServerConfig(host="0.0.0.0", port=9000)
    assert loaded.simulator.rate == 7.5
    assert isinstance(config.load(path).simulator.rate, float)  # an integer is fine for a float


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server": {"port": 70000}}, "'server.port' must be a port number"),
        ({"server": {"port": "80"}}, "'server.port' must be an integer, got '80'"),
        ({"simulator": {"rate": -1}}, "'simulator.rate' must be > 0, got -1"),
        ({"simulator": {"paced": 1}}, "'simulator.paced' must be true or false"),
        ({"limits": {"max_connections": 0}}, "'limits.max_connections' must be >= 1, got 0"),
        ({"limits": {"max_conections": 5}}, "unknown config key 'limits.max_conections'"),
        ({"nope": {}}, "unknown config section 'nope'"),
        ({"log": {"level": "loud"}}, "'log.level' must be one of debug, info"),
        (
            {"memory": {"allocator": "jemalloc"}},
            "'memory.allocator' must be one of pymalloc, malloc",
        ),
        ({"source": {"kinds": ["kafka"]}}, "'source.kinds' names unknown source kind"),
        ({"server": 3}, "config key 'server' must be a table"),
    ],
)
def test_bad_values_name_the_key_and_the_value(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config.build(values)  # type: ignore[arg-type]


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(broken)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server.port=81", ("server", "port", 81)),
        ("server.host=0.0.0.0", ("server", "host", "0.0.0.0")),
        ('server.host="::1"', ("server", "host", "::1")),
        ("simulator.paced=false", ("simulator", "paced", False)),
        ("simulator.rate=1e4", ("simulator", "rate", 10000.0)),
    ],
)
def test_parse_override(text: str, expected: tuple[str, str, object]) -> None:
    assert config.parse_override(text) == expected


@pytest.mark.parametrize("text", ["port=1", "server.port", "a.b.c=1"])
def test_parse_override_rejects_bad_shapes(text: str) -> None:
    with pytest.raises(ConfigError):
        config.parse_override(text)


def test_every_section_is_frozen() -> None:
    for field in dataclasses.fields(Config):
        assert field.type  # every section has a type
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().server.port = 1  # type: ignore[misc]
