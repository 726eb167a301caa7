"""Dataset loaders, run files and measurement helpers on real files; no model needed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATASETS, REPO

from engine.evaluation.beir import DatasetError, load_beir
from engine.evaluation.measure import cost_per_1k, rss_bytes
from engine.evaluation.retrieval import exhaustive_top_k, score_run, to_run
from engine.evaluation.runs import RunError, library_versions, list_runs, load_run, save_run
from engine.evaluation.sts import load_sts


def test_cranfield_loads_as_beir_with_graded_qrels() -> None:
    ds = load_beir(DATASETS / "cranfield", "test")
    assert len(ds.doc_ids) == 1400 and len(ds.query_ids) == 225
    assert {g for judged in ds.qrels.values() for g in judged.values()} == {1, 2, 3, 4}
    first = json.loads((DATASETS / "cranfield" / "corpus.jsonl").open().readline())
    assert ds.doc_texts[0] == f"{first['title']} {first['text']}".strip()
    limited = load_beir(DATASETS / "cranfield", "test", limit_queries=20)
    assert limited.query_ids == ds.query_ids[:20] and set(limited.qrels) == set(limited.query_ids)


def test_scifact_test_split_keeps_only_judged_queries() -> None:
    ds = load_beir(DATASETS / "scifact", "test")
    assert len(ds.query_ids) == 300 and len(ds.doc_ids) == 5183 and ds.missing_queries == 0


def _beir(tmp_path: Path, qrels: str, corpus: str | None = None) -> Path:
    (tmp_path / "qrels").mkdir(parents=True)
    (tmp_path / "corpus.jsonl").write_text(corpus or '{"_id": "d1", "title": "", "text": "lift"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "wing lift"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text(qrels)
    return tmp_path


def test_beir_errors_name_file_line_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"qrels/dev\.tsv not found \(splits here: test\)"):
        load_beir(_beir(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\n"), "dev")
    bad_score = _beir(tmp_path / "a", "q1\td1\tyes\n")
    with pytest.raises(DatasetError, match=r"test\.tsv:1: score 'yes' is not an integer"):
        load_beir(bad_score)
    bad_json = _beir(tmp_path / "b", "q1\td1\t1\n", corpus='{"_id": "d1", "text": "x"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:2: not valid JSON"):
        load_beir(bad_json)
    unmatched = _beir(tmp_path / "c", "q9\td1\t1\n")
    with pytest.raises(DatasetError, match=r"no query .* has judgments"):
        load_beir(unmatched)
    with pytest.raises(DatasetError, match="does not exist"):
        load_beir(tmp_path / "missing")


def test_stsb_test_splits_on_tabs_only() -> None:
    pairs = load_sts(DATASETS / "stsb" / "sts-test.tsv")
    assert len(pairs.scores) == 1379
    assert all(0.0 <= s <= 5.0 for s in pairs.scores)
    assert any('"' in s for s in pairs.first + pairs.second)


def test_sts_errors(tmp_path: Path) -> None:
    path = tmp_path / "sts-x.tsv"
    path.write_text("a,b,c\n")
    with pytest.raises(DatasetError, match=r"sts-x\.tsv:1: expected the header"):
        load_sts(path)
    header = "genre\tfilename\tyear\tsid\tscore\tsentence1\tsentence2\n"
    path.write_text(header + "g\tf\ty\t1\thigh\tA.\tB.\n")
    with pytest.raises(DatasetError, match=r"sts-x\.tsv:2: score 'high' is not a number"):
        load_sts(path)


def test_exhaustive_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(7)
    docs = rng.normal(size=(700, 16)).astype(np.float32)
    queries = rng.normal(size=(600, 16)).astype(np.float32)
    idx, scores = exhaustive_top_k(queries, docs, 100)
    full = queries @ docs.T
    expected = np.argsort(-full, axis=1)[:, :100]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    small, _ = exhaustive_top_k(queries[:2], docs[:5], 100)
    assert small.shape == (2, 5)


def test_score_run_on_perfect_and_reversed_rankings() -> None:
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    docs = ["a", "b", "c", "d"]
    perfect = to_run(
        ["q1", "q2"], docs, np.array([[0, 1, 3], [2, 0, 1]]), np.array([[3, 2, 1], [3, 2, 1.0]])
    )
    assert score_run(qrels, perfect) == pytest.approx(
        {"ndcg@10": 1.0, "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map@100": 1.0}
    )
    reversed_run = {"q1": {"d": 3.0, "b": 2.0, "a": 1.0}, "q2": {"a": 2.0, "c": 1.0}}
    got = score_run(qrels, reversed_run)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["recall@10"] == pytest.approx(1.0)
    # Graded: putting the grade-1 doc above the grade-2 doc must cost nDCG.
    swapped = score_run({"q1": qrels["q1"]}, {"q1": {"b": 2.0, "a": 1.0}})
    assert swapped["ndcg@10"] < 1.0 and swapped["map@100"] == pytest.approx(1.0)


def test_runs_are_saved_atomically_and_listed_newest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = save_run(
        tmp_path,
        {
            "kind": "sts",
            "dataset": "stsb",
            "created": time.time() - 60,
            "models": {"minilm": {"spearman": 0.82}},
            "ranking": {},
        },
    )
    new = save_run(
        tmp_path,
        {
            "kind": "retrieval",
            "dataset": "cranfield",
            "split": "test",
            "models": {"minilm": {"ndcg@10": 0.4}},
            "ranking": {"x": ["minilm"]},
        },
    )
    (tmp_path / "evals" / "broken.json").write_text('{"kind": "sts", "data')
    (tmp_path / "evals" / "partial.json").write_text('{"kind": "sts"}')
    with caplog.at_level(logging.WARNING, logger="engine.evaluation.runs"):
        runs = list_runs(tmp_path)
    assert [r.path for r in runs] == [new, old]
    assert "broken.json" in caplog.text and "partial.json" in caplog.text
    assert not list((tmp_path / "evals").glob(".tmp-*"))
    run = load_run(new)
    assert run.split == "test" and run.models["minilm"]["ndcg@10"] == 0.4
    assert run.data["versions"] == library_versions()
    assert run.data["versions"]["ir-measures"] is not None
    with pytest.raises(RunError, match="not valid JSON"):
        load_run(tmp_path / "evals" / "broken.json")
    assert list_runs(tmp_path / "nowhere") == []


def test_save_run_rejects_nan_and_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_run(
            tmp_path,
            {"kind": "sts", "dataset": "d", "models": {"m": {"s": float("nan")}}, "ranking": {}},
        )
    assert list((tmp_path / "evals").iterdir()) == []


def test_cost_and_rss_helpers() -> None:
    assert cost_per_1k([10, 20], 0.02) == pytest.approx(15 * 1000 * 0.02 / 1e6)
    assert cost_per_1k([12, 30], 0.0) == 0.0
    before = rss_bytes()
    block = np.ones(64 * 2**20, dtype=np.uint8)
    assert rss_bytes() - before >= 48 * 2**20
    del block


def test_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, engine.evaluation, engine.evaluation.cli\n"
        "heavy = {'torch', 'sentence_transformers', 'faiss', 'ir_measures', 'scipy'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
