"""A cold command answers a query without torch, and without what only indexing needs; it trusts
the ONNX export only while its checksums hold. How fast it starts is measured by
benchmarks/bench_cli.py, not here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO

from engine import config as config_module
from engine.models.onnx_runtime import GRAPH, RECORD, WEIGHTS

TORCH = ("torch", "sentence_transformers", "transformers")
# What a search has no use for, each ~10-50 ms to import: folder walking, loaders and chunking
# (indexing only), numpy's masked arrays (which np.unique and np.median pull in), statistics, and
# a YAML parser when there is no user config file (the defaults' parse is cached).
INDEX_ONLY = ("pathspec", "engine.documents", "numpy.ma", "statistics", "yaml")
# A cached short query is keyed without its tokenizer (see ThreadedModel.truncate).
MODEL_ONLY = ("onnxruntime", "tokenizers")
WRAPPER = """
import json, sys
from tui.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
sys.exit(code)
"""
DOCS = {
    "tides.txt": "Tides rise and fall twice a day because the Moon's gravity pulls the oceans.",
    "bread.txt": "Sourdough bread needs a lively starter, a long proof and a very hot oven.",
    "bonds.txt": "Index funds spread money over many stocks; bonds pay fixed interest instead.",
}


def cold(*args: str) -> tuple[Any, list[str]]:
    """One fresh `embedscope` process: its JSON output, and the heavy modules it imported."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WRAPPER.format(heavy=(*TORCH, *MODEL_ONLY, *INDEX_ONLY)),
            *args,
            "--json",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout), modules


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text + "\n", encoding="utf-8")
    cold("index", str(corpus), "--name", "cold")
    return corpus


def test_cold_search_loads_no_torch(indexed: Path) -> None:
    result, modules = cold("search", "why does the sea go up and down", "--name", "cold")
    assert modules == ["onnxruntime", "tokenizers"], "a new query: ONNX, nothing of indexing"
    assert result["results"][0]["path"] == "tides.txt"
    assert result["load_s"] > 0 and result["search_s"] > 0
    again, modules = cold("search", "why does the sea go up and down", "--name", "cold")
    assert modules == [], "a cached query needs no model at all, nor anything of indexing"
    assert [r["chunk_id"] for r in again["results"]] == [r["chunk_id"] for r in result["results"]]


def test_defaults_parse_fast_and_the_same() -> None:
    """The shipped defaults take libyaml's parser; it must read them exactly as the limit-checking
    loader that user files take does, values and lines of every key alike."""
    fast = config_module._load_yaml(config_module.DEFAULTS_FILE, trusted=True)
    checked = config_module._load_yaml(config_module.DEFAULTS_FILE)
    assert fast == checked
    assert fast[1][("index", "faiss", "hnsw_m")].line > 1


def test_defaults_are_read_from_their_cached_parse_while_it_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache is named by the defaults' bytes: a damaged one is parsed again and rewritten,
    and a config loaded either way is the same."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as `make test` runs
    fresh = config_module.load_config(use_user_file=False)
    digest = hashlib.sha256(config_module.DEFAULTS_FILE.read_bytes()).hexdigest()
    (cached,) = config_module.DEFAULTS_FILE.parent.glob(f"__pycache__/defaults.{digest[:16]}.json")
    from_cache = config_module.load_config(use_user_file=False)
    assert from_cache.raw == fresh.raw and from_cache.locations == fresh.locations
    cached.write_text('{"raw": [1, 2]')
    again = config_module.load_config(use_user_file=False)
    assert again.raw == fresh.raw and again.locations == fresh.locations
    assert json.loads(cached.read_text())["raw"] == fresh.raw


def test_a_long_or_non_ascii_query_is_still_cut_by_its_tokenizer() -> None:
    """Only a short ASCII query skips the tokenizer; anything else is cut exactly as before."""
    from engine.models import ModelRegistry

    registry = ModelRegistry(config_module.load_config(use_user_file=False))
    model = registry.get("minilm")
    window = model.fingerprint.max_seq_length
    short = "tides " * (window // 12)
    assert model.truncate([short], count=False).token_counts == []
    for text in ("tides " * window, "Gezeiten über Kühe " * (window // 8)):
        uncounted = model.truncate([text], count=False)
        counted = model.truncate([text])
        assert uncounted.texts == counted.texts and counted.token_counts
    assert model.truncate(["tides " * window], count=False).truncated == 1


def test_similar_reports_load_and_search_apart(indexed: Path) -> None:
    result, modules = cold("similar", "bread.txt", "--name", "cold", "-k", "2")
    assert modules == []
    assert result["load_s"] > 0 and result["search_s"] > 0
    assert result["results"] and all(r["path"] != "bread.txt" for r in result["results"])


def test_tampered_export_is_made_again_and_matches_torch(
    indexed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, st_minilm
) -> None:
    """Own cache dir: the export is damaged on purpose, which other tests must not see."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, modules = cold("embed", "makes the export")
    assert "torch" in modules and first["small_batches"].startswith("onnxruntime")
    (folder,) = (tmp_path / "cache").rglob("onnx/minilm-*")
    weights = folder / WEIGHTS
    good = weights.read_bytes()
    record = json.loads((folder / RECORD).read_text())

    # Same size and mtime, one weight changed: only the checksum can tell.
    stat = weights.stat()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x40
    weights.write_bytes(bytes(damaged))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    text = "a query the export has never seen"
    result, modules = cold("embed", text, "--vectors")
    assert "torch" in modules, "a checksum mismatch makes the export again, with torch"
    assert result["small_batches"].startswith("onnxruntime")
    assert weights.read_bytes() == good
    assert json.loads((folder / RECORD).read_text())["files"] == record["files"]
    assert set(record["files"]) == {GRAPH, WEIGHTS}

    vector = np.asarray(result["texts"][0]["vector"], dtype=np.float32)
    expected = st_minilm.encode([text], normalize_embeddings=True)[0]
    assert float(vector @ expected) > 0.99999

    found, modules = cold("search", "baking loaves at home", "--name", "cold", "--mode", "vector")
    assert modules == ["onnxruntime", "tokenizers"], "the next command trusts the export again"
    assert found["results"][0]["path"] == "bread.txt"
