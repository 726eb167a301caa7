"""Configuration: defaults, user overrides, and errors that name key, file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, load_config, user_config_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_load_and_data_dir_follows_env(isolated_home: Path) -> None:
    config = load_config(use_user_file=False)
    assert config.default_model == "minilm"
    assert set(config.models) >= {"minilm", "mpnet"}
    assert config.embedding.max_batch_size == 32
    assert config.data_dir == isolated_home


def test_user_file_in_platform_config_dir_is_read(isolated_home: Path) -> None:
    path = user_config_path()
    path.parent.mkdir(parents=True)
    path.write_text("embedding:\n  max_batch_size: 8\n")
    config = load_config()
    assert config.embedding.max_batch_size == 8
    assert config.embedding.max_wait_ms == 5
    assert path in config.sources


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "device: cpu\nembedding:\n  max_batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}:3" in msg
    assert "max_batch_sise" in msg and "max_batch_size" in msg


def test_wrong_type_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "\n\nembedding:\n  max_wait_ms: soon\n")
    with pytest.raises(ConfigError, match=r"config.yaml:4: 'embedding.max_wait_ms' must be"):
        load_config(path)


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    path = write(tmp_path, "embedding:\n  max_batch_size: true\n")
    with pytest.raises(ConfigError, match="max_batch_size"):
        load_config(path)


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "device: cpu\nmodels: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: invalid YAML"):
        load_config(path)


def test_missing_config_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_model_entries_replace_whole(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  minilm:\n    kind: sentence-transformers\n    path: /x\n")
    config = load_config(path)
    assert config.models["minilm"] == {"kind": "sentence-transformers", "path": "/x"}
    assert "mpnet" in config.models


def test_default_model_must_be_declared(tmp_path: Path) -> None:
    path = write(tmp_path, "default_model: nothere\n")
    with pytest.raises(ConfigError, match=r"config.yaml:1: default_model 'nothere'"):
        load_config(path)


def test_data_dir_from_file_unless_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"data_dir: {tmp_path / 'd'}\n")
    assert load_config(path).data_dir != tmp_path / "d"
    monkeypatch.delenv("EMBEDSCOPE_HOME")
    assert load_config(path).data_dir == tmp_path / "d"
