"""Fine-tuning: real MiniLM, real pairs (STS-B, SciFact), lineage, registration and clear errors."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from conftest import DATASETS, REPO
from reference_eval import beir_ndcg_at_10, read_beir
from scipy.stats import spearmanr

from engine.cli import run
from engine.config import Config
from engine.models import ModelError, ModelRegistry
from engine.models.sources import sha256_file
from engine.training import (
    CancelToken,
    FinetuneCancelled,
    FinetuneError,
    FinetuneProgress,
    Pair,
    beir_pairs,
    finetune,
    pairs_digest,
    read_pairs,
)
from engine.training.cli import add_parsers

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SCIFACT = DATASETS / "scifact"
TRAIN_PAIRS = 400  # of 919: 25 steps of 16
EVAL_DOCS = 600  # every judged test document (283) and the first distractors


def sts_pairs_file(path: Path, n: int, *, labels: bool = True) -> Path:
    """The first `n` STS-B train pairs as JSONL, label = score / 5."""
    with (DATASETS / "stsb" / "sts-train.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]
    lines = [
        json.dumps({"text1": r[5], "text2": r[6], **({"label": float(r[4]) / 5} if labels else {})})
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    add_parsers(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(["finetune", *argv]))


def test_read_pairs_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match=r"pairs file .*none\.jsonl not found; give a JSONL"):
        read_pairs(tmp_path / "none.jsonl", need_labels=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text1": "a", "text2": "b", "label": 1}\n\n{"text1": "a", "text2": \n')
    with pytest.raises(FinetuneError, match=r"bad\.jsonl:3: not valid JSON"):
        read_pairs(bad, need_labels=True)
    bad.write_text('{"text1": "a", "text2": "b", "label": 1}\n{"text1": "a", "text2": "b"}\n')
    with pytest.raises(FinetuneError, match=r"bad\.jsonl:2: missing 'label'.*--loss mnrl"):
        read_pairs(bad, need_labels=True)
    assert [p.label for p in read_pairs(bad, need_labels=False)] == [1.0, None]
    bad.write_text('{"text1": "a", "text2": "", "label": 1}\n')
    with pytest.raises(FinetuneError, match=r"bad\.jsonl:1: 'text2' must be a non-empty string"):
        read_pairs(bad, need_labels=False)
    bad.write_text('{"text1": "a", "text2": "b", "label": "high"}\n')
    with pytest.raises(FinetuneError, match=r"bad\.jsonl:1: 'label' must be a number"):
        read_pairs(bad, need_labels=False)


def test_beir_train_split_becomes_query_passage_pairs() -> None:
    pairs = beir_pairs(SCIFACT, "train")
    with (SCIFACT / "qrels" / "train.tsv").open() as fh:
        judged = sum(1 for line in fh if line.strip() and not line.startswith("query-id"))
    assert len(pairs) == judged
    assert all(p.label == 1.0 for p in pairs)
    with (SCIFACT / "qrels" / "train.tsv").open() as fh:
        qid, doc_id = fh.readlines()[1].split("\t")[:2]
    with (SCIFACT / "queries.jsonl").open() as fh:
        query = next(r["text"] for r in map(json.loads, fh) if r["_id"] == qid)
    with (SCIFACT / "corpus.jsonl").open() as fh:
        doc = next(r for r in map(json.loads, fh) if r["_id"] == doc_id)
    assert Pair(query, f"{doc['title']} {doc['text']}".strip(), 1.0) in pairs
    assert pairs_digest(pairs) == pairs_digest(beir_pairs(SCIFACT, "train"))
    assert pairs_digest(pairs[1:]) != pairs_digest(pairs)


def test_finetune_refuses_bad_requests_before_loading(config: Config, tmp_path: Path) -> None:
    registry = ModelRegistry(config)
    pairs = read_pairs(sts_pairs_file(tmp_path / "p.jsonl", 30), need_labels=True)
    with pytest.raises(ModelError, match=r"unknown model 'nope' \(declared: minilm"):
        finetune(registry, "nope", pairs, data_source="p")
    with pytest.raises(FinetuneError, match="'minilm-static' is a model2vec model"):
        finetune(registry, "minilm-static", pairs, data_source="p")
    with pytest.raises(FinetuneError, match="unknown loss 'triplet'"):
        finetune(registry, "minilm", pairs, data_source="p", loss="triplet")
    with pytest.raises(FinetuneError, match="batch size >= 2"):
        finetune(registry, "minilm", pairs, data_source="p", loss="mnrl", batch_size=1)
    with pytest.raises(FinetuneError, match="a model named 'mpnet' already exists"):
        finetune(registry, "minilm", pairs, data_source="p", name="mpnet")
    with pytest.raises(FinetuneError, match="is not usable"):
        finetune(registry, "minilm", pairs, data_source="p", name="../escape")
    with pytest.raises(FinetuneError, match="5 pairs are too few: at least 10"):
        finetune(registry, "minilm", pairs[:5], data_source="p")
    assert not (config.data_dir / "models" / "finetuned").exists()


def test_cli_reports_option_and_file_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("--base", "minilm") == 2
    assert "either as --pairs FILE or as --dataset DIR --split train" in capsys.readouterr().err
    train = ("--base", "minilm", "--dataset", str(SCIFACT), "--split", "train")
    assert cli(*train, "--loss", "cosine") == 2
    assert "use --loss mnrl" in capsys.readouterr().err
    assert cli(*train, "--eval-split", "train") == 2
    assert "--eval-split train is the training split" in capsys.readouterr().err
    assert cli("--base", "minilm", "--pairs", str(tmp_path / "missing.jsonl")) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err
    unlabeled = sts_pairs_file(tmp_path / "u.jsonl", 12, labels=False)
    assert cli("--base", "minilm", "--pairs", str(unlabeled)) == 2
    assert "u.jsonl:1: missing 'label'" in capsys.readouterr().err
    assert cli("--base", "ghost", "--pairs", str(unlabeled), "--loss", "mnrl") == 2
    assert "unknown model 'ghost'" in capsys.readouterr().err


async def test_finetune_pairs_saves_lineage_and_registers(
    config: Config, tmp_path: Path, st_minilm: SentenceTransformer
) -> None:
    pairs_file = sts_pairs_file(tmp_path / "pairs.jsonl", 18)
    pairs = read_pairs(pairs_file, need_labels=True)
    registry = ModelRegistry(config)
    seen: list[FinetuneProgress] = []
    result = finetune(
        registry,
        "minilm",
        pairs,
        data_source=str(pairs_file),
        batch_size=8,
        name="sts-tiny",
        progress=seen.append,
    )
    folder = config.data_dir / "models" / "finetuned" / "sts-tiny"
    assert result.folder == folder
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage == json.loads(json.dumps(result.lineage))
    base_digest = sha256_file(
        registry.resolve_folder(registry.spec("minilm")) / "model.safetensors"
    )
    assert lineage["base"] == "minilm" and lineage["base_weights_digest"] == base_digest
    assert (lineage["loss"], lineage["epochs"], lineage["batch_size"]) == ("cosine", 1, 8)
    evaluation = lineage["evaluation"]
    assert evaluation["kind"] == "held-out" and evaluation["held_out_pairs"] == 3
    assert lineage["data"]["training_pairs"] == 15 and lineage["steps"] == 2
    assert len(lineage["data"]["digest"]) == 64
    assert lineage["data"]["digest"] != pairs_digest(pairs)
    # "before" is the base model's Spearman on the held-out pairs: the first 10% (at least 3)
    # of the pairs shuffled with the run's seed.
    held = list(pairs)
    random.Random(lineage["seed"]).shuffle(held)
    held = held[: evaluation["held_out_pairs"]]
    left = st_minilm.encode([p.text1 for p in held], normalize_embeddings=True)
    right = st_minilm.encode([p.text2 for p in held], normalize_embeddings=True)
    base = spearmanr(np.sum(left * right, axis=1), [p.label for p in held]).statistic
    assert evaluation["before"]["spearman"] == pytest.approx(base, abs=1e-6)
    assert set(evaluation["after"]) == {"spearman"}
    assert set(lineage["versions"]) >= {"sentence-transformers", "torch", "transformers"}
    train_steps = [p for p in seen if p.phase == "train"]
    assert [p.step for p in train_steps] == [1, 2]
    assert all(p.total == 2 and p.loss is not None and p.loss >= 0 for p in train_steps)

    # The running registry sees it at once; a fresh one finds it on disk.
    assert registry.check("sts-tiny").available
    fresh = ModelRegistry(config)
    assert "sts-tiny" in fresh.names()
    status = fresh.check("sts-tiny")
    assert status.available and status.dimension == 384
    assert "fine-tuned from minilm" in status.description
    tuned = fresh.get("sts-tiny")
    assert tuned.fingerprint.weights_digest == sha256_file(folder / "model.safetensors")
    assert tuned.fingerprint.weights_digest != base_digest
    text = ["A plane is taking off."]
    tuned_vec = await tuned.encode(text)
    base_vec = await fresh.get("minilm").encode(text)
    assert np.isclose(np.linalg.norm(tuned_vec), 1.0, atol=1e-5)
    assert not np.allclose(tuned_vec, base_vec, atol=1e-6)
    await fresh.close()

    with pytest.raises(FinetuneError, match="'sts-tiny' already exists"):
        finetune(registry, "minilm", pairs, data_source="p", name="sts-tiny")


def test_cancel_mid_training_saves_nothing(config: Config, tmp_path: Path) -> None:
    pairs = read_pairs(sts_pairs_file(tmp_path / "p.jsonl", 12), need_labels=False)
    token = CancelToken()
    steps: list[int] = []

    def on_progress(p: FinetuneProgress) -> None:
        if p.phase == "train":
            steps.append(p.step)
            token.cancel()

    with pytest.raises(FinetuneCancelled, match="nothing was saved"):
        finetune(
            ModelRegistry(config),
            "minilm",
            pairs,
            data_source="p",
            loss="mnrl",
            batch_size=4,
            progress=on_progress,
            cancel=token,
        )
    assert steps == [1]
    assert not any((config.data_dir / "models" / "finetuned").glob("*/lineage.json"))


def test_broken_lineage_is_listed_unavailable(config: Config) -> None:
    folder = config.data_dir / "models" / "finetuned" / "broken"
    folder.mkdir(parents=True)
    (folder / "lineage.json").write_text("{not json")
    registry = ModelRegistry(config)
    assert "broken" in registry.names()
    status = registry.check("broken")
    assert not status.available and "lineage.json is unreadable" in status.reason
    with pytest.raises(ModelError, match=r"delete .*broken or fine-tune it again"):
        registry.get("broken")


def scifact_base_ndcg(model: SentenceTransformer, max_docs: int) -> float:
    """The base model's nDCG@10 on SciFact test, computed without project code, over the
    documents `eval_max_docs` keeps: every judged one, then the first others in corpus order."""
    data = read_beir(SCIFACT, "test")
    judged = {d for judgments in data.qrels.values() for d in judgments}
    keep = [i for i, d in enumerate(data.doc_ids) if d in judged]
    others = [i for i, d in enumerate(data.doc_ids) if d not in judged]
    keep = sorted(keep + others[: max(0, max_docs - len(keep))])
    subset = dataclasses.replace(
        data,
        doc_ids=[data.doc_ids[i] for i in keep],
        doc_texts=[data.doc_texts[i] for i in keep],
    )
    return beir_ndcg_at_10(model, subset)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_scifact_one_epoch_mnrl_before_after(
    config: Config, st_minilm: SentenceTransformer
) -> None:
    """One epoch on SciFact train pairs on this CPU, scored on the test split.

    A fixed seeded sample of the pairs and of the distractor documents keeps the suite's time:
    the whole split (58 steps, 1,000 documents) took 15 minutes alone, a quarter of the suite."""
    base = scifact_base_ndcg(st_minilm, EVAL_DOCS)
    pairs = random.Random(0).sample(beir_pairs(SCIFACT, "train"), TRAIN_PAIRS)
    registry = ModelRegistry(config)
    result = finetune(
        registry,
        "minilm",
        pairs,
        data_source=f"{SCIFACT} (train)",
        loss="mnrl",
        batch_size=16,
        name="minilm-scifact",
        eval_dataset=SCIFACT,
        eval_split="test",
        # The judged documents plus distractors: whole-corpus scoring takes minutes per pass.
        eval_max_docs=EVAL_DOCS,
        # Measured on the shared 2-core machine: 1 thread steps 3x faster than 2.
        threads=1,
    )
    lineage = result.lineage
    evaluation = lineage["evaluation"]
    print(
        f"\nSciFact nDCG@10 ({evaluation['documents']} docs, {evaluation['queries']} queries): "
        f"{result.before:.4f} -> {result.after:.4f}; training {lineage['train_seconds']:.0f}s, "
        f"{lineage['steps']} steps, total {lineage['seconds']:.0f}s"
    )
    assert evaluation["queries"] == 300 and evaluation["documents"] == EVAL_DOCS
    # "before" is the base model's own score, and one epoch on SciFact train must help.
    assert result.before == pytest.approx(base, abs=1e-4)
    assert result.after > result.before
    assert lineage["data"]["training_pairs"] == len(pairs)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run(
        [sys.executable, "-m", "engine.cli", "models", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = {r["name"]: r for r in json.loads(listed.stdout)["models"]}
    assert rows["minilm-scifact"]["available"] and rows["minilm-scifact"]["dimension"] == 384
    script = (
        "import asyncio\n"
        "from engine.config import load_config\n"
        "from engine.models import ModelRegistry\n"
        "async def main():\n"
        "    model = ModelRegistry(load_config(use_user_file=False)).get('minilm-scifact')\n"
        "    vec = await model.encode(['gene expression in T cells'])\n"
        "    print(vec.shape[1], model.fingerprint.weights_digest)\n"
        "asyncio.run(main())\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    dim, digest = loaded.stdout.split()[-2:]
    assert dim == "384" and digest == sha256_file(result.folder / "model.safetensors")
