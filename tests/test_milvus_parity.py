"""The index, search, filter and snapshot tests on Milvus as well as FAISS.

Two ways, neither copying a test:
- tests of other files are collected here a second time, with conftest's `config` overridden
  to put every index they make on the session's real Milvus server (their FAISS runs stay in
  their own files), so the same assertions hold on both backends;
- the tests written here take `backend_config`, parametrized over faiss and milvus.

Corpora are small and generated; the model is the real minilm. References are computed here:
filters from the generated rows themselves, vector rankings by brute force over stored vectors.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_document_results
import test_index_files
import test_index_search
import test_ingest
from milvus_server import MilvusServer, settings_for
from test_index_support import assert_agrees, config_for, copy_cache, run_blocking
from test_milvus_index import TOPICS, write_corpus

from engine.cli import build_parser, run
from engine.config import Config, load_config
from engine.engine import Engine
from engine.index import MODES, CorpusIndex

pytest_plugins = ["milvus_server"]

# ------------------------------------------------------- other files' tests, on Milvus

test_search_input_errors_are_clear = test_index_search.test_search_input_errors_are_clear
test_more_like_this_excludes_the_source = test_index_search.test_more_like_this_excludes_the_source
test_two_named_indexes_side_by_side = test_index_search.test_two_named_indexes_side_by_side
test_documents_each_once_by_their_best_chunk_in_every_mode = (
    test_document_results.test_documents_each_once_by_their_best_chunk_in_every_mode
)
test_filters_and_more_like_this_count_documents = (
    test_document_results.test_filters_and_more_like_this_count_documents
)
test_good_files_indexed_bad_files_reported = (
    test_index_files.test_good_files_indexed_bad_files_reported
)
test_folder_left_out_keeps_its_documents = test_index_files.test_folder_left_out_keeps_its_documents
test_folder_indexing_keeps_documents_given_by_key = (
    test_ingest.test_folder_indexing_keeps_documents_given_by_key
)


def write_config(folder: Path, server: MilvusServer | None) -> Path:
    """A config file: new indexes on ``server`` (None: FAISS, the default)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    index = {"backend": "milvus", "milvus": settings_for(server)} if server else {}
    path.write_text(json.dumps({"index": index}), encoding="utf-8")
    return path


