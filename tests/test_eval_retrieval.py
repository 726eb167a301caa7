"""Retrieval evaluation end to end: real MiniLM, real Cranfield and SciFact, real run files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DATASETS
from reference_eval import beir_ndcg_at_10, read_beir
from test_index_support import build_cranfield, copy_cache

from engine.cli import run
from engine.config import load_config
from engine.engine import Engine
from engine.evaluation.cli import add_parsers
from engine.evaluation.measure import EvalProgress
from engine.evaluation.retrieval import METRICS, run_retrieval_eval
from engine.evaluation.runs import list_runs, load_run

CLI_FIGURES = {
    "ndcg@10",
    "recall@10",
    "recall@100",
    "mrr@10",
    "map@100",
    "query_p50_ms",
    "query_p95_ms",
    "docs_per_s",
    "memory_mb",
    "cost_per_1k",
}


@pytest.fixture(scope="session")
def eval_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir (so one embedding cache) for every evaluation test in the session, warmed
    with the session's Cranfield index build: a one-chunk document is embedded exactly as the
    evaluation embeds it, so only the longer documents cost a model call here."""
    home = tmp_path_factory.getbasetemp() / "eval-home"
    home.mkdir(exist_ok=True)
    copy_cache(build_cranfield(tmp_path_factory).data_dir, home)
    return home


@pytest.fixture
def shared_home(eval_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(eval_home))
    return eval_home


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    add_parsers(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(argv))


@pytest.mark.slow  # embeds Cranfield twice: through the engine, and independently
async def test_cranfield_graded_eval_is_saved_with_all_figures(
    shared_home: Path, st_minilm: Any
) -> None:
    events: list[EvalProgress] = []
    async with Engine(load_config(use_user_file=False)) as engine:
        saved = await run_retrieval_eval(
            engine, DATASETS / "cranfield", ["minilm"], progress=events.append
        )
        digest = (await engine.embeddings.model("minilm")).fingerprint.digest
    assert saved.path.parent == shared_home / "evals"
    run_ = load_run(saved.path)
    assert saved.path in [r.path for r in list_runs(shared_home)]
    assert (run_.kind, run_.dataset, run_.split) == ("retrieval", "cranfield", "test")
    assert run_.data["queries"] == 225 and run_.data["documents"] == 1400
    fig = run_.models["minilm"]
    for metric in METRICS:
        assert 0.0 <= fig[metric] <= 1.0, metric
    assert fig["recall@100"] >= fig["recall@10"] > 0.0
    # Pinned to sentence-transformers + numpy + ir-measures, no project code.
    reference = beir_ndcg_at_10(st_minilm, read_beir(DATASETS / "cranfield"))
    assert fig["ndcg@10"] == pytest.approx(reference, abs=1e-4)
    assert 0 < fig["query_p50_ms"] <= fig["query_p95_ms"]
    assert fig["docs_per_s"] > 0 and fig["throughput_basis"] in {"corpus", "sample"}
    assert 80 < fig["memory_mb"] < 95  # 22.7M float32 parameters
    assert fig["cost_per_1k"] == 0.0 and fig["mean_query_tokens"] > 5
    assert fig["fingerprint"]["digest"] == digest
    assert set(run_.data["versions"]) >= {"sentence-transformers", "torch", "faiss-cpu"}
    assert run_.ranking["high_accuracy_research"] == ["minilm"]
    # Cranfield docs 471 and 995 are empty: they get zero vectors instead of being embedded.
    assert run_.data["empty_documents"] == 2
    corpus = [e for e in events if e.phase == "corpus"]
    assert corpus[-1].done == corpus[-1].total == 1398
    assert any(e.phase == "latency" for e in events)


def test_cli_eval_json_prints_exactly_the_documented_object(
    shared_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rc = _cli(
        [
            "eval",
            "--dataset",
            str(DATASETS / "cranfield"),
            "--models",
            "minilm",
            "--limit-queries",
            "20",
            "--use-case",
            "real_time_mobile",
            "--json",
        ]
    )
    out, err = capfd.readouterr()
    assert rc == 0, err
    payload = json.loads(out)
    assert set(payload) == {"dataset", "split", "models", "ranking"}
    assert (payload["dataset"], payload["split"]) == ("cranfield", "test")
    assert set(payload["models"]) == {"minilm"}
    assert set(payload["models"]["minilm"]) == CLI_FIGURES
    assert payload["ranking"] == {"real_time_mobile": ["minilm"]}
    assert "[minilm] corpus 1398/1398" in err and "[minilm] latency 20/20" in err
    newest = list_runs(shared_home)[0]
    assert newest.data["limit_queries"] == 20 and newest.data["queries"] == 20


def test_cli_eval_errors_are_one_clear_line(
    shared_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--dataset", str(DATASETS / "cranfield"), "--json"]
    assert _cli([*base, "--use-case", "underwater"]) == 2
    _, err = capfd.readouterr()
    assert "unknown use case 'underwater' (known: cost_sensitive_startup" in err
    assert _cli([*base, "--split", "dev"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "qrels/dev.tsv not found (splits here: minus1_pairs, test)" in err
    assert _cli([*base, "--models", "minilm,nope"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "unknown model 'nope'" in err


@pytest.mark.slow
async def test_minilm_scifact_matches_published_ndcg(shared_home: Path) -> None:
    """MTEB paper: all-MiniLM-L6-v2 on SciFact test, nDCG@10 = 0.64508."""
    async with Engine(load_config(use_user_file=False)) as engine:
        saved = await run_retrieval_eval(engine, DATASETS / "scifact", ["minilm"])
    fig = saved.models["minilm"]
    assert fig["ndcg@10"] == pytest.approx(0.6451, abs=0.01)
    assert fig["recall@100"] >= fig["recall@10"]
