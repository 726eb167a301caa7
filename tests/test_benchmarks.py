"""Each benchmark runs end to end at a tiny size and prints one JSON object with its keys.

Timings are never asserted (the machine is shared); only that the measurements exist, are
numbers in a sane range, and that the ratios agree with the absolute figures beside them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DATASETS, REPO

BENCH = REPO / "benchmarks"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATASETS / "scifact" / "corpus.jsonl").is_file(), reason="needs the shared datasets"
    ),
]


def run_bench(script: str, *args: str, tmp_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


def positive(result: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = result[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


def check_targets(result: dict[str, Any], names: set[str]) -> None:
    assert set(result["targets"]) == names
    for name, target in result["targets"].items():
        assert target["value"] == result[name]
        assert isinstance(target["met"], bool)


def test_bench_embed_smoke(tmp_path: Path) -> None:
    r = run_bench("bench_embed.py", "--quick", "--smoke", tmp_path=tmp_path)
    positive(
        r,
        "service_vs_direct",
        "warm_vs_cold",
        "concurrent_vs_sequential",
        "direct_texts_per_s",
        "service_cold_texts_per_s",
        "service_warm_texts_per_s",
        "sequential_ms",
        "concurrent_ms",
    )
    check_targets(r, {"service_vs_direct", "warm_vs_cold", "concurrent_vs_sequential"})
    assert r["texts"] == 48 and r["callers"] == 16
    # Ratios are computed from the timings reported beside them, not invented.
    row = r["per_repeat"][0]
    assert r["warm_vs_cold"] == pytest.approx(row["cold"] / row["warm"], rel=0.05)
    assert r["service_warm_texts_per_s"] > r["service_cold_texts_per_s"]
    # The cold time runs until the disk cache holds every vector: the flush is inside it.
    assert 0 <= row["flush"] <= row["cold"]


def test_bench_index_smoke(tmp_path: Path) -> None:
    r = run_bench("bench_index.py", "--quick", "--smoke", tmp_path=tmp_path)
    positive(
        r,
        "index_vs_direct",
        "index_chunks_per_s",
        "direct_chunks_per_s",
        "chunks",
        "chunking_vs_tokenizing",
        "chunk_abstracts_per_s",
        "tokenize_abstracts_per_s",
        "index_peak_rss_mb",
    )
    check_targets(r, {"index_vs_direct", "chunking_vs_tokenizing", "index_peak_rss_mb"})
    # Indexing alone holds one model; the in-process figure also holds the baseline's.
    assert r["index_peak_rss_mb"] < r["per_repeat"][0]["peak_rss_mb"]
    assert r["documents"] == 12 and r["chunks"] >= 12
    assert r["per_repeat"][0]["chunks"] == r["chunks"]
    assert r["chunking_abstracts"] == 50 and len(r["chunking_per_repeat"]) == 3
    ratios = [row["tokenize_s"] / row["chunk_s"] for row in r["chunking_per_repeat"]]
    assert r["chunking_vs_tokenizing"] == pytest.approx(sorted(ratios)[1], abs=1e-3)


def test_bench_search_smoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = run_bench(
        "bench_search.py",
        "--quick",
        "--smoke",
        "--int8",
        "--data-dir",
        str(data),
        tmp_path=tmp_path,
    )
    positive(
        r,
        "hnsw_int8_query_p50_ms",
        "hnsw_int8_query_embed_ms",
        "int8_model_encode_ms",
        "hnsw_int8_scan_ms",
        "hnsw_int8_recall_at_10",
        "query_p50_ms",
        "query_p95_ms",
        "faiss_scan_ms",
        "query_embed_ms",
        "hnsw_query_p50_ms",
        "hnsw_recall_at_10",
    )
    check_targets(
        r,
        {
            "query_p50_ms",
            "query_p95_ms",
            "hnsw_query_p50_ms",
            "hnsw_recall_at_10",
            "static_query_speedup",
        },
    )
    assert r["chunks"] == 300 and r["query_p95_ms"] >= r["query_p50_ms"]
    positive(r, "static_query_speedup", "static_query_embed_ms", "static_source_query_embed_ms")
    assert r["static_source_model"] == "minilm"
    assert r["static_query_speedup"] == pytest.approx(
        r["static_source_query_embed_ms"] / r["static_query_embed_ms"], rel=0.02, abs=0.1
    )
    assert 0.0 <= r["hnsw_recall_at_10"] <= 1.0
    assert r["build"]["flat"]["active_type"] == "flat"
    # The HNSW index re-uses the flat build's embeddings from the cache: no model call.
    assert r["build"]["flat"]["model_batches"] > 0 and r["build"]["hnsw"]["model_batches"] == 0
    assert r["build"]["hnsw"]["active_type"] == "hnsw"
    # int8 has its own fingerprint: its flat build embeds every chunk again, its HNSW build none.
    assert r["build"]["flat_int8"]["model_batches"] > 0
    assert r["build"]["hnsw_int8"]["model_batches"] == 0
    assert r["build"]["hnsw_int8"]["active_type"] == "hnsw"
    assert r["hnsw_int8_recall_at_10"] <= 1.0
    assert set(r["bytes_per_chunk"]) == {"flat_disk", "flat_memory", "hnsw_disk", "hnsw_memory"}
    # A second run over the kept --data-dir finds the index up to date: nothing is re-embedded.
    again = run_bench(
        "bench_search.py", "--quick", "--smoke", "--data-dir", str(data), tmp_path=tmp_path
    )
    assert again["build"]["flat"]["chunks_indexed_now"] == 0
    assert again["build"]["hnsw"]["model_batches"] == 0
    assert again["chunks"] == 300


def test_bench_app_smoke(tmp_path: Path) -> None:
    r = run_bench("bench_app.py", "--quick", "--smoke", tmp_path=tmp_path)
    positive(
        r,
        "first_paint_s",
        "keystroke_to_results_p50_ms",
        "keystroke_to_results_p95_ms",
        "keystroke_to_results_cached_p50_ms",
        "keystroke_to_results_cached_p95_ms",
        "max_loop_lag_ms",
        "lag_window_s",
        "lag_samples",
        "max_loop_lag_during_reindex_ms",
        "reindex_chunks",
        "reindex_lag_samples",
    )
    check_targets(
        r,
        {
            "first_paint_s",
            "keystroke_to_results_p50_ms",
            "max_loop_lag_ms",
            "max_loop_lag_during_reindex_ms",
        },
    )
    # The lag window spans indexing the whole sample corpus, even under --quick.
    assert r["corpus"] == "sample_corpus" and r["quick"] is True
    indexable = [
        p
        for p in (REPO / "sample_corpus").rglob("*")
        if p.is_file() and not p.name.startswith(".") and "eval" not in p.parts
    ]
    assert r["documents_indexed"] >= len(indexable)
    assert r["queries"] == 3
    assert r["keystroke_to_results_p95_ms"] >= r["keystroke_to_results_p50_ms"]
    assert r["max_loop_lag_ms"] >= r["loop_lag_p99_ms"]
    # Every document of the second index was deleted and added back: ~100 chunks at --smoke.
    assert r["reindex_chunks"] >= 100 and r["reindex_documents"] >= 1
    assert r["max_loop_lag_during_reindex_ms"] >= r["reindex_lag_p99_ms"]


def test_bad_size_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_search.py"), "--chunks", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "--chunks must be at least 1, got 0" in proc.stderr
    assert proc.stdout == ""
