"""Small batches on ONNX Runtime: same vectors as torch, export made once, damage repaired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATASETS, REPO, python_json

from engine.config import load_config
from engine.models import ModelRegistry
from engine.models.onnx_runtime import MAX_PADDED_TOKENS, MAX_ROW_TOKENS, RECORD, WEIGHTS


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
    assert (export_of(tmp_path).parent / WEIGHTS).stat().st_size > 50_000_000
    record = json.loads((export_of(tmp_path).parent / RECORD).read_text())
    assert record["ok"] and record["probe_min_cosine"] > 0.9999
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


def torch_loaded(model) -> bool:
    return model.info().extra["torch_load_seconds"] is not None


def negate_weights(path: Path) -> None:
    """Valid floats, wrong values: the graph loads and runs, its vectors are wrong. Size and
    mtime are put back, so only the checksum can tell."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    start = len(data) // 2 & ~3
    middle = np.frombuffer(data, dtype=np.float32, count=1 << 18, offset=start)
    data[start : start + middle.nbytes] = (-middle).tobytes()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


async def test_verified_export_loads_without_torch_and_damage_is_made_again(
    tmp_path: Path,
) -> None:
    first = registry_in(tmp_path)
    made = first.get("minilm")
    await made.encode(["the first load makes the export"])
    assert torch_loaded(made)
    await first.close()
    graph = export_of(tmp_path)
    weights = graph.parent / WEIGHTS
    good = {p: p.read_bytes() for p in (graph, weights)}

    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    await model.encode(["a later load checks checksums, not torch"])
    assert model.info().small_batches.startswith("onnxruntime")
    assert not torch_loaded(model)
    await registry.close()

    for damage in (lambda: negate_weights(weights), lambda: graph.write_bytes(b"not onnx")):
        damage()
        assert any(p.read_bytes() != content for p, content in good.items())
        registry = registry_in(tmp_path)
        model = registry.get("minilm")
        await model.encode(["after damage"])
        assert model.info().small_batches.startswith("onnxruntime")
        assert torch_loaded(model)
        assert all(p.read_bytes() == content for p, content in good.items())
        await registry.close()


async def test_failed_check_is_recorded_and_retried_after_an_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.models import onnx_runtime

    monkeypatch.setattr(onnx_runtime, "MIN_PROBE_COSINE", 1.5)
    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    await model.encode(["no cosine reaches 1.5"])
    assert "differs from torch" in model.info().small_batches
    await registry.close()
    (folder,) = (tmp_path / "cache" / "onnx").glob("minilm-*")
    record_file = folder / RECORD
    assert not json.loads(record_file.read_text())["ok"]
    assert not (folder / WEIGHTS).exists()

    # Same versions: the failure stands, and no export is tried again.
    monkeypatch.undo()
    stamp = record_file.stat().st_mtime_ns
    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    await model.encode(["straight to torch"])
    assert "differs from torch" in model.info().small_batches
    assert record_file.stat().st_mtime_ns == stamp and not (folder / WEIGHTS).exists()
    await registry.close()

    record = json.loads(record_file.read_text())
    record["versions"]["onnxruntime"] = "0.0.1"
    record_file.write_text(json.dumps(record))
    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    await model.encode(["an upgrade earns another try"])
    assert model.info().small_batches.startswith("onnxruntime")
    assert json.loads(record_file.read_text())["ok"]
    await registry.close()


async def test_long_batches_run_on_onnx_until_torch_pays(
    tmp_path: Path, st_minilm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.models import local

    first = registry_in(tmp_path)
    await first.get("minilm").load()
    await first.close()
    registry = registry_in(tmp_path)
    model = registry.get("minilm")
    passages = [" ".join(q.split() * 40) for q in scifact_queries(6)]
    cut = model.truncate(passages).texts
    assert min(model.truncate(cut).token_counts) > MAX_ROW_TOKENS
    on_onnx = await model.encode(cut)
    assert not torch_loaded(model)
    monkeypatch.setattr(local, "TORCH_AFTER_S", 0.0)
    on_torch = await model.encode(cut[::-1])
    assert torch_loaded(model)
    expected = st_minilm.encode(cut, normalize_embeddings=True)
    assert float(np.min(np.sum(on_onnx * expected, axis=1))) > 0.99999
    assert float(np.min(np.sum(on_torch[::-1] * expected, axis=1))) > 0.99999
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


ARENA_CHILD = """
import asyncio, json, os, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_onnx_runtime import registry_in, scifact_queries

def rss_bytes():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def main():
    registry = registry_in(Path(sys.argv[1]))
    model = registry.get("minilm")
    await model.load()
    runner = model._runner
    passages = [" ".join(q.split() * 40) for q in scifact_queries(32)]
    before = runner.encode(passages)
    grown = rss_bytes()
    runner.release_arena()
    released = rss_bytes()
    again = runner.encode(passages)
    await registry.close()
    cosine = float(np.min(np.sum(again * before, axis=1)))
    print(json.dumps({"grown": grown, "released": released, "cosine": cosine}))

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_releasing_the_arena_returns_long_batches_memory(tmp_path: Path) -> None:
    """When torch takes long batches over, the ONNX arena gives back what long rows grew it to,
    so the two runtimes' working memory does not add up in an indexing run's peak.

    In a fresh process, as an indexing run is: inside the test session (2 GB of earlier tests'
    heap) the same steps gave back only 12 MB once, and 70 MB alone."""
    out = python_json(ARENA_CHILD, str(tmp_path), str(Path(__file__).parent), timeout=600)
    assert out["grown"] - out["released"] > 20 * 2**20, out
    assert out["cosine"] > 0.99999
