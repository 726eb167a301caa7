"""Reference retrieval scores computed without project code (no tests here).

sentence-transformers, numpy and ir-measures only, so a figure the engine reports can be pinned
to one computed independently: a bug in the engine's reading, embedding, ranking or scoring moves
one figure and not the other.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Beir:
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: Qrels


def read_beir(folder: Path, split: str = "test") -> Beir:
    """Documents as BEIR builds them (title + text), and the split's judged queries."""
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()]
    qrels: Qrels = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return Beir(
        doc_ids=[str(r["_id"]) for r in corpus],
        doc_texts=[f"{r.get('title') or ''} {r.get('text') or ''}".strip() for r in corpus],
        queries={str(r["_id"]): r["text"] for r in rows if str(r["_id"]) in qrels},
        qrels=qrels,
    )


def embed(model: Any, texts: Sequence[str]) -> np.ndarray:
    """Unit vectors; an empty text, which has nothing to embed, is a zero vector."""
    out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    filled = [i for i, t in enumerate(texts) if t.strip()]
    if filled:
        out[filled] = model.encode(
            [texts[i] for i in filled], normalize_embeddings=True, convert_to_numpy=True
        )
    return out


def dense_run(
    queries: np.ndarray,
    query_ids: Sequence[str],
    docs: np.ndarray,
    doc_ids: Sequence[str],
    depth: int = 100,
) -> Run:
    """The `depth` best documents per query by exact inner product."""
    scores = queries @ docs.T
    run: Run = {}
    for qid, row in zip(query_ids, scores, strict=True):
        top = np.argsort(-row, kind="stable")[:depth]
        run[qid] = {doc_ids[j]: float(row[j]) for j in top}
    return run


def ndcg_at_10(qrels: Qrels, run: Run) -> float:
    measure = ir_measures.parse_measure("nDCG@10")
    return float(ir_measures.calc_aggregate([measure], qrels, run)[measure])


def beir_ndcg_at_10(model: Any, data: Beir) -> float:
    """nDCG@10 with one vector per document, searched exhaustively (as BEIR and MTEB do)."""
    qids = list(data.queries)
    queries = embed(model, [data.queries[q] for q in qids])
    run = dense_run(queries, qids, embed(model, data.doc_texts), data.doc_ids)
    return ndcg_at_10(data.qrels, run)
