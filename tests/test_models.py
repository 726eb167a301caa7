"""Model registry: real packaged models, fingerprints, and clear errors for missing ones."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError, load_config
from engine.models import ModelError, ModelRegistry
from engine.models.sources import sha256_file


def registry_with(tmp_path: Path, models_yaml: str) -> ModelRegistry:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n" + models_yaml)
    return ModelRegistry(load_config(path))


def test_minilm_fingerprint_without_torch(config, minilm_dir: Path) -> None:
    registry = ModelRegistry(config)
    model = registry.get("minilm")
    fp = model.fingerprint
    assert (fp.dimension, fp.max_seq_length, fp.normalized) == (384, 256, True)
    assert fp.weights_digest == sha256_file(minilm_dir / "model.safetensors")
    assert registry.get("minilm") is model
    assert ModelRegistry(config).get("minilm").fingerprint.digest == fp.digest


def test_wrong_sha256_is_refused(tmp_path: Path, minilm_dir: Path) -> None:
    registry = registry_with(
        tmp_path,
        f"  bad:\n    kind: sentence-transformers\n    path: {minilm_dir}\n    sha256: abc\n",
    )
    with pytest.raises(ModelError, match="expected abc"):
        registry.get("bad")


def test_missing_package_names_install_command(tmp_path: Path) -> None:
    registry = registry_with(
        tmp_path, "  ghost:\n    kind: sentence-transformers\n    package: no_such_pkg\n"
    )
    status = registry.check("ghost")
    assert not status.available
    assert "pip install no-such-pkg" in status.reason
    with pytest.raises(ModelError, match=r"'ghost'.*not installed"):
        registry.get("ghost")


def test_missing_path_says_where_it_looked(tmp_path: Path) -> None:
    registry = registry_with(
        tmp_path, f"  local:\n    kind: sentence-transformers\n    path: {tmp_path}/none\n"
    )
    with pytest.raises(ModelError, match=r"none is not a sentence-transformers folder"):
        registry.get("local")


def test_hub_id_offline_fails_fast_with_fix(tmp_path: Path) -> None:
    registry = registry_with(
        tmp_path, "  hub:\n    kind: sentence-transformers\n    hub_id: someone/not-cached-model\n"
    )
    started = time.perf_counter()
    with pytest.raises(
        ModelError, match=r"not in the local Hugging Face cache.*allow_hub_downloads"
    ):
        registry.get("hub")
    assert time.perf_counter() - started < 10


def test_unknown_model_lists_declared(config) -> None:
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*minilm"):
        ModelRegistry(config).get("nope")


@pytest.mark.parametrize(
    ("yaml_text", "error", "message"),
    [
        (
            "  r:\n    kind: openai\n    model: m\n",
            ModelError,
            "missing base_url, api_key_env, dimensions",
        ),
        (
            "  r:\n    kind: sentence-transformers\n    package: a\n    path: b\n",
            ModelError,
            "exactly one of",
        ),
        # The config schema knows the kinds, so the file and line are named.
        ("  r:\n    kind: onnx\n", ConfigError, r"c\.yaml:3: 'models\.r\.kind' must be one of"),
    ],
)
def test_bad_model_declarations(
    tmp_path: Path, yaml_text: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry_with(tmp_path, yaml_text)


def test_openai_model_is_declared_and_validated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("REMOTE_KEY", raising=False)
    registry = registry_with(
        tmp_path,
        "  remote:\n    kind: openai\n    model: text-embedding-3-small\n"
        "    base_url: http://127.0.0.1:9/v1\n    api_key_env: REMOTE_KEY\n"
        "    price_per_1m_tokens: 0.02\n    dimensions: 1536\n",
    )
    status = registry.check("remote")
    assert status.dimension == 1536 and status.extra["price_per_1m_tokens"] == 0.02
    assert "$REMOTE_KEY is not set" in status.reason


async def test_mpnet_extracts_once_verifies_and_embeds(tmp_path: Path, models_dir: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"data_dir: {models_dir}\n")
    import os

    os.environ.pop("EMBEDSCOPE_HOME")
    registry = ModelRegistry(load_config(path))
    model = registry.get("mpnet")
    folder = models_dir / "models" / "all-mpnet-base-v2"
    assert (folder / "modules.json").is_file()
    assert not list(folder.rglob("desktop.ini"))
    assert model.dimension == 768
    vectors = await model.encode(["A man is playing a guitar.", "Someone plays an instrument."])
    assert vectors.shape == (2, 768)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > 0.5
    await registry.close()
