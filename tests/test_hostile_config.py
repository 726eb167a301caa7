"""Hostile config files: every bad value, nesting, alias loop or alias bomb is refused at load with
the key, the file and the line; a data dir that is a file and a `--config` folder get a clear
message from the CLI, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from engine.config import SCHEMA, ConfigError, MapOf, Scalar, load_config

PADDING = "# a user config\n\nallow_hub_downloads: false\n"  # the bad key is never on line 1


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def nested(key: tuple[str, ...], value: str) -> tuple[str, int]:
    """YAML setting `key` to `value` after PADDING, and the line the last key is on."""
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(key[:-1])]
    lines.append(f"{'  ' * (len(key) - 1)}{key[-1]}: {value}")
    return PADDING + "\n".join(lines) + "\n", PADDING.count("\n") + len(key)


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (("index", "type"), "bogus", "must be one of auto, flat, hnsw, ivf"),
        (("embedding", "max_batch_size"), "-5", "must be >= 1"),
        (("index", "rrf_k"), "-60", "must be >= 1"),
        (("index", "hnsw_m"), "0", "must be >= 2"),
        (("documents", "max_file_mb"), "-1", "must be > 0"),
        (("documents", "max_file_mb"), "0", "must be > 0"),
        (("embedding", "max_wait_ms"), ".inf", "must be a finite number"),
        (("embedding", "disk_cache_ttl_s"), "0", "must be > 0"),
        (("index", "ivf_nlist"), "0", "must be >= 1"),
        (("index", "chunk_tokens"), "5", "must be >= 8"),
        (("documents", "max_metadata_depth"), "5000", "must be >= 1 and <= 100"),
        (("device",), "gpu", "must be auto, cpu, mps, cuda or cuda:N"),
        (("models", "mine", "kind"), "bogus", "must be one of sentence-transformers"),
        (("use_cases", "mine", "accuracy"), "-1", "must be >= 0"),
    ],
)
def test_bad_value_names_key_file_and_line(
    tmp_path: Path, key: tuple[str, ...], value: str, expected: str
) -> None:
    text, line = nested(key, value)
    msg = refused(write(tmp_path, text))
    assert msg.startswith(f"{tmp_path / 'config.yaml'}:{line}: '{'.'.join(key)}' ")
    assert expected in msg and value.lstrip(".") in msg


def leaves(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple, Scalar]]:
    """Every scalar key of the schema; entries of a named map (models, use cases) as `x`."""
    out: list[tuple[tuple, Scalar]] = []
    for name, sub in schema.items():
        key = (*prefix, name)
        if isinstance(sub, MapOf):
            out += leaves(sub.value, (*key, "x"))
        elif isinstance(sub, dict):
            out += leaves(sub, key)
        elif isinstance(sub, Scalar):
            out.append((key, sub))
    return out


NUMERIC = [(k, s) for k, s in leaves(SCHEMA) if int in s.types]


def test_every_numeric_key_has_a_lower_bound() -> None:
    unbounded = [".".join(k) for k, s in NUMERIC if s.ge is None and s.gt is None]
    assert not unbounded


@pytest.mark.parametrize(("key", "scalar"), NUMERIC, ids=[".".join(k) for k, _ in NUMERIC])
def test_every_numeric_key_refuses_out_of_range(
    tmp_path: Path, key: tuple[str, ...], scalar: Scalar
) -> None:
    low = scalar.gt if scalar.gt is not None else scalar.ge - 1
    values = [low, *([scalar.le + 1] if scalar.le is not None else [])]
    for value in values:
        shown = str(int(value)) if float(value).is_integer() else str(value)
        text, line = nested(key, shown)
        msg = refused(write(tmp_path, text))
        assert msg.startswith(f"{tmp_path / 'config.yaml'}:{line}: '{'.'.join(key)}' must be")


def test_overlap_more_than_half_the_chunk_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, PADDING + "index:\n  chunk_tokens: 40\n  chunk_overlap: 32\n")
    msg = refused(path)
    assert msg.startswith(f"{path}:6: 'index.chunk_overlap' is 32")
    assert f"{path}:5: 'index.chunk_tokens'" in msg and "at most 20" in msg


def test_deep_config_is_refused_with_its_line(tmp_path: Path) -> None:
    deep = "".join(f"{'  ' * i}k{i}:\n" for i in range(1000)) + "  " * 1000 + "v\n"
    path = write(tmp_path, PADDING + deep)
    msg = refused(path)
    assert msg.startswith(f"{path}:") and "nested deeper than 32 levels" in msg
    line = int(msg.split(":")[1])
    assert 4 < line < 50  # where the nesting passed the limit, not the end of the file


def test_self_referencing_alias_in_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, PADDING + "models: &a [*a]\n")
    assert refused(path).startswith(f"{path}:4: YAML refused: alias *a is inside its own anchor")


def billion_laughs(levels: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOUNDED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
sys.argv = ["embedscope", *sys.argv[1:]]
from tui.cli import main
sys.exit(main())
"""


def embedscope(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script, in a process whose address space is capped at 3 GiB: a bomb
    that gets through fails with MemoryError instead of eating the machine."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BOUNDED), *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def clean_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2 and one line on stderr, naming the command: no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("embedscope info: ")
    return proc.stderr


@pytest.mark.parametrize("levels", [7, 9])
def test_billion_laughs_config_is_refused_with_bounded_memory(tmp_path: Path, levels: int) -> None:
    path = write(tmp_path, billion_laughs(levels))
    err = clean_failure(embedscope("--config", str(path), "info"))
    assert f"{path}:" in err and "expands to more than" in err


def test_cli_config_errors_are_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, nested(("index", "hnsw_m"), "0")[0])
    assert f"{bad}:5: 'index.hnsw_m' must be >= 2" in clean_failure(
        embedscope("--config", str(bad), "info")
    )
    deep = write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    assert f"{deep}:1: YAML refused: nested deeper" in clean_failure(
        embedscope("--config", str(deep), "info")
    )
    folder = tmp_path / "conf.d"
    folder.mkdir()
    err = clean_failure(embedscope("--config", str(folder), "info"))
    assert f"--config {folder} is a folder; give the config file itself" in err


def test_data_dir_that_is_a_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = write(tmp_path, "not a folder", "home")
    err = clean_failure(embedscope("info", env={"EMBEDSCOPE_HOME": str(file)}))
    assert f"EMBEDSCOPE_HOME={file}: {file} is a file, not a folder" in err
    below = file / "data"
    err = clean_failure(embedscope("info", env={"EMBEDSCOPE_HOME": str(below)}))
    assert f"{below} is inside {file}, which is a file" in err
    config = write(tmp_path, f"{PADDING}data_dir: {file}\n")
    monkeypatch.delenv("EMBEDSCOPE_HOME")
    assert refused(config).startswith(f"{config}:4: 'data_dir': {file} is a file, not a folder")


def test_config_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"device: cpu\n# caf\xe9\n")
    assert refused(path) == f"{path}: not valid UTF-8 at byte 17 (save the config file as UTF-8)"


def test_good_config_with_an_alias_still_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "use_cases:\n  a: &w {accuracy: 1, latency: 0, memory: 0, cost: 0}\n  b: *w\n"
        "documents:\n  max_metadata_depth: 8\n  max_file_mb: 0.5\n",
    )
    config = load_config(path)
    assert config.raw["use_cases"]["b"]["accuracy"] == 1
    assert config.documents["max_metadata_depth"] == 8
