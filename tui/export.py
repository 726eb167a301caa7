"""Write search results to JSONL or CSV: the suffix picks the format."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.index import SearchHit

FIELDS = (
    "rank", "score", "doc_key", "title", "path", "page", "chunk_id", "matched_chunks", "snippet",
    "text",
)  # fmt: skip


def hit_record(hit: SearchHit, query: str) -> dict[str, Any]:
    return {
        "query": query,
        **{name: getattr(hit, name) for name in FIELDS},
        "metadata": hit.metadata,
    }


def default_export_path(query: str, folder: Path | None = None) -> Path:
    """`./embedscope-<query words>.jsonl`: recognisable, and safe as a file name."""
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:40] or "results"
    return (folder or Path.cwd()) / f"embedscope-{slug}.jsonl"


def write_results(hits: Sequence[SearchHit], query: str, path: Path) -> int:
    """Write and return the number of rows; raises ValueError for an unsupported suffix."""
    records = [hit_record(h, query) for h in hits]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    elif suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["query", *FIELDS, "metadata"])
            writer.writeheader()
            for rec in records:
                writer.writerow({**rec, "metadata": json.dumps(rec["metadata"], default=str)})
    else:
        raise ValueError(f"{path}: unsupported export format {suffix!r}; use .jsonl or .csv")
    return len(records)
