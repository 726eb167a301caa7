"""Filtered search returns exactly k results whenever k chunks match, for every index type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_index_support import (
    CranfieldBuild,
    assert_agrees,
    build_cranfield,
    config_for,
    copy_cache,
)

from engine.engine import Engine
from engine.store.faiss_store import FaissVectorStore

pytestmark = pytest.mark.slow  # shares the cranfield session build

QUERY = "pressure distribution on a cone in hypersonic flow"
# ~70 of 1,398 documents: selective, yet well over k chunks.
SELECTIVE = ["num=100..170"]
TINY = ["num=5..7"]


@pytest.fixture
def cran(tmp_path_factory: pytest.TempPathFactory) -> CranfieldBuild:
    return build_cranfield(tmp_path_factory)


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
    async with Engine(config_for(data_dir)) as engine:
        index = await engine.indexes.create("f", index_type=index_type)
        if index_type == "ivf":
            # The configured nlist (~4*sqrt(n)) only trains past ~24k vectors; a small nlist
            # makes cranfield's ~1,800 chunks train a real IVF.
            index.vectors = FaissVectorStore(384, "ivf", ivf_nlist=8, ivf_nprobe=2)
        report = await index.index_path([cran.corpus])
        assert report.model_calls == 0
        assert index.vectors.active_type == index_type
        assert_agrees(index)
        qvec = await engine.embeddings.encode([QUERY])
        for filters in (SELECTIVE, "bucket=b3", "bucket=b1,b2 num<=400"):
            candidates = index._candidates(filters)
            assert candidates is not None and candidates.size > 10
            expected = exact_ranking(index, qvec, candidates, 10)
            for limit in (index.vectors.exact_candidate_limit, 0):
                # 0 pushes the filter into the HNSW/IVF walk instead of exact scoring.
                index.vectors.exact_candidate_limit = limit
                for mode in ("vector", "hybrid"):
                    hits = await index.search(QUERY, 10, filters=filters, mode=mode)
                    assert len(hits) == 10, (filters, limit, mode)
                    assert {h.chunk_id for h in hits} <= set(candidates.tolist())
                vector = await index.search(QUERY, 10, filters=filters, mode="vector")
                if limit or index_type == "flat":  # exact scoring; IVF's walk is approximate
                    assert [h.chunk_id for h in vector] == expected, (filters, limit)
        tiny = index._candidates(TINY)
        assert tiny is not None and 0 < tiny.size < 10
        hits = await index.search(QUERY, 10, filters=TINY, mode="vector")
        assert sorted(h.chunk_id for h in hits) == sorted(tiny.tolist())
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
