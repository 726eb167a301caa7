"""Retrieval evaluation as BEIR and MTEB do it: one vector per document, exact inner product.

Every figure is document-level: a ranking of distinct corpus documents scored against the qrels.
The chunked corpus index is deliberately not used: the published figures embed each document once
(`embedded_text`, as the index embeds a one-chunk document), truncated at the model window, and
search all of them exhaustively. `index_eval` scores an index's own document search the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.evaluation.beir import BeirDataset, load_beir
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
    from pathlib import Path

    from engine.engine import Engine

TOP_K = 100
# Our names -> ir_measures names (pytrec_eval semantics, as BEIR; MRR via the msmarco provider).
METRICS = {
    "ndcg@10": "nDCG@10",
    "recall@10": "R@10",
    "recall@100": "R@100",
    "mrr@10": "RR@10",
    "map@100": "AP@100",
}
QUERY_BLOCK = 512


def exhaustive_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int = TOP_K
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best documents per query, best first (exact inner product)."""
    k = min(k, docs.shape[0])
    all_idx = np.empty((queries.shape[0], k), dtype=np.int64)
    all_scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        sims = queries[start : start + QUERY_BLOCK] @ docs.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        all_idx[start : start + QUERY_BLOCK] = np.take_along_axis(part, order, axis=1)
        all_scores[start : start + QUERY_BLOCK] = np.take_along_axis(part_scores, order, axis=1)
    return all_idx, all_scores


def to_run(
    query_ids: Sequence[str], doc_ids: Sequence[str], idx: np.ndarray, scores: np.ndarray
) -> dict[str, dict[str, float]]:
    return {
        qid: {doc_ids[j]: float(s) for j, s in zip(row_idx, row_scores, strict=True)}
        for qid, row_idx, row_scores in zip(query_ids, idx, scores, strict=True)
    }


def score_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Mean of each metric over the judged queries; graded judgments count as graded gains."""
    import ir_measures

    measures = {name: ir_measures.parse_measure(m) for name, m in METRICS.items()}
    agg = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
    return {name: float(agg[m]) for name, m in measures.items()}


async def evaluate_model(
    engine: Engine, dataset: BeirDataset, name: str, progress: ProgressFn | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    memory = await load_measured(engine, name)
    corpus = await embed_texts(engine, name, dataset.doc_texts, progress=progress)
    queries = await embed_texts(
        engine, name, dataset.query_texts, phase="queries", progress=progress
    )
    detail = await engine.embeddings.encode_detailed(dataset.query_texts, name)
    idx, scores = exhaustive_top_k(queries.vectors, corpus.vectors)
    metrics = score_run(dataset.qrels, to_run(dataset.query_ids, dataset.doc_ids, idx, scores))
    docs = corpus.vectors

    def search(vector: np.ndarray) -> np.ndarray:
        sims = docs @ vector
        top = np.argpartition(-sims, min(10, len(sims) - 1))[:10]
        return top[np.argsort(-sims[top])]

    figures = await measure_model(
        engine,
        name,
        corpus=dataset.doc_texts,
        embedded=corpus,
        queries=dataset.query_texts,
        query_tokens=detail.token_counts,
        memory=memory,
        search=search,
        progress=progress,
    )
    model = await engine.embeddings.model(name)
    info = model.info()
    return {
        **metrics,
        **figures,
        "fingerprint": model.fingerprint.to_dict(),
        "dimension": info.dimension,
        "max_seq_length": info.max_seq_length,
        "device": info.device,
        "docs_embedded": corpus.embedded,
        "seconds": time.perf_counter() - started,
    }


async def run_retrieval_eval(
    engine: Engine,
    dataset_path: Path,
    models: Sequence[str],
    *,
    split: str = "test",
    limit_queries: int | None = None,
    use_cases: Mapping[str, Mapping[str, Any]] | None = None,
    progress: ProgressFn | None = None,
) -> EvalRun:
    """Evaluate each model, rank them per use case and save the run; returns the saved run."""
    ensure_available(engine, models)
    cases = load_use_cases(engine.config, use_cases)
    dataset = load_beir(dataset_path, split, limit_queries=limit_queries)
    figures = {name: await evaluate_model(engine, dataset, name, progress) for name in models}
    ranking, scores = rank(figures, cases, "ndcg@10")
    payload = {
        "kind": "retrieval",
        "dataset": dataset.name,
        "dataset_path": str(dataset.path.resolve()),
        "split": split,
        "queries": len(dataset.query_ids),
        "documents": len(dataset.doc_ids),
        "empty_documents": sum(1 for t in dataset.doc_texts if not t.strip()),
        "missing_queries": dataset.missing_queries,
        "limit_queries": limit_queries,
        "metrics": list(METRICS),
        "models": figures,
        "use_cases": {n: vars(c) for n, c in cases.items()},
        "ranking": ranking,
        "scores": scores,
    }
    return load_run(save_run(engine.data_dir, payload))
