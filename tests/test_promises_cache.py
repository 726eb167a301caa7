"""The embedding cache's promises: swapped weights never serve stale vectors, and the in-memory
level holds at most its byte limit, evicting the least recently used vector first."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import Engine
from engine.config import Config, load_config
from engine.embedding.cache import MemoryCache

DIM = 384
ROW_BYTES = DIM * 4


def config_with(tmp_path: Path, yaml_text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return load_config(path, use_user_file=False)


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def test_memory_cache_keeps_its_byte_limit_and_evicts_least_recent() -> None:
    cache = MemoryCache(3 * ROW_BYTES)
    for key in "abc":
        cache.put(key, vec(ord(key)))
    assert (len(cache), cache.nbytes) == (3, 3 * ROW_BYTES)
    assert cache.get("a") is not None  # now the most recently used
    cache.put("d", vec(4))
    assert cache.get("b") is None, "the least recently used entry goes first"
    assert all(cache.get(k) is not None for k in "acd")
    assert (len(cache), cache.nbytes) == (3, 3 * ROW_BYTES)

    cache.put("d", vec(5))  # replacing an entry counts its bytes once
    assert cache.nbytes == 3 * ROW_BYTES and np.array_equal(cache.get("d"), vec(5))
    cache.put("wide", np.zeros(2 * DIM, dtype=np.float32))  # 2 rows: evicts two entries
    assert cache.nbytes <= cache.max_bytes and cache.get("wide") is not None
    assert len(cache) == 2
    cache.put("huge", np.zeros(4 * DIM, dtype=np.float32))  # over the whole limit: not kept
    assert cache.get("huge") is None and cache.nbytes <= cache.max_bytes


async def test_service_memory_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    megabytes = 3 * ROW_BYTES / 2**20  # room for three MiniLM vectors
    config = config_with(tmp_path, f"embedding:\n  memory_cache_mb: {megabytes!r}\n")
    texts = [f"memory bound probe number {i}" for i in range(5)]
    async with Engine(config) as engine:
        service = engine.embeddings
        for text in texts:
            assert (await service.encode_detailed([text])).sources == ["model"]
        cache = service.snapshot()["cache"]
        assert cache["l1_max_bytes"] == 3 * ROW_BYTES
        assert (cache["l1_entries"], cache["l1_bytes"]) == (3, 3 * ROW_BYTES)
        assert service.disk is not None
        service.disk.flush()
        # The oldest two left memory and come back from disk; the newest is still in memory.
        assert (await service.encode_detailed(texts[:1])).sources == ["l2"]
        assert (await service.encode_detailed(texts[-1:])).sources == ["l1"]
        assert service.snapshot()["cache"]["l1_bytes"] <= 3 * ROW_BYTES


def perturb_one_weight(folder: Path) -> None:
    """Nudge a single bias every input passes through; everything else stays byte-identical."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = next(n for n in sorted(weights) if n.endswith("attention.output.dense.bias"))
    weights[name] = weights[name].copy()
    weights[name][0] += 0.5
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.slow  # loads a copy of the model three times
async def test_changed_weights_miss_the_cache(tmp_path: Path, minilm_dir: Path) -> None:
    folder = tmp_path / "model-copy"
    shutil.copytree(minilm_dir, folder)
    config = config_with(
        tmp_path,
        "default_model: local\n"
        "models:\n"
        "  local:\n"
        "    kind: sentence-transformers\n"
        f"    path: {folder}\n"
        # Torch only: an ONNX export per weights version would only slow the test down.
        "    onnx_small_batches: false\n",
    )
    text = ["the same text, embedded before and after the weights change"]

    async def encode() -> tuple[list[str], np.ndarray, str]:
        async with Engine(config) as engine:
            result = await engine.embeddings.encode_detailed(text)
            digest = (await engine.embeddings.model()).fingerprint.digest
            assert engine.embeddings.disk is not None
            engine.embeddings.disk.flush()
        return result.sources, result.vectors, digest

    sources, before, digest = await encode()
    assert sources == ["model"]
    sources, again, same_digest = await encode()
    assert sources == ["l2"] and same_digest == digest and np.array_equal(again, before)

    perturb_one_weight(folder)
    sources, after, new_digest = await encode()
    assert new_digest != digest
    assert sources == ["model"], "vectors of the old weights must not be served"
    assert not np.allclose(after, before, atol=1e-4)
