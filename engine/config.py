"""Configuration: documented defaults shipped with the package, overridden by one user YAML file.

Errors name the key, the file and the line, because a config typo should be a one-second fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_cache_dir, user_config_dir, user_data_dir

from engine.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import yaml

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
APP_NAME = "embedscope"


class ConfigError(ValueError):
    """A configuration file is unreadable or does not match the schema."""


@dataclass(frozen=True)
class Scalar:
    """A leaf of the schema: accepted Python types, and for numbers and names the values that
    make sense, so `hnsw_m: 0` fails at load with its line instead of deep inside a run."""

    types: tuple[type, ...]
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    pattern_text: str = ""

    def describe(self) -> str:
        names = " or ".join("number" if t is float else t.__name__ for t in self.types)
        return f"{names} or null" if self.nullable else names

    def range(
        self, *, ge: float | None = None, gt: float | None = None, le: float | None = None
    ) -> Scalar:
        return replace(self, ge=ge, gt=gt, le=le)

    def one_of(self, *choices: str) -> Scalar:
        return replace(self, choices=choices)

    def matching(self, pattern: str, text: str) -> Scalar:
        return replace(self, pattern=pattern, pattern_text=text)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the right type, in words; None when nothing is."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.pattern and isinstance(value, str) and not re.fullmatch(self.pattern, value):
            return f"must be {self.pattern_text}"
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        bounds = []
        if self.gt is not None:
            bounds.append(f"> {self.gt:g}")
        if self.ge is not None:
            bounds.append(f">= {self.ge:g}")
        if self.le is not None:
            bounds.append(f"<= {self.le:g}")
        low_ok = (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
        if low_ok and (self.le is None or value <= self.le):
            return None
        return "must be " + " and ".join(bounds)


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
OPT_INT = Scalar((int,), nullable=True)
# Request limits are counts SQLite and FAISS take as 32- or 64-bit ints: keep them well inside.
LIMIT_CEILING = 2**31 - 1

# Every value range and enum lives in this table; the code that reads a key can trust it.
MODEL_SCHEMA: dict[str, Any] = {
    "kind": STR.one_of("sentence-transformers", "model2vec", "openai"),
    "description": STR,
    "package": STR,
    "parts": ListOf(STR),
    "parts_folder": STR,
    "path": STR,
    "hub_id": STR,
    "sha256": STR,
    "max_seq_length": INT.range(ge=1, le=1_000_000),
    "trust_remote_code": BOOL,
    "model": STR,
    "base_url": STR,
    "api_key_env": STR,
    "price_per_1m_tokens": NUM.range(ge=0),
    "dimensions": INT.range(ge=1, le=65_536),
    # kind openai: request shape, resilience and token counting (see defaults.yaml).
    "send_dimensions": BOOL,
    "api_version": STR,
    "tokenizer": STR,
    "max_input_tokens": INT.range(ge=8, le=1_000_000),
    "timeout_s": NUM.range(gt=0, le=3600),
    "max_inputs_per_request": INT.range(ge=1, le=100_000),
    "max_tokens_per_request": INT.range(ge=1),
    "max_concurrent_requests": INT.range(ge=1, le=256),
    "encoding_format": STR.one_of("base64", "float"),
    "max_retries": INT.range(ge=0, le=100),
    "retry_deadline_s": NUM.range(gt=0),
    "backoff_initial_s": NUM.range(ge=0),
    "backoff_max_s": NUM.range(ge=0),
    "breaker_failures": INT.range(ge=1),
    "breaker_cooldown_s": NUM.range(ge=0),
    "distill_from": STR,
    "pca_dims": INT.range(ge=1, le=65_536),
    "onnx_small_batches": BOOL,
    "quantize": STR.one_of("int8"),
}

FAISS_SCHEMA: dict[str, Any] = {
    "type": STR.one_of("auto", "flat", "hnsw", "ivf"),
    "auto_hnsw_threshold": INT.range(ge=0),
    "hnsw_m": INT.range(ge=2, le=512),
    "hnsw_ef_search": INT.range(ge=1, le=1_000_000),
    "hnsw_ef_construction": INT.range(ge=1, le=1_000_000),
    "ivf_nlist": OPT_INT.range(ge=1, le=1_000_000),
    "ivf_nprobe": INT.range(ge=1, le=1_000_000),
    "exact_candidate_limit": INT.range(ge=0, le=LIMIT_CEILING),
}

SCHEMA: dict[str, Any] = {
    "data_dir": OPT_STR,
    "cache_dir": OPT_STR,
    "device": STR.matching(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N"),
    "allow_hub_downloads": BOOL,
    "default_model": STR,
    "models": MapOf(MODEL_SCHEMA),
    "embedding": {
        "max_batch_size": INT.range(ge=1, le=65_536),
        "max_wait_ms": NUM.range(ge=0, le=60_000),
        "max_queue": INT.range(ge=1),
        "memory_cache_mb": NUM.range(ge=0),
        "disk_cache_mb": NUM.range(ge=0),
        "disk_cache_ttl_s": OPT_NUM.range(gt=0),
    },
    "index": {
        "backend": STR.one_of("faiss", "milvus"),
        "faiss": FAISS_SCHEMA,
        "milvus": {
            "uri": STR.matching(r"(https?|tcp|grpc)://\S+", "a URI like http://127.0.0.1:19530"),
            "token": STR,
            "consistency": STR.one_of("Session", "Strong"),
            "hnsw_m": INT.range(ge=2, le=2048),
            "hnsw_ef_construction": INT.range(ge=1, le=65_536),
            "ef_search": INT.range(ge=1, le=16_384),
            "timeout_s": NUM.range(gt=0, le=3600),
        },
        # The FAISS keys of older configs, before they moved under index.faiss (still read).
        **FAISS_SCHEMA,
        # The chunker needs 8 tokens to find a break; overlap is checked against it below.
        "chunk_tokens": OPT_INT.range(ge=8),
        "chunk_overlap": INT.range(ge=0),
        "rrf_k": INT.range(ge=1),
        "max_restore_gb": NUM.range(gt=0),
    },
    "use_cases": MapOf(
        {
            "accuracy": NUM.range(ge=0),
            "latency": NUM.range(ge=0),
            "memory": NUM.range(ge=0),
            "cost": NUM.range(ge=0),
            "description": STR,
        }
    ),
    "documents": {
        "max_file_mb": NUM.range(gt=0, le=100_000),
        "max_metadata_depth": INT.range(ge=1, le=100),
        "max_metadata_kb": NUM.range(gt=0, le=1_048_576),
        "max_yaml_aliases": INT.range(ge=0, le=1_000_000),
        "max_yaml_nodes": INT.range(ge=1, le=100_000_000),
        "include": ListOf(STR),
        "exclude": ListOf(STR),
        "csv_text_column": STR,
        "csv_id_column": STR,
        "csv_title_column": STR,
    },
    # Read by engine/limits.py (request bounds).
    "limits": {
        "max_k": INT.range(ge=1, le=LIMIT_CEILING),
        "max_query_chars": INT.range(ge=1, le=LIMIT_CEILING),
        "max_filters": INT.range(ge=1, le=LIMIT_CEILING),
        "max_filter_chars": INT.range(ge=1, le=LIMIT_CEILING),
        "max_embed_texts": INT.range(ge=1, le=LIMIT_CEILING),
        "max_text_chars": INT.range(ge=1, le=LIMIT_CEILING),
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


def _parse_trusted(text: str) -> tuple[Any, yaml.Node | None]:
    """The package's own defaults, which no user writes: libyaml parses them in ~1 ms where the
    limit-counting pure-Python loader takes 20-40 ms of every cold command. A user's file
    always goes through the limits."""
    import yaml

    from engine.safeyaml import load as load_yaml

    if not yaml.__with_libyaml__:
        return load_yaml(text)
    loader = yaml.CSafeLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def _load_yaml(
    path: Path, *, trusted: bool = False
) -> tuple[dict[str, Any], dict[tuple[str, ...], Location]]:
    """Parse YAML keeping the line of every key, so later checks can point at it."""
    import yaml

    from engine.safeyaml import YamlLimitError
    from engine.safeyaml import load as load_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid UTF-8 at byte {exc.start} (save the config file as UTF-8)"
        ) from None
    try:
        data, node = _parse_trusted(text) if trusted else load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or exc
        kind = "YAML refused" if isinstance(exc, YamlLimitError) else "invalid YAML"
        raise ConfigError(f"{where}: {kind}: {problem}") from None
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
        if problem := schema.problem(value):
            raise ConfigError(f"{where}: '{dotted}' {problem}, got {value!r}")
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
    def index_backend(self) -> str:
        """The vector store new indexes are built on (an index keeps the one it was built on)."""
        return str(self.raw["index"]["backend"])

    def store_settings(self, backend: str) -> dict[str, Any]:
        """``index.faiss`` or ``index.milvus``: the settings the store factory takes."""
        return dict(self.raw["index"][backend])

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


def _defaults() -> tuple[dict[str, Any], dict[tuple[str, ...], Location]]:
    """The package's defaults. Their parse is kept as JSON in `__pycache__`, named by a hash of
    the file's bytes, so a command without a user file imports no YAML parser (PyYAML's import
    is ~30 ms of a cold command). No cache, or no right to write one, only costs the parse."""
    text = DEFAULTS_FILE.read_bytes()
    digest = hashlib.sha256(text).hexdigest()[:16]
    cached = DEFAULTS_FILE.parent / "__pycache__" / f"{DEFAULTS_FILE.stem}.{digest}.json"
    where = str(DEFAULTS_FILE)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(cached.read_bytes())
        lines = {tuple(key): Location(where, int(line)) for key, line in saved["lines"]}
        return dict(saved["raw"]), lines
    raw, locations = _load_yaml(DEFAULTS_FILE, trusted=True)
    payload = {"raw": raw, "lines": [[list(k), loc.line] for k, loc in locations.items()]}
    try:
        encoded = json.dumps(payload).encode()
    except (TypeError, ValueError):  # a date, say, which JSON cannot hold
        return raw, locations
    # Only what JSON gives back unchanged is kept (an integer key would come back a string).
    if not sys.dont_write_bytecode and json.loads(encoded)["raw"] == raw:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(exist_ok=True)
            atomic_write_bytes(cached, encoded)
    return raw, locations


def load_config(path: Path | None = None, *, use_user_file: bool = True) -> Config:
    """Defaults, then the user file (or `path`), validated against the schema."""
    raw, locations = _defaults()
    _validate(raw, SCHEMA, locations, (), str(DEFAULTS_FILE))
    sources = [DEFAULTS_FILE]
    user = _user_file(path, use_user_file)
    if user is not None:
        data, lines = _load_yaml(user)
        _validate(data, SCHEMA, lines, (), str(user))
        _nest_faiss_keys(data, lines)
        _merge(raw, data)
        locations.update(lines)
        sources.append(user)
    _check_relations(raw, locations)
    env = os.environ.get("EMBEDSCOPE_HOME")
    data_dir = resolve_data_dir(raw["data_dir"])
    _check_folder(data_dir, f"EMBEDSCOPE_HOME={env}" if env else _at(locations, "data_dir"))
    if raw["cache_dir"]:
        _check_folder(Path(raw["cache_dir"]).expanduser(), _at(locations, "cache_dir"))
    return Config(raw=raw, data_dir=data_dir, sources=sources, locations=locations)


def _nest_faiss_keys(
    data: dict[str, Any], lines: dict[tuple[str, ...], Location]
) -> None:
    """Move an older file's flat FAISS keys (``index.hnsw_m``) under ``index.faiss``; a key the
    same file also sets under ``index.faiss`` wins."""
    section = data.get("index")
    if not isinstance(section, dict):
        return
    flat = [key for key in FAISS_SCHEMA if key in section]
    if not flat:
        return
    nested = section.setdefault("faiss", {})
    for key in flat:
        value = section.pop(key)
        if key not in nested:
            nested[key] = value
            if ("index", key) in lines:
                lines[("index", "faiss", key)] = lines[("index", key)]


def _user_file(path: Path | None, use_user_file: bool) -> Path | None:
    """The file to read over the defaults, if any; `--config` must name an existing file."""
    if path is None:
        user = user_config_path() if use_user_file else None
        if user is None or not user.exists():
            return None
        if user.is_dir():
            raise ConfigError(f"{user} is a folder, not a config file; remove or rename it")
        return user
    if path.is_dir():
        raise ConfigError(
            f"--config {path} is a folder; give the config file itself "
            f"(e.g. {path / 'config.yaml'})"
        )
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (given with --config)")
    return path


def _at(locations: Mapping[tuple[str, ...], Location], *key: str) -> str:
    loc = locations.get(key)
    return f"{loc}: '{'.'.join(key)}'" if loc else f"'{'.'.join(key)}'"


def _check_relations(raw: Mapping[str, Any], locations: Mapping[tuple[str, ...], Location]) -> None:
    """Checks that involve two keys, reported at the line of the one that is usually wrong."""
    if raw["default_model"] not in raw["models"]:
        raise ConfigError(
            f"{locations.get(('default_model',), 'config')}: default_model "
            f"'{raw['default_model']}' is not a declared model (declared: "
            f"{', '.join(sorted(raw['models']))})"
        )
    tokens, overlap = raw["index"]["chunk_tokens"], raw["index"]["chunk_overlap"]
    if tokens is not None and overlap > tokens // 2:
        raise ConfigError(
            f"{_at(locations, 'index', 'chunk_overlap')} is {overlap}, more than half of "
            f"index.chunk_tokens ({tokens}, {_at(locations, 'index', 'chunk_tokens')}); "
            f"use at most {tokens // 2}"
        )


def _check_folder(path: Path, origin: str) -> None:
    """A data or cache dir must be a folder or creatable as one; else say which setting to fix.

    Only what can be known now is checked (a file in the way); permissions are left to the
    command, since a read-only data dir is fine for reading."""
    for candidate in (path, *path.parents):
        try:
            if not candidate.exists():
                continue
        except OSError:
            return
        if candidate.is_dir():
            return
        where = "is a file" if candidate == path else f"is inside {candidate}, which is a file"
        raise ConfigError(
            f"{origin}: {path} {where}, not a folder; point it at a folder "
            "(it is created if missing)"
        )
