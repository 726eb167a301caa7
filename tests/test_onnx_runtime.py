"""Small batches on ONNX Runtime: same vectors as torch, export made once, damage repaired."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATASETS, REPO

from engine.config import load_config
from engine.models import ModelRegistry
from engine.models.onnx_runtime import MAX_PADDED_TOKENS


def scifact_queries(n: int) -> list[str]:
    with (DATASETS / "scifact" / "queries.jsonl").open() as fh:
        return [json.loads(line)["text"] for line, _ in zip(fh, range(n), strict=False)]


def registry_in(tmp_path: Path, extra: str = "") -> ModelRegistry:
    path = tmp_path / "c.yaml"
    path.write_text(f"cache_dir: {tmp_path / 'cache'}\n{extra}")
    return ModelRegistry(load_config(path))


def export_of(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "cache" / "onnx").glob("minilm-*/model.onnx")
    return found


async def test_short_batches_match_torch_and_long_rows_stay_on_torch(tmp_path: Path, st_minilm):
    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    queries = scifact_queries(40)
    singles = np.vstack([await model.encode([q]) for q in queries])
    assert model.info().small_batches.startswith("onnxruntime")
    assert export_of(tmp_path).stat().st_size > 50_000_000
    expected = st_minilm.encode(queries, normalize_embeddings=True)
    assert float(np.min(np.sum(singles * expected, axis=1))) > 0.99999
    runner = model._runner
    assert runner.encode_if_small(["many words in a long passage " * 30, "short"]) is None
    # Short rows of mixed lengths, more than one sub-batch: rows come back in input order.
    mixed = [q * (1 + i % 3) for i, q in enumerate(queries)] * 2
    assert sum(len(t.split()) for t in mixed) > MAX_PADDED_TOKENS
    batched = runner.encode_if_small(mixed)
    expected = st_minilm.encode(mixed, normalize_embeddings=True)
    assert batched is not None and batched.shape == expected.shape
    assert float(np.min(np.sum(batched * expected, axis=1))) > 0.99999
    await registry.close()


async def test_damaged_or_wrong_export_is_made_again(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    first = registry_in(tmp_path)
    await first.get("minilm").load()
    await first.close()
    target = export_of(tmp_path)
    good = target.read_bytes()

    # A valid graph whose weights are not the model's: loads, then fails the probe check.
    graph = onnx.load(str(target))
    big = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    big.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(big), big.name))
    onnx.save(graph, str(target))
    # Then a file ONNX Runtime cannot parse at all.
    for damage in (None, b"not an onnx file"):
        if damage is not None:
            target.write_bytes(damage)
        registry = registry_in(tmp_path)
        model = registry.get("minilm")
        await model.load()
        assert model.info().small_batches.startswith("onnxruntime")
        assert target.read_bytes() == good
        await registry.close()


async def test_opt_out_keeps_torch_and_writes_nothing(tmp_path: Path, minilm_dir: Path) -> None:
    registry = registry_in(
        tmp_path,
        "models:\n  minilm:\n    kind: sentence-transformers\n"
        f"    path: {minilm_dir}\n    onnx_small_batches: false\n",
    )
    model = registry.get("minilm")
    vectors = await model.encode(["a lone query"])
    assert vectors.shape == (1, 384)
    assert model.info().small_batches == "torch"
    assert not (tmp_path / "cache").exists()
    await registry.close()


@pytest.mark.parametrize("text", ["", "   ", "🚀" * 300])
async def test_odd_single_texts_match_torch(tmp_path: Path, st_minilm, text: str) -> None:
    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    (cut,) = model.truncate([text]).texts
    vector = await model.encode([cut])
    expected = st_minilm.encode([cut], normalize_embeddings=True)
    assert float(vector[0] @ expected[0]) > 0.99999
    await registry.close()


def test_embed_command_reports_runtime_and_caches(isolated_home: Path) -> None:
    def embed(*texts: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "tui.cli", "embed", *texts, "--json", "--vectors"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    first = embed("how do tides work")
    assert first["small_batches"].startswith("onnxruntime")
    assert (first["model"], first["dimension"]) == ("minilm", 384)
    second = embed("how do tides work", "a second text")
    assert [t["cache"] for t in second["texts"]] == ["l2", "miss"]
    assert second["texts"][0]["vector"] == first["texts"][0]["vector"]
