"""bench_peers.py end to end on a tiny SciFact subset, with the real MiniLM.

embedscope always runs; txtai and chromadb only where their virtualenv already exists, since
creating it downloads gigabytes and the suite must never do that. Timings are never compared,
only that each figure exists, is sane and agrees with the figures it is derived from.
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

BENCH = REPO / "benchmarks" / "bench_peers.py"
PEERS_STAMP = REPO / ".cache" / "peers-venv" / ".installed"
TINY = ("--quick", "--docs", "60", "--queries", "20", "--updates", "5")

pytestmark = pytest.mark.skipif(
    not (DATASETS / "scifact" / "corpus.jsonl").is_file(), reason="needs the shared datasets"
)


def run_peers(*args: str, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def check_system(s: dict[str, Any], documents: int, focus: int) -> None:
    assert s["documents"] == documents and s["documents_after_update"] == documents
    assert s["queries"] == 20 and s["update_docs"] == 5
    # Real MiniLM on 60 documents that hold every judged one finds most of them.
    assert 0.3 < s["ndcg_at_10"] <= 1.0
    assert 0 < s["mean_docs_returned"] <= 10
    assert 0 < s["query_p50_ms"] <= s["query_p95_ms"]
    assert s["build_docs_per_s"] == pytest.approx(documents / s["build_s"], rel=0.01)
    assert s["filtered_all_match"] is True
    assert 0 <= s["filtered_mean_docs"] <= focus
    for key in ("load_s", "reindex_unchanged_s", "update_s", "disk_bytes", "peak_rss_mb"):
        assert isinstance(s[key], int | float) and math.isfinite(s[key]) and s[key] > 0, key
    assert s["disk_mb"] == pytest.approx(s["disk_bytes"] / 1e6, abs=0.01)


@pytest.mark.slow
def test_embedscope_only_needs_no_peers(tmp_path: Path) -> None:
    proc = run_peers(*TINY, "--only", "embedscope", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "virtualenv" not in proc.stderr
    r = json.loads(proc.stdout)
    assert r["documents"] == 60 and r["queries"] == 20 and r["k"] == 10
    # Every 50th document carries the filter's value: 0 and 50.
    assert r["filter"] == "segment=focus" and r["filter_matching_docs"] == 2
    assert 0 < r["judged_documents"] <= 60
    assert set(r["systems"]) == {"embedscope"} and r["ratios"] == {}
    es = r["systems"]["embedscope"]
    check_system(es, 60, 2)
    # Both focus documents are found for every query: the filter is applied before ranking.
    assert es["filtered_mean_docs"] == 2
    assert 0.3 < es["ndcg_at_10_hybrid"] <= 1.0
    assert es["chunks"] >= 60
    assert "embedscope" in proc.stderr and "nDCG@10" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not PEERS_STAMP.is_file(), reason="the peers' virtualenv is not installed")
def test_all_three_when_the_peers_venv_exists(tmp_path: Path) -> None:
    proc = run_peers(*TINY, tmp_path=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert set(r["systems"]) == {"embedscope", "txtai", "chromadb"}
    for system in r["systems"].values():
        check_system(system, 60, 2)
    es = r["systems"]["embedscope"]
    assert set(r["ratios"]) == {"txtai", "chromadb"}
    for peer, ratios in r["ratios"].items():
        for key, value in ratios.items():
            assert value == pytest.approx(es[key] / r["systems"][peer][key], rel=0.01), key


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--docs", "0"), 2, "--docs must be at least 1, got 0"),
        (("--only", "lucene"), 2, "invalid choice: 'lucene'"),
        (("--docs", "5", "--queries", "20"), 1, "raise --docs or lower --queries"),
    ],
)
def test_bad_arguments_are_clear_errors(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    proc = run_peers(*args, tmp_path=tmp_path, timeout=120)
    assert proc.returncode == code
    assert message in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
