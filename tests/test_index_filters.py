"""Filtered search returns exactly k results whenever k chunks match, for every index type."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_index_support import (
    CranfieldBuild,
    assert_agrees,
    build_cranfield,
    config_for,
    copy_cache,
)

from engine.config import Config, load_config
from engine.engine import Engine

pytestmark = pytest.mark.slow  # shares the cranfield session build

QUERY = "pressure distribution on a cone in hypersonic flow"
# ~70 of 1,398 documents: selective, yet well over k chunks.
SELECTIVE = ["num=100..170"]
TINY = ["num=5..7"]
Row = dict[str, Any]
# Each filter with what it means, written against the rows themselves.
FILTERS: list[tuple[list[str] | str, Callable[[Row], bool]]] = [
    (SELECTIVE, lambda r: 100 <= r["num"] <= 170),
    ("bucket=b3", lambda r: r["bucket"] == "b3"),
    ("bucket=b1,b2 num<=400", lambda r: r["bucket"] in {"b1", "b2"} and r["num"] <= 400),
]


@pytest.fixture
def cran(tmp_path_factory: pytest.TempPathFactory) -> CranfieldBuild:
    return build_cranfield(tmp_path_factory)


def small_ivf_config(tmp_path: Path, data_dir: Path) -> Config:
    """The configured nlist (~4*sqrt(n)) only trains past ~24k vectors; a small nlist set in a
    config file makes cranfield's ~1,800 chunks train a real IVF."""
    path = tmp_path / "ivf.yaml"
    path.write_text("index:\n  ivf_nlist: 8\n  ivf_nprobe: 2\n", encoding="utf-8")
    return dataclasses.replace(load_config(path, use_user_file=False), data_dir=data_dir)


def matching_chunks(index, rows: list[Row], keep: Callable[[Row], bool]) -> dict[int, str]:
    """Chunk id -> document key, for the documents whose own fields pass the filter."""
    keys = [f"cranfield.jsonl#{row['_id']}" for row in rows if keep(row)]
    return {chunk_id: key for key in keys for chunk_id in index.store.chunks_of_document(key)}


def best_documents(ranked_chunks: list[int], owner: dict[int, str], k: int) -> list[str]:
    """Documents in the order of their best chunk."""
    return list(dict.fromkeys(owner[c] for c in ranked_chunks))[:k]


def exact_ranking(index, qvec: np.ndarray, candidates: np.ndarray, k: int) -> list[int]:
    """Brute-force cosine over the candidates' stored vectors: what a filter must return."""
    scores = index.vectors.fetch(candidates) @ qvec[0]
    order = np.lexsort((candidates, -scores))[:k]
    return [int(i) for i in candidates[order]]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
async def test_filtered_search_returns_exactly_k(
    cran: CranfieldBuild, tmp_path: Path, index_type: str
) -> None:
    data_dir = tmp_path / "data"
    copy_cache(cran.data_dir, data_dir)
    config = small_ivf_config(tmp_path, data_dir) if index_type == "ivf" else config_for(data_dir)
    async with Engine(config) as engine:
        index = await engine.indexes.create("f", index_type=index_type)
        report = await index.index_path([cran.corpus])
        assert report.model_calls == 0
        # For ivf: trained, which only the configured nlist of 8 allows at this size.
        assert index.vectors.active_type == index_type
        assert_agrees(index)
        qvec = await engine.embeddings.encode([QUERY])
        for filters, keep in FILTERS:
            owner = matching_chunks(index, cran.rows, keep)
            candidates = np.array(sorted(owner), dtype=np.int64)
            assert len(set(owner.values())) > 10
            ranked = exact_ranking(index, qvec, candidates, candidates.size)
            for limit in (index.vectors.exact_candidate_limit, 0):
                # 0 pushes the filter into the HNSW/IVF walk instead of exact scoring.
                index.vectors.exact_candidate_limit = limit
                for mode in ("vector", "hybrid"):
                    for per in ("chunk", "document"):
                        hits = await index.search(QUERY, 10, filters=filters, mode=mode, per=per)
                        where = (filters, limit, mode, per)
                        assert len(hits) == 10, where
                        assert {h.chunk_id for h in hits} <= set(owner), where
                        assert all(keep(h.metadata) for h in hits), where
                        if per == "document":
                            assert len({h.doc_key for h in hits}) == 10, where
                if limit or index_type == "flat":  # exact scoring; IVF's walk is approximate
                    vector = await index.search(
                        QUERY, 10, filters=filters, mode="vector", per="chunk"
                    )
                    assert [h.chunk_id for h in vector] == ranked[:10], (filters, limit)
                    docs = await index.search(QUERY, 10, filters=filters, mode="vector")
                    assert [h.doc_key for h in docs] == best_documents(ranked, owner, 10)
        tiny = matching_chunks(index, cran.rows, lambda r: 5 <= r["num"] <= 7)
        assert 0 < len(tiny) < 10
        hits = await index.search(QUERY, 10, filters=TINY, mode="vector", per="chunk")
        assert sorted(h.chunk_id for h in hits) == sorted(tiny)
        assert {h.metadata["num"] for h in hits} <= {5, 6, 7}
        assert await index.search(QUERY, 10, filters=["num>5000"]) == []


async def test_filtered_keyword_search_fills_k_from_matching_documents(
    cran: CranfieldBuild,
) -> None:
    async with Engine(config_for(cran.data_dir)) as engine:
        index = await engine.indexes.open("cranfield")
        hits = await index.search("flow", 10, filters=SELECTIVE, mode="keyword")
        assert len(hits) == 10
        assert all(100 <= h.metadata["num"] <= 170 for h in hits)
        assert all("flow" in h.text.lower() for h in hits)
        batches = engine.embeddings.metrics.snapshot().get("minilm", {}).get("batches", 0)
        assert batches == 0, "keyword search must not call the model"
