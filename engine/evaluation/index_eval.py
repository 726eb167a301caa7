"""A corpus index scored on a BEIR dataset the way users meet it: documents from its own search.

`eval` follows the published protocol (each document embedded once, searched exhaustively), so
its figures compare with papers. This scores `search(per="document")` of an index built from the
dataset's `corpus.jsonl` (chunked, with titles, in each mode) against the same qrels, so the two
can be compared; it also counts the distinct documents each query got back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import mean
from typing import TYPE_CHECKING, Any

from engine.evaluation.beir import BeirDataset, DatasetError
from engine.evaluation.retrieval import score_run

if TYPE_CHECKING:
    from engine.index import CorpusIndex

K = 10
INDEX_METRICS = ("ndcg@10", "recall@10", "mrr@10")
CORPUS_FILE = "corpus.jsonl"


def beir_ids(keys: Sequence[str], dataset: BeirDataset) -> dict[str, str]:
    """Index document key (`corpus.jsonl#<_id>`) -> BEIR id, for the dataset's documents."""
    prefix = f"{CORPUS_FILE}#"
    known = set(dataset.doc_ids)
    ids = {k: k[len(prefix) :] for k in keys if k.startswith(prefix) and k[len(prefix) :] in known}
    if not ids:
        raise DatasetError(
            f"the index holds none of the documents of {dataset.path / CORPUS_FILE}; build it "
            f"from that file: `embedscope index {dataset.path / CORPUS_FILE} --name NAME`"
        )
    return ids


async def evaluate_index(
    index: CorpusIndex,
    dataset: BeirDataset,
    modes: Sequence[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per mode: nDCG@10, recall@10 and MRR@10 of the top 10 documents, and how many distinct
    documents the queries got (`documents_per_query`, `queries_short_of_10`)."""
    keys = [row.key for row in index.store.iter_documents()]
    ids = beir_ids(keys, dataset)
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        run: dict[str, dict[str, float]] = {}
        distinct: list[int] = []
        queries = list(zip(dataset.query_ids, dataset.query_texts, strict=True))
        for done, (qid, text) in enumerate(queries, 1):
            hits = await index.search(text, K, mode=mode, per="document")
            distinct.append(len({h.doc_key for h in hits}))
            # Ranks, not scores: fused scores tie, and the measure must see our order. A
            # document from outside the corpus file keeps its key, so it counts as a miss.
            run[qid] = {ids.get(h.doc_key, h.doc_key): 1.0 / h.rank for h in hits}
            if progress is not None:
                progress(mode, done, len(dataset.query_ids))
        scores = score_run(dataset.qrels, run)
        results[mode] = {
            **{name: scores[name] for name in INDEX_METRICS},
            "documents_per_query": mean(distinct),
            "queries_short_of_10": sum(1 for n in distinct if n < K),
        }
    return results
