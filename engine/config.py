"""Configuration: documented defaults shipped with the package, overridden by one user YAML file.

Errors name the key, the file and the line, because a config typo should be a one-second fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from platformdirs import user_cache_dir, user_config_dir, user_data_dir

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
APP_NAME = "embedscope"


class ConfigError(ValueError):
    """A configuration file is unreadable or does not match the schema."""


@dataclass(frozen=True)
class Scalar:
    """A leaf of the schema: one or more accepted Python types."""

    types: tuple[type, ...]
    nullable: bool = False

    def describe(self) -> str:
        names = " or ".join("number" if t is float else t.__name__ for t in self.types)
        return f"{names} or null" if self.nullable else names


@dataclass(frozen=True)
class ListOf:
    item: Scalar


@dataclass(frozen=True)
class MapOf:
    """A mapping from free-form names (model names, key ids) to values of one schema."""

    value: Any


STR = Scalar((str,))
OPT_STR = Scalar((str,), nullable=True)
INT = Scalar((int,))
NUM = Scalar((int, float))
OPT_NUM = Scalar((int, float), nullable=True)
BOOL = Scalar((bool,))

MODEL_SCHEMA: dict[str, Any] = {
    "kind": STR,
    "description": STR,
    "package": STR,
    "parts": ListOf(STR),
    "parts_folder": STR,
    "path": STR,
    "hub_id": STR,
    "sha256": STR,
    "max_seq_length": INT,
    "trust_remote_code": BOOL,
    "model": STR,
    "base_url": STR,
    "api_key_env": STR,
    "price_per_1m_tokens": NUM,
    "dimensions": INT,
    "distill_from": STR,
    "pca_dims": INT,
    "onnx_small_batches": BOOL,
}

SCHEMA: dict[str, Any] = {
    "data_dir": OPT_STR,
    "cache_dir": OPT_STR,
    "device": STR,
    "allow_hub_downloads": BOOL,
    "default_model": STR,
    "models": MapOf(MODEL_SCHEMA),
    "embedding": {
        "max_batch_size": INT,
        "max_wait_ms": NUM,
        "max_queue": INT,
        "memory_cache_mb": NUM,
        "disk_cache_mb": NUM,
        "disk_cache_ttl_s": OPT_NUM,
    },
    "index": {
        "type": STR,
        "auto_hnsw_threshold": INT,
        "hnsw_m": INT,
        "hnsw_ef_search": INT,
        "hnsw_ef_construction": INT,
        "ivf_nlist": Scalar((int,), nullable=True),
        "ivf_nprobe": INT,
        "chunk_tokens": Scalar((int,), nullable=True),
        "chunk_overlap": INT,
        "rrf_k": INT,
    },
    "use_cases": MapOf(
        {"accuracy": NUM, "latency": NUM, "memory": NUM, "cost": NUM, "description": STR}
    ),
    "documents": {
        "max_file_mb": NUM,
        "include": ListOf(STR),
        "exclude": ListOf(STR),
        "csv_text_column": STR,
        "csv_id_column": STR,
        "csv_title_column": STR,
    },
}

# Sections whose entries a user file replaces whole instead of merging key by key: redefining a
# model with `path:` must not inherit the default's `package:` and end up with two sources.
REPLACE_ENTRIES = {("models",)}


@dataclass(frozen=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _load_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], Location]]:
    """Parse YAML keeping the line of every key, so later checks can point at it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: the config must be a mapping of keys, not {type(data).__name__}"
        )
    lines: dict[tuple[str, ...], Location] = {}

    def walk(n: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = (*prefix, str(key_node.value))
                lines[key] = Location(str(path), key_node.start_mark.line + 1)
                walk(value_node, key)

    if node is not None:
        walk(node, ())
    return data, lines


def _check(value: Any, schema: Any, key: tuple[str, ...], where: Location) -> None:
    dotted = ".".join(key)
    if isinstance(schema, Scalar):
        if value is None and schema.nullable:
            return
        ok = isinstance(value, schema.types) and not (
            isinstance(value, bool) and bool not in schema.types
        )
        if not ok:
            raise ConfigError(
                f"{where}: '{dotted}' must be {schema.describe()}, got {type(value).__name__} "
                f"{value!r}"
            )
    elif isinstance(schema, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{dotted}' must be a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, schema.item, (*key[:-1], f"{key[-1]}[{i}]"), where)
    elif isinstance(schema, MapOf | dict) and not isinstance(value, dict):
        raise ConfigError(f"{where}: '{dotted}' must be a mapping, got {type(value).__name__}")


def _validate(
    data: Mapping[str, Any],
    schema: Mapping[str, Any] | MapOf,
    lines: Mapping[tuple[str, ...], Location],
    prefix: tuple[str, ...],
    file: str,
) -> None:
    for name, value in data.items():
        key = (*prefix, str(name))
        where = lines.get(key, Location(file, 1))
        if isinstance(schema, MapOf):
            sub = schema.value
        elif name in schema:
            sub = schema[name]
        else:
            known = ", ".join(sorted(schema))
            section = f" in '{'.'.join(prefix)}'" if prefix else ""
            raise ConfigError(f"{where}: unknown key '{name}'{section} (known keys: {known})")
        _check(value, sub, key, where)
        if isinstance(sub, dict | MapOf):
            _validate(value, sub, lines, key, file)


def _merge(base: dict[str, Any], over: Mapping[str, Any], path: tuple[str, ...] = ()) -> None:
    for name, value in over.items():
        if (
            isinstance(value, dict)
            and isinstance(base.get(name), dict)
            and path not in REPLACE_ENTRIES
        ):
            _merge(base[name], value, (*path, name))
        else:
            base[name] = value


@dataclass(frozen=True)
class EmbeddingSettings:
    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    memory_cache_mb: float
    disk_cache_mb: float
    disk_cache_ttl_s: float | None


@dataclass
class Config:
    """The merged, validated configuration, plus where each key came from."""

    raw: dict[str, Any]
    data_dir: Path
    sources: list[Path] = field(default_factory=list)
    locations: dict[tuple[str, ...], Location] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        """Files derived from others and rebuilt when missing (ONNX exports of local models)."""
        configured = self.raw["cache_dir"]
        return Path(configured).expanduser() if configured else Path(user_cache_dir(APP_NAME))

    @property
    def device(self) -> str:
        return str(self.raw["device"])

    @property
    def allow_hub_downloads(self) -> bool:
        return bool(self.raw["allow_hub_downloads"])

    @property
    def default_model(self) -> str:
        return str(self.raw["default_model"])

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return self.raw["models"]

    @property
    def embedding(self) -> EmbeddingSettings:
        return EmbeddingSettings(**self.raw["embedding"])

    @property
    def index(self) -> dict[str, Any]:
        return self.raw["index"]

    @property
    def documents(self) -> dict[str, Any]:
        return self.raw["documents"]

    def where(self, *key: str) -> str:
        """The file:line a key was set at, for error messages raised after loading."""
        loc = self.locations.get(tuple(key))
        return str(loc) if loc else "defaults"


def user_config_path() -> Path:
    return Path(user_config_dir(APP_NAME)) / "config.yaml"


def resolve_data_dir(configured: str | None) -> Path:
    env = os.environ.get("EMBEDSCOPE_HOME")
    if env:
        return Path(env).expanduser()
    if configured:
        return Path(configured).expanduser()
    return Path(user_data_dir(APP_NAME))


def load_config(path: Path | None = None, *, use_user_file: bool = True) -> Config:
    """Defaults, then the user file (or `path`), validated against the schema."""
    raw, locations = _load_yaml(DEFAULTS_FILE)
    _validate(raw, SCHEMA, locations, (), str(DEFAULTS_FILE))
    sources = [DEFAULTS_FILE]
    user = path if path is not None else (user_config_path() if use_user_file else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (given with --config)")
    if user is not None and user.is_file():
        data, lines = _load_yaml(user)
        _validate(data, SCHEMA, lines, (), str(user))
        _merge(raw, data)
        locations.update(lines)
        sources.append(user)
    if raw["default_model"] not in raw["models"]:
        raise ConfigError(
            f"{locations.get(('default_model',), 'config')}: default_model "
            f"'{raw['default_model']}' is not a declared model (declared: "
            f"{', '.join(sorted(raw['models']))})"
        )
    return Config(
        raw=raw,
        data_dir=resolve_data_dir(raw["data_dir"]),
        sources=sources,
        locations=locations,
    )
