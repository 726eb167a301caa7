"""minilm-int8: quantised once from the verified fp32 export, checked against fp32 before use,
and quantised again (without torch) when its weights no longer match their checksum."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.engine import Engine
from engine.models.onnx_runtime import GRAPH, RECORD, WEIGHTS
from engine.models.quantized import INT8_DIR, MIN_MEAN_COSINE

TEXTS = [
    "why does the sea go up and down",
    "Sourdough bread needs a lively starter, a long proof and a very hot oven.",
    " ".join(["Index funds spread money over many stocks; bonds pay fixed interest."] * 8),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # ~25 s: the fp32 export (torch) and two quantisations
async def test_int8_is_verified_against_fp32_and_made_again_when_tampered(
    config, st_minilm
) -> None:
    async with Engine(config) as engine:
        vectors = await engine.embeddings.encode(TEXTS, "minilm-int8")
        model = await engine.embeddings.model("minilm-int8")
        fp32 = await engine.embeddings.model("minilm")
        info = model.info()
        digest = model.fingerprint.digest
    assert digest != fp32.fingerprint.digest, "int8 vectors must never share fp32's cache keys"
    assert info.small_batches.startswith("onnxruntime int8") and info.device == "cpu"

    (folder,) = config.cache_dir.glob(f"onnx/minilm-int8-{digest[:16]}")
    int8 = folder / INT8_DIR
    record = json.loads((int8 / RECORD).read_text())
    assert record["ok"] and record["fingerprint"] == digest
    assert record["mean_cosine"] >= MIN_MEAN_COSINE == record["min_mean_cosine"]
    assert record["files"] == {GRAPH: sha256(int8 / GRAPH), WEIGHTS: sha256(int8 / WEIGHTS)}
    assert record["source_files"] == json.loads((folder / RECORD).read_text())["files"]
    # MatMul weights in int8; the word embeddings (a Gather, half of MiniLM) stay fp32.
    assert (int8 / WEIGHTS).stat().st_size < 0.7 * (folder / WEIGHTS).stat().st_size

    # Against torch itself, on texts the check never saw: close, and not fp32's vectors.
    expected = st_minilm.encode(TEXTS, normalize_embeddings=True)
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.mean() >= 0.98 and cosines.min() < 0.99999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    # Same size and mtime, one weight changed: only the checksum can tell.
    weights = int8 / WEIGHTS
    good, stat = weights.read_bytes(), weights.stat()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x40
    weights.write_bytes(bytes(damaged))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    async with Engine(config) as engine:
        again = await engine.embeddings.encode_detailed(TEXTS, "minilm-int8", use_cache=False)
        remade = (await engine.embeddings.model("minilm-int8")).info()
    assert remade.extra["torch_load_seconds"] is None, "made again from the fp32 export alone"
    assert sha256(weights) != hashlib.sha256(bytes(damaged)).hexdigest()
    assert json.loads((int8 / RECORD).read_text())["files"][WEIGHTS] == sha256(weights)
    assert np.sum(again.vectors * vectors, axis=1).min() > 0.9999
