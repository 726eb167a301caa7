"""STS-B evaluation with real models against the published sentence-transformers figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from conftest import REPO

from engine.cli import run
from engine.config import load_config
from engine.engine import Engine
from engine.evaluation.cli import add_parsers
from engine.evaluation.runs import list_runs
from engine.evaluation.sts import run_sts_eval

STS_TEST = REPO.parent / "shared" / "datasets" / "stsb" / "sts-test.tsv"


@pytest.fixture
def shared_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same data dir as the retrieval tests: one embedding cache per session."""
    home = tmp_path_factory.getbasetemp() / "eval-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(home))
    return home


def test_minilm_stsb_spearman_via_cli(shared_home: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """sentence-transformers model card: all-MiniLM-L6-v2, STS-B test Spearman 0.8203."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    add_parsers(parser.add_subparsers(dest="command"))
    rc = run(parser.parse_args(["eval-sts", "--file", str(STS_TEST), "-m", "minilm", "--json"]))
    out, err = capfd.readouterr()
    assert rc == 0, err
    payload = json.loads(out)
    assert set(payload) == {"dataset", "split", "models", "ranking"}
    assert (payload["dataset"], payload["split"]) == ("stsb", "test")
    fig = payload["models"]["minilm"]
    assert set(fig) == {
        "spearman",
        "query_p50_ms",
        "query_p95_ms",
        "docs_per_s",
        "memory_mb",
        "cost_per_1k",
    }
    assert fig["spearman"] == pytest.approx(0.8203, abs=0.01)
    saved = list_runs(shared_home)[0]
    assert saved.kind == "sts" and saved.data["pairs"] == 1379
    assert saved.models["minilm"]["spearman"] == fig["spearman"]


@pytest.mark.slow
async def test_mpnet_stsb_spearman_matches_published(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sentence-transformers model card: all-mpnet-base-v2, STS-B test Spearman 0.8342."""
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(models_dir))  # reuse the one mpnet extraction
    async with Engine(load_config(use_user_file=False)) as engine:
        saved = await run_sts_eval(engine, STS_TEST, ["mpnet"])
    fig = saved.models["mpnet"]
    assert fig["spearman"] == pytest.approx(0.8342, abs=0.01)
    assert 400 < fig["memory_mb"] < 450  # 109M float32 parameters
