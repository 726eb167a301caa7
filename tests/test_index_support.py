"""Shared builders for the corpus-index tests (no tests here).

The cranfield index is built once per process and cached in a module global, so every test file
that imports it shares one cold embedding pass; later indexes copy its embedding cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DATASETS

from engine.config import Config, load_config
from engine.engine import Engine

CRANFIELD = DATASETS / "cranfield" / "corpus.jsonl"
CRAN_NAME = "cranfield"


def config_for(data_dir: Path) -> Config:
    return dataclasses.replace(load_config(use_user_file=False), data_dir=data_dir)


def cranfield_rows() -> list[dict[str, Any]]:
    """Cranfield rows with some text, plus metadata fields that filters can select on.

    Rows 471 and 995 are empty in the dataset and are left out (see test_index_cranfield).
    """
    rows = []
    for line in CRANFIELD.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if not (row["text"].strip() or row["title"].strip()):
            continue
        num = int(row["_id"])
        rows.append({**row, "num": num, "bucket": f"b{num % 10}"})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def copy_cache(src_data_dir: Path, dst_data_dir: Path) -> None:
    """Warm a new data dir with another's embedding cache (what a second index would reuse).

    Databases go through SQLite's backup API: a file copy of a WAL database is torn when a
    connection left open by an earlier test's pool thread checkpoints during the copy."""
    src, dst = src_data_dir / "cache", dst_data_dir / "cache"
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name.endswith((".db-wal", ".db-shm")):
            continue
        elif path.suffix == ".db":
            target.parent.mkdir(parents=True, exist_ok=True)
            with (
                closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source,
                closing(sqlite3.connect(target)) as copy,
            ):
                source.backup(copy)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


@dataclass(frozen=True)
class CranfieldBuild:
    data_dir: Path
    corpus: Path
    rows: list[dict[str, Any]]
    report: dict[str, Any]


_BUILT: dict[str, CranfieldBuild] = {}


def run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from sync or async test code alike."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def build_cranfield(factory: pytest.TempPathFactory) -> CranfieldBuild:
    """Index cranfield once per process (cold: the slow part of the whole suite)."""
    if CRAN_NAME not in _BUILT:
        root = factory.mktemp("cranfield-session")
        rows = cranfield_rows()
        corpus = write_jsonl(root / "corpus" / "cranfield.jsonl", rows)
        data_dir = root / "data"

        async def build() -> dict[str, Any]:
            async with Engine(config_for(data_dir)) as engine:
                index = await engine.indexes.create(CRAN_NAME, index_type="flat")
                return (await index.index_path([corpus])).to_dict()

        report = run_blocking(build())
        _BUILT[CRAN_NAME] = CranfieldBuild(data_dir, corpus, rows, report)
    return _BUILT[CRAN_NAME]


def assert_agrees(index: Any) -> None:
    """SQLite (the source of truth) and FAISS hold exactly the same chunk ids."""
    sql_ids = index.store.chunk_ids()
    vec_ids = index.vectors.ids()
    assert np.array_equal(np.sort(sql_ids), np.sort(vec_ids)), (
        f"{sql_ids.size} chunk ids in SQLite vs {vec_ids.size} in FAISS"
    )


def ranked(hits: list[Any]) -> list[tuple[str, str, float]]:
    """A result list as (doc key, chunk text, score): comparable across separately built
    indexes, whose chunk ids differ."""
    return [(h.doc_key, h.text, h.score) for h in hits]
