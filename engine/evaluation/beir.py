"""BEIR-layout datasets: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.

Documents are `(title + " " + text).strip()` exactly as BEIR and MTEB build them, so our figures
compare with the published ones. The corpus index embeds every chunk through the same function
(`engine.embed_text`), so a document that is one chunk there gets exactly the vector measured here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.embed_text import embedded_text


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file, line and fix."""


@dataclass(frozen=True)
class BeirDataset:
    name: str
    path: Path
    split: str
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    # Judged queries absent from queries.jsonl: they cannot be run, so they are left out.
    missing_queries: int


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path} not found: a BEIR dataset folder needs {path.name}")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object per line")
            for name in fields:
                if name not in row:
                    raise DatasetError(f"{path}:{lineno}: missing field '{name}'")
            if not isinstance(row["_id"], str | int):
                raise DatasetError(f"{path}:{lineno}: '_id' must be a string")
            rows.append(row)
    if not rows:
        raise DatasetError(f"{path} holds no records")
    return rows


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Graded judgments as TREC tools want them; a header line is optional."""
    if not path.is_file():
        splits = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        hint = f" (splits here: {', '.join(splits)})" if splits else ""
        raise DatasetError(f"qrels file {path} not found{hint}; pick another --split")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if (lineno == 1 and parts[0] == "query-id") or not line.strip():
                continue
            if len(parts) != 3:
                raise DatasetError(
                    f"{path}:{lineno}: expected 3 tab-separated columns "
                    f"(query-id, corpus-id, score), got {len(parts)}"
                )
            try:
                score = int(parts[2])
            except ValueError:
                raise DatasetError(
                    f"{path}:{lineno}: score {parts[2]!r} is not an integer"
                ) from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    if not qrels:
        raise DatasetError(f"{path} holds no judgments")
    return qrels


def load_beir(path: Path, split: str = "test", *, limit_queries: int | None = None) -> BeirDataset:
    """Only judged queries are kept (as BEIR evaluates); `limit_queries` keeps the first N."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path} does not exist")
    if limit_queries is not None and limit_queries < 1:
        raise DatasetError(f"limit_queries must be at least 1, got {limit_queries}")
    qrels = read_qrels(path / "qrels" / f"{split}.tsv")
    corpus = _read_jsonl(path / "corpus.jsonl", ("_id", "text"))
    doc_ids = [str(row["_id"]) for row in corpus]
    doc_texts = [
        embedded_text(str(row.get("title") or ""), str(row["text"] or "")) for row in corpus
    ]
    if len(set(doc_ids)) != len(doc_ids):
        raise DatasetError(f"{path / 'corpus.jsonl'}: document ids are not unique")
    queries = _read_jsonl(path / "queries.jsonl", ("_id", "text"))
    query_ids: list[str] = []
    query_texts: list[str] = []
    for row in queries:
        qid = str(row["_id"])
        if qid not in qrels:
            continue
        text = str(row["text"] or "").strip()
        if not text:
            raise DatasetError(f"{path / 'queries.jsonl'}: query '{qid}' has empty text")
        query_ids.append(qid)
        query_texts.append(text)
    if not query_ids:
        raise DatasetError(
            f"no query in {path / 'queries.jsonl'} has judgments in qrels/{split}.tsv; "
            "check that the query ids match"
        )
    missing = len(set(qrels) - set(query_ids))
    if limit_queries is not None:
        query_ids, query_texts = query_ids[:limit_queries], query_texts[:limit_queries]
    kept = set(query_ids)
    return BeirDataset(
        name=path.name,
        path=path,
        split=split,
        doc_ids=doc_ids,
        doc_texts=doc_texts,
        query_ids=query_ids,
        query_texts=query_texts,
        qrels={q: j for q, j in qrels.items() if q in kept},
        missing_queries=missing,
    )
