"""The static (model2vec) tier: distilled offline from MiniLM once, then served from disk."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from engine.config import Config, ConfigError, load_config
from engine.models import ModelError, ModelRegistry
from engine.models.sources import sha256_file


def registry_at(data_dir: Path) -> ModelRegistry:
    config = load_config(use_user_file=False)
    return ModelRegistry(dataclasses.replace(config, data_dir=data_dir))


def registry_with(tmp_path: Path, models_yaml: str) -> ModelRegistry:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n" + models_yaml)
    return ModelRegistry(load_config(path))


def test_check_says_distilled_on_first_use_without_distilling(config: Config) -> None:
    registry = ModelRegistry(config)
    status = registry.check("minilm-static")
    assert status.available, status.reason
    assert (status.kind, status.dimension) == ("model2vec", 256)
    assert "distilled on first use from minilm" in status.reason
    assert not (config.data_dir / "models" / "minilm-static").exists()


def test_unavailable_source_makes_static_unavailable(tmp_path: Path) -> None:
    registry = registry_with(
        tmp_path,
        "  ghost:\n    kind: sentence-transformers\n    package: no_such_pkg\n"
        "  ghost-static:\n    kind: model2vec\n    distill_from: ghost\n",
    )
    status = registry.check("ghost-static")
    assert not status.available
    assert "source model 'ghost' is unavailable" in status.reason
    assert "pip install no-such-pkg" in status.reason


@pytest.mark.parametrize(
    ("yaml_text", "error", "message"),
    [
        ("  s:\n    kind: model2vec\n", ModelError, r"needs distill_from.*got None"),
        (
            "  s:\n    kind: model2vec\n    distill_from: nope\n",
            ModelError,
            r"needs distill_from.*'nope'",
        ),
        (
            "  s:\n    kind: model2vec\n    distill_from: minilm\n    pca_dims: 0\n",
            ConfigError,
            r"c\.yaml:8: 'models\.s\.pca_dims' must be >= 1",
        ),
    ],
)
def test_bad_static_declarations(
    tmp_path: Path, yaml_text: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry_with(
            tmp_path, "  minilm:\n    kind: sentence-transformers\n    package: x\n" + yaml_text
        )


@pytest.fixture(scope="session")
def static_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One distillation for the whole session (11-14 s on a quiet 2-core machine)."""
    home = tmp_path_factory.mktemp("static")
    registry = registry_at(home)
    started = time.perf_counter()
    registry.get("minilm-static")
    print(f"\ndistilled minilm-static in {time.perf_counter() - started:.1f}s")
    return home


@pytest.mark.slow
async def test_static_model_embeds_and_ranks(static_home: Path, minilm_dir: Path) -> None:
    registry = registry_at(static_home)
    model = registry.get("minilm-static")
    folder = static_home / "models" / "minilm-static"
    record = json.loads((folder / "distill.json").read_text())
    assert record["pca_dims"] == 256
    assert record["source_weights_digest"] == sha256_file(minilm_dir / "model.safetensors")
    assert model.fingerprint.weights_digest == sha256_file(folder / "model.safetensors")
    assert model.fingerprint.dimension == 256

    texts = [
        "The cat sat on the mat.",
        "A kitten is sitting on a rug.",
        "Quarterly interest rates rose sharply at the central bank.",
    ]
    vectors = await model.encode(model.truncate(texts).texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1

    # Its speed against MiniLM is measured by benchmarks/bench_search.py (static_query_speedup).
    info = model.info()
    assert info.loaded and info.parameters is not None and info.parameters % 256 == 0
    assert info.extra["distill_from"] == "minilm"
    await registry.close()


@pytest.mark.slow
async def test_truncation_caps_long_texts(static_home: Path) -> None:
    registry = registry_at(static_home)
    model = registry.get("minilm-static")
    long_text = " ".join(["photosynthesis"] * 600)
    cut = model.truncate([long_text, "short text"])
    assert cut.truncated == 1
    assert cut.token_counts[0] > 512 and cut.token_counts[1] < 5
    assert cut.texts[1] == "short text"
    again = model.truncate([cut.texts[0]])
    assert again.truncated == 0 and again.token_counts[0] == 512
    vectors = await model.encode(cut.texts)
    assert vectors.shape == (2, 256)
    await registry.close()


@pytest.mark.slow
def test_second_registry_reuses_the_distilled_folder(static_home: Path) -> None:
    folder = static_home / "models" / "minilm-static"
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    record = (folder / "distill.json").read_text()
    registry = registry_at(static_home)
    assert registry.check("minilm-static").reason == "ready"
    model = registry.get("minilm-static")
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert (folder / "distill.json").read_text() == record
    assert model.fingerprint.weights_digest == sha256_file(folder / "model.safetensors")