@pytest.fixture
def milvus_config_file(
    milvus_server: MilvusServer, isolated_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A config file putting new indexes on the session's server, whose collections are
    dropped after the test."""
    yield write_config(tmp_path_factory.mktemp("config"), milvus_server)
    milvus_server.drop_all_collections()


@pytest.fixture
def config(milvus_config_file: Path) -> Config:
    """Overrides conftest's `config` for the tests collected above: index.backend is milvus."""
    return load_config(milvus_config_file)


@pytest.fixture(params=["faiss", "milvus"])
def backend_config(
    request: pytest.FixtureRequest,
    isolated_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """The path of a config whose new indexes go to each backend in turn."""
    server = request.getfixturevalue("milvus_server") if request.param == "milvus" else None
    yield write_config(tmp_path_factory.mktemp("config"), server)
    if server is not None:
        server.drop_all_collections()


# ------------------------------------------------------------------------- filters

N_DOCS = 600  # bucket=7 is 2%: 12 documents, more than k
K = 10
KINDS = ("alpha", "beta", "gamma")
SUBJECTS = (
    "tides and the pull of the moon",
    "sourdough bread and its starter",
    "bicycle gears and chains",
    "neutron stars and supernovae",
    "jazz chords and improvisation",
    "index funds and their costs",
)
FIRST_MTIME = datetime(2020, 6, 1, 12, tzinfo=UTC).timestamp()
Row = dict[str, Any]


def write_filter_corpus(root: Path) -> list[Row]:
    """One short note (one chunk) per document, with front matter, folders and mtimes to
    filter on; returns what each holds, the filters' reference."""
    rows = []
    for i in range(N_DOCS):
        rel = f"area{i % 6}/note-{i:03d}.md"
        row: Row = {
            "path": rel,
            "bucket": i % 50,
            "year": 2000 + i % 25,
            "kind": KINDS[i % 3],
            "published": (date(2020, 1, 1) + timedelta(days=2 * i)).isoformat(),
            "tags": ["even" if i % 2 == 0 else "odd", f"t{i % 7}"],
            "title": f"Note {i}",
            "mtime": FIRST_MTIME + i * 86_400.0,
        }
        body = (
            f"---\nbucket: {row['bucket']}\nyear: {row['year']}\nkind: {row['kind']}\n"
            f"published: {row['published']}\ntags: [{', '.join(row['tags'])}]\n---\n"
            f"# {row['title']}\n\nNote {i} is about {SUBJECTS[i % len(SUBJECTS)]}: "
            f"observation {i * 7 % 31} of series {i % 11}, page {i % 13}.\n"
        )
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        os.utime(path, (row["mtime"], row["mtime"]))
        row["size"] = len(body.encode())
        rows.append(row)
    return rows


def local_day(mtime: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(mtime))


# Every operator, on front matter and on the document columns; each with what it means.
FILTERS: list[tuple[list[str], Callable[[Row], bool]]] = [
    (["bucket=7"], lambda r: r["bucket"] == 7),
    (["kind=alpha,beta"], lambda r: r["kind"] in {"alpha", "beta"}),
    (["kind!=alpha"], lambda r: r["kind"] != "alpha"),
    (["year>=2010", "year<2015"], lambda r: 2010 <= r["year"] < 2015),
    (["year>2020"], lambda r: r["year"] > 2020),
    (["year<=2003"], lambda r: r["year"] <= 2003),
    (["year=2005..2009"], lambda r: 2005 <= r["year"] <= 2009),
    (["year=2022.."], lambda r: r["year"] >= 2022),
    (["published>=2021-03-01"], lambda r: r["published"] >= "2021-03-01"),
    (
        ["published=2020-02-01..2020-06-30"],
        lambda r: "2020-02-01" <= r["published"] <= "2020-06-30",
    ),
    (["mtime<2021-01-01"], lambda r: local_day(r["mtime"]) < "2021-01-01"),
    (
        ["mtime=2021-02-01..2021-02-10"],
        lambda r: "2021-02-01" <= local_day(r["mtime"]) <= "2021-02-10",
    ),
    (["path=area3/*"], lambda r: fnmatch.fnmatchcase(r["path"], "area3/*")),
    (["path=area1/note-1?1.md"], lambda r: fnmatch.fnmatchcase(r["path"], "area1/note-1?1.md")),
    (["tags=even", "bucket=1,2,3"], lambda r: "even" in r["tags"] and r["bucket"] in {1, 2, 3}),
    (["title=note 42"], lambda r: r["title"] == "Note 42"),
]
QUERY = "why does sourdough bread need a starter"


@pytest.fixture(scope="module")
def filter_corpus(
    tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> tuple[Path, list[Row], Path]:
    """The corpus, written once, and a data dir whose embedding cache holds its chunks, so
    each backend's run indexes it without a model call."""
    root = tmp_path_factory.mktemp("filter-corpus")
    rows = write_filter_corpus(root / "notes")

    async def warm() -> None:
        async with Engine(config_for(root / "warm")) as engine:
            index = await engine.indexes.create("warm")
            await index.index_path([root / "notes"])

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(shared_cache))
        run_blocking(warm())
    return root / "notes", rows, root / "warm"


async def test_every_filter_operator_returns_min_k_matching_documents_ranked_exactly(
    backend_config: Path, filter_corpus: tuple[Path, list[Row], Path], isolated_home: Path
) -> None:
    notes, rows, warm = filter_corpus
    copy_cache(warm, isolated_home)
    async with Engine(load_config(backend_config)) as engine:
        index = await engine.indexes.create("filters")
        report = await index.index_path([notes])
        assert report.added == N_DOCS and not report.failed and report.model_calls == 0
        assert index.stats().chunks == N_DOCS, "one chunk per document"
        assert_agrees(index)
        qvec = (await engine.embeddings.encode([QUERY]))[0]
        median = sorted(r["size"] for r in rows)[N_DOCS // 2]
        by_size = ([f"size>{median}"], lambda r: r["size"] > median)
        for filters, keep in [*FILTERS, by_size]:
            keys = {r["path"] for r in rows if keep(r)}
            assert keys, filters
            owner = {c: key for key in keys for c in index.store.chunks_of_document(key)}
            candidates = np.array(sorted(owner), dtype=np.int64)
            scores = index.vectors.fetch(candidates) @ qvec
            best = np.sort(scores)[::-1][:K]
            want = min(K, len(keys))
            for per in ("document", "chunk"):
                hits = await index.search(QUERY, K, filters=filters, mode="vector", per=per)
                assert len(hits) == want, (filters, per)
                assert {h.doc_key for h in hits} <= keys, (filters, per)
                assert len({h.doc_key for h in hits}) == want
                # Exactly the best matching chunks (scores compared, so near-ties may swap).
                np.testing.assert_allclose([h.score for h in hits], best, atol=1e-5)
                by_id = dict(zip(candidates.tolist(), scores.tolist(), strict=True))
                np.testing.assert_allclose(
                    [h.score for h in hits], [by_id[h.chunk_id] for h in hits], atol=1e-5
                )
            hybrid = await index.search(QUERY, K, filters=filters, mode="hybrid")
            assert len(hybrid) == want and {h.doc_key for h in hybrid} <= keys, filters
            keyword = await index.search("sourdough", K, filters=filters, mode="keyword")
            assert {h.doc_key for h in keyword} <= keys, filters
            assert all("sourdough" in h.text for h in keyword)
        two_percent = await index.search(QUERY, K, filters=["bucket=7"], mode="vector")
        assert len(two_percent) == K and all(h.metadata["bucket"] == 7 for h in two_percent)
        assert await index.search(QUERY, K, filters=["year>3000"]) == []
        like = await index.more_like_this("area1/note-001.md", K, filters=["bucket=7"])
        assert len(like) == K and all(h.metadata["bucket"] == 7 for h in like)


# ----------------------------------------------------------- re-index, info, snapshot


async def test_reindex_reflects_edits_deletes_additions_and_front_matter(
    backend_config: Path, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path / "docs")
    async with Engine(load_config(backend_config)) as engine:
        index = await engine.indexes.create("life")
        await index.index_path([source])
        jazz_before = index.store.chunks_of_document("jazz.md")
        assert (await index.search("bebop tempos", 1, mode="vector"))[0].doc_key == "jazz.md"

        (source / "jazz.md").write_text(
            "---\ncategory: music\n---\n# Jazz\n\nSwing bands played for dancers in ballrooms.\n"
        )
        (source / "tax.md").unlink()
        (source / "kelp.md").write_text(
            "---\ncategory: science\n---\n# Kelp\n\nKelp forests shelter sea otters.\n"
        )
        # Only the front matter changes: filters must see the new value.
        bread = (source / "bread.md").read_text().replace("category: food", "category: baking")
        (source / "bread.md").write_text(bread)
        report = await index.index_path([source])
        assert (report.added, report.updated, report.removed) == (1, 2, 1)
        assert report.unchanged == len(TOPICS) - 3
        assert_agrees(index)
        assert index.vectors.count == index.stats().chunks
        assert not any(index.vectors.contains(int(c)) for c in jazz_before)

        for mode in MODES:
            top = await index.search("ballroom dancing", 1, mode=mode)
            assert top[0].doc_key == "jazz.md" and "ballrooms" in top[0].text, mode
            keys = {h.doc_key for h in await index.search("index funds costs", 20, mode=mode)}
            assert "tax.md" not in keys, mode
        top = await index.search("sea otters", 1, mode="vector")
        assert top[0].doc_key == "kelp.md"
        baking = await index.search("bread", 10, mode="vector", filters=["category=baking"])
        assert [h.doc_key for h in baking] == ["bread.md"]
        food = await index.search("bread", 10, mode="vector", filters=["category=food"])
        assert [h.doc_key for h in food] == ["pasta.md"]
        science = await index.search("ocean", 10, mode="vector", filters=["category=science"])
        assert {h.doc_key for h in science} == {"tides.md", "stars.md", "comets.md", "kelp.md"}

        again = await index.index_path([source])
        assert again.model_calls == 0 and again.unchanged == len(TOPICS)


def cli(config: Path, *args: str) -> int:
    """The CLI's own entry point, in this process (no second model load)."""
    return run(build_parser().parse_args(["--config", str(config), *args]))


async def test_info_reports_backend_and_counts(
    backend_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = json.loads(backend_config.read_text())["index"].get("backend", "faiss")
    async with Engine(load_config(backend_config)) as engine:
        index = await engine.indexes.create("shown")
        await index.index_path([write_corpus(tmp_path / "docs")])
        chunks = index.stats().chunks
    capsys.readouterr()
    assert await asyncio.to_thread(cli, backend_config, "info", "-n", "shown", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["backend"], info["documents"], info["chunks"]) == (backend, len(TOPICS), chunks)
    vectors = info["vectors"]
    assert vectors["count"] == chunks
    if backend == "milvus":
        assert vectors["backend"] == "milvus" and vectors["collection"].startswith("embedscope_")
        assert vectors["memory_bytes"] == 0 and "token" not in vectors["params"]
    else:
        assert vectors["active_type"] == "flat" and vectors["memory_bytes"] > 0
    assert await asyncio.to_thread(cli, backend_config, "info", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)["indexes"]
    assert (listed["name"], listed["backend"], listed["chunks"]) == ("shown", backend, chunks)


async def test_snapshot_of_a_milvus_index_is_refused_in_one_clear_line(
    milvus_config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(milvus_config_file)
    async with Engine(config) as engine:
        index = await engine.indexes.create("kept")
        await index.index_path([write_corpus(tmp_path / "docs")])
        before = [h.doc_key for h in await index.search("space objects", 3)]
    archive = tmp_path / "snap" / "kept.tar.gz"
    capsys.readouterr()
    assert await asyncio.to_thread(cli, milvus_config_file, "snapshot", "kept", str(archive)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("embedscope snapshot: index 'kept' keeps its vectors on a milvus server")
    assert "back the server up" in err and "embedscope migrate kept --to faiss" in err
    assert not archive.exists() and not archive.parent.exists()
    async with Engine(config) as engine:
        index: CorpusIndex = await engine.indexes.open("kept")
        assert [h.doc_key for h in await index.search("space objects", 3)] == before
