"""Issue 3 acceptance on a real corpus: cranfield (1,398 non-empty docs) with the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_index_support import (
    CRAN_NAME,
    CRANFIELD,
    CranfieldBuild,
    assert_agrees,
    build_cranfield,
    config_for,
    copy_cache,
    write_jsonl,
)

from engine.engine import Engine
from engine.index import MODES

pytestmark = pytest.mark.slow  # the session build embeds ~1,800 chunks on CPU

QUERIES = ("boundary layer transition at supersonic speeds", "heat transfer", "wing flutter")


def service_requests(engine: Engine) -> tuple[int, int]:
    """Requests and texts the embedding service was asked for, cache hits included."""
    models = engine.embeddings.metrics.snapshot()
    return (
        sum(m["requests"] for m in models.values()),
        sum(m["texts"] for m in models.values()),
    )


@pytest.fixture
def cran(tmp_path_factory: pytest.TempPathFactory) -> CranfieldBuild:
    return build_cranfield(tmp_path_factory)


def test_the_session_build_indexed_every_row(cran: CranfieldBuild) -> None:
    report = cran.report
    assert report["failed"] == []
    assert report["added"] == len(cran.rows) == 1398
    assert report["chunks_embedded"] >= report["added"]
    assert report["model_calls"] > 0


async def test_raw_cranfield_file_indexes_and_reports_empty_rows(
    cran: CranfieldBuild, isolated_home: Path
) -> None:
    copy_cache(cran.data_dir, isolated_home)
    async with Engine(config_for(isolated_home)) as engine:
        index = await engine.indexes.create("raw", index_type="flat")
        report = await index.index_path([CRANFIELD])
        stats = index.stats()
    assert stats.documents == 1398
    assert sorted(f.reason for f in report.failed) == [
        "line 471: empty row (no title or text)",
        "line 995: empty row (no title or text)",
    ]


async def test_every_document_is_findable(cran: CranfieldBuild) -> None:
    async with Engine(config_for(cran.data_dir)) as engine:
        index = await engine.indexes.open(CRAN_NAME)
        assert_agrees(index)
        missed_keyword, missed_vector = [], []
        for row in cran.rows:
            key = f"cranfield.jsonl#{row['_id']}"
            title = row["title"].strip() or row["text"][:80]
            hits = await index.search(title, 10, mode="keyword")
            if key not in [h.doc_key for h in hits]:
                missed_keyword.append(key)
            # The query text equals the first chunk's embedded text (title and chunk), so its
            # embedding is the stored vector (served from the cache): the document comes first.
            first = index.store.chunk_texts(index.store.chunks_of_document(key)[:1])[0]
            vhits = await index.search(first, 10, mode="vector")
            if key not in [h.doc_key for h in vhits] or vhits[0].score < 0.999:
                missed_vector.append(key)
        batches = engine.embeddings.metrics.snapshot()["minilm"]["batches"]
    # OR-ed BM25 over a short, generic title can rank a cluster of near-duplicate papers
    # (e.g. ten "panel flutter" reports) above the document itself: 17 of 1,398 when written.
    assert len(missed_keyword) <= 0.02 * len(cran.rows), missed_keyword
    assert missed_vector == []
    assert batches == 0, "every chunk text must be served from the embedding cache"


def _search_all(data_dir: str) -> str:
    """Source of a fresh-process run of the same searches, printed as JSON."""
    return (
        "import asyncio, json, dataclasses\n"
        "from pathlib import Path\n"
        "from engine.config import load_config\n"
        "from engine.engine import Engine\n"
        "async def main():\n"
        "    cfg = dataclasses.replace(load_config(use_user_file=False),\n"
        f"                              data_dir=Path({data_dir!r}))\n"
        "    async with Engine(cfg) as engine:\n"
        f"        index = await engine.indexes.open({CRAN_NAME!r})\n"
        "        out = {}\n"
        f"        for q in {QUERIES!r}:\n"
        f"            for mode in {MODES!r}:\n"
        "                hits = await index.search(q, 10, mode=mode)\n"
        "                out[q + '|' + mode] = [[h.chunk_id, h.score] for h in hits]\n"
        "    print(json.dumps(out))\n"
        "asyncio.run(main())\n"
    )


async def test_results_are_deterministic_across_calls_and_processes(cran: CranfieldBuild) -> None:
    here: dict[str, list[list[float]]] = {}
    async with Engine(config_for(cran.data_dir)) as engine:
        index = await engine.indexes.open(CRAN_NAME)
        for q in QUERIES:
            for mode in MODES:
                first = await index.search(q, 10, mode=mode)
                second = await index.search(q, 10, mode=mode)
                assert len(first) == 10
                assert [(h.chunk_id, h.score) for h in first] == [
                    (h.chunk_id, h.score) for h in second
                ]
                here[f"{q}|{mode}"] = [[h.chunk_id, h.score] for h in first]
    proc = subprocess.run(
        [sys.executable, "-c", _search_all(str(cran.data_dir))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == here


async def test_reindex_is_free_and_edit_and_delete_touch_one_document(
    cran: CranfieldBuild, tmp_path: Path
) -> None:
    async with Engine(config_for(cran.data_dir)) as engine:
        index = await engine.indexes.open(CRAN_NAME)
        before = service_requests(engine)
        again = await index.index_path([cran.corpus])
        # Not even a cache hit: unchanged files never reach the embedding service at all.
        assert service_requests(engine) == before
    assert again.model_calls == 0
    assert (again.added, again.updated, again.removed) == (0, 0, 0)
    assert again.unchanged == len(cran.rows)

    data_dir = tmp_path / "data"
    copy_cache(cran.data_dir, data_dir)
    rows = [dict(r) for r in cran.rows]
    corpus = write_jsonl(tmp_path / "copy" / "cran.jsonl", rows)
    target = rows[99]
    key = f"cran.jsonl#{target['_id']}"
    marker = "zyxquartzite resonance of cantilevered hummingbird wings"
    async with Engine(config_for(data_dir)) as engine:
        index = await engine.indexes.create("copy", index_type="flat")
        first = await index.index_path([corpus])
        assert first.model_calls == 0, "a warm embedding cache makes a new index free"
        assert first.added == len(rows)

        # Every chunk must change (reversed words), or an untouched chunk is a cache hit.
        target["text"] = f"{marker}. " + " ".join(reversed(target["text"].split()))
        write_jsonl(corpus, rows)
        misses_before = engine.embeddings.metrics.snapshot()["minilm"]["misses"]
        edited = await index.index_path([corpus])
        misses = engine.embeddings.metrics.snapshot()["minilm"]["misses"] - misses_before
        n_chunks = len(index.store.chunks_of_document(key))
        assert (edited.updated, edited.added, edited.removed) == (1, 0, 0)
        assert edited.unchanged == len(rows) - 1
        assert edited.chunks_embedded == n_chunks
        assert misses == n_chunks >= 1
        assert_agrees(index)
        for mode in MODES:
            hits = await index.search(marker, 5, mode=mode)
            assert hits[0].doc_key == key, mode

        del rows[99]
        write_jsonl(corpus, rows)
        before = service_requests(engine)
        deleted = await index.index_path([corpus])
        assert (deleted.removed, deleted.updated, deleted.added) == (1, 0, 0)
        assert deleted.model_calls == 0
        assert service_requests(engine) == before
        assert index.document(key) is None
        assert_agrees(index)
        for mode in MODES:
            hits = await index.search(marker, 50, mode=mode)
            assert key not in {h.doc_key for h in hits}, mode
            if mode != "keyword":
                assert len(hits) == 50
