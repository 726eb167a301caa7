"""Search results and the fusion of vector and keyword rankings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["vector", "keyword", "hybrid"]
MODES: tuple[Mode, ...] = ("vector", "keyword", "hybrid")
# What one result is: a document (its best chunk standing for it) or a chunk.
Per = Literal["document", "chunk"]
PERS: tuple[Per, ...] = ("document", "chunk")


@dataclass
class SearchHit:
    rank: int
    score: float
    chunk_id: int
    doc_key: str
    title: str
    path: str
    snippet: str
    # (start, end) spans of matched query terms inside `snippet`.
    highlights: list[tuple[int, int]]
    text: str
    page: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per document: how many of the document's chunks ranked among the chunks searched to find
    # the k documents (fused: in either ranking); the chunk shown is the best of them. Per
    # chunk: 1.
    matched_chunks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchResults(list[SearchHit]):
    """Hits in rank order. When the query model could not embed (a remote endpoint down), the
    hits are keyword results: `degraded` is "keyword" and `reason` says why; otherwise both are
    None. A list, so callers that only want the hits need no change."""

    def __init__(
        self,
        hits: Sequence[SearchHit] = (),
        *,
        degraded: Mode | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(hits)
        self.degraded = degraded
        self.reason = reason


def check_per(per: str) -> Per:
    if per not in PERS:
        raise ValueError(f"unknown result unit {per!r}; choose one of {', '.join(PERS)}")
    return per  # type: ignore[return-value]


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int, rrf_k: int = 60
) -> list[tuple[int, float]]:
    """Fuse ranked id lists by 1/(rrf_k + rank): robust to the incomparable score scales of
    BM25 and cosine, which is why hybrid search uses ranks, not scores."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    fused = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return fused[:k]
