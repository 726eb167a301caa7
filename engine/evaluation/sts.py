"""STS evaluation: Spearman correlation of cosine similarity with the gold scores.

STS-B's tsv files hold unbalanced quotes inside sentences, so lines are split on TAB only; a
quote-aware CSV reader would silently merge rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.evaluation.beir import DatasetError
from engine.evaluation.measure import (
    ProgressFn,
    embed_texts,
    ensure_available,
    load_measured,
    measure_model,
)
from engine.evaluation.runs import EvalRun, load_run, save_run
from engine.evaluation.scoring import load_use_cases, rank

if TYPE_CHECKING:
    from engine.engine import Engine

HEADER = ("genre", "filename", "year", "sid", "score", "sentence1", "sentence2")


@dataclass(frozen=True)
class StsPairs:
    path: Path
    first: list[str]
    second: list[str]
    scores: list[float]


def load_sts(path: Path, *, limit: int | None = None) -> StsPairs:
    """Pairs from an `sts-*.tsv` file; `limit` keeps the first N pairs."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"STS file {path} not found")
    first: list[str] = []
    second: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if lineno == 1:
                if tuple(parts[: len(HEADER)]) != HEADER:
                    raise DatasetError(
                        f"{path}:1: expected the header {' '.join(HEADER)} (TAB-separated)"
                    )
                continue
            if not line.strip():
                continue
            if len(parts) < len(HEADER):
                raise DatasetError(
                    f"{path}:{lineno}: expected {len(HEADER)} TAB-separated columns, "
                    f"got {len(parts)}"
                )
            try:
                gold = float(parts[4])
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
            a, b = parts[5].strip(), parts[6].strip()
            if not a or not b:
                raise DatasetError(f"{path}:{lineno}: a sentence is empty")
            first.append(a)
            second.append(b)
            scores.append(gold)
            if limit is not None and len(scores) >= limit:
                break
    if len(scores) < 2:
        raise DatasetError(f"{path} needs at least 2 scored pairs for a correlation")
    return StsPairs(path, first, second, scores)


def spearman(predicted: Sequence[float], gold: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, gold).statistic)


async def evaluate_model(
    engine: Engine, pairs: StsPairs, name: str, progress: ProgressFn | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    memory = await load_measured(engine, name)
    sentences = list(dict.fromkeys([*pairs.first, *pairs.second]))
    position = {s: i for i, s in enumerate(sentences)}
    embedded = await embed_texts(engine, name, sentences, phase="sentences", progress=progress)
    a = embedded.vectors[[position[s] for s in pairs.first]]
    b = embedded.vectors[[position[s] for s in pairs.second]]
    cosine = np.sum(a * b, axis=1)
    detail = await engine.embeddings.encode_detailed(sentences, name)
    figures = await measure_model(
        engine,
        name,
        corpus=sentences,
        embedded=embedded,
        queries=pairs.first,
        query_tokens=detail.token_counts,
        memory=memory,
        progress=progress,
    )
    model = await engine.embeddings.model(name)
    return {
        "spearman": spearman(cosine.tolist(), pairs.scores),
        **figures,
        "fingerprint": model.fingerprint.to_dict(),
        "sentences_embedded": embedded.embedded,
        "seconds": time.perf_counter() - started,
    }


async def run_sts_eval(
    engine: Engine,
    path: Path,
    models: Sequence[str],
    *,
    limit: int | None = None,
    use_cases: Mapping[str, Mapping[str, Any]] | None = None,
    progress: ProgressFn | None = None,
) -> EvalRun:
    """Evaluate each model on one STS file, rank per use case and save the run."""
    ensure_available(engine, models)
    cases = load_use_cases(engine.config, use_cases)
    pairs = load_sts(path, limit=limit)
    figures = {name: await evaluate_model(engine, pairs, name, progress) for name in models}
    ranking, scores = rank(figures, cases, "spearman")
    payload = {
        "kind": "sts",
        "dataset": pairs.path.parent.name,
        "dataset_path": str(pairs.path.resolve()),
        "split": pairs.path.stem.removeprefix("sts-"),
        "pairs": len(pairs.scores),
        "limit": limit,
        "metrics": ["spearman"],
        "models": figures,
        "use_cases": {n: vars(c) for n, c in cases.items()},
        "ranking": ranking,
        "scores": scores,
    }
    return load_run(save_run(engine.data_dir, payload))
