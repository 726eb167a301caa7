"""MetadataStore on real SQLite files: documents, ids, transactions, FTS5, snippets, errors."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from engine.store import (
    SCHEMA_VERSION,
    ChunkIn,
    DocumentIn,
    MetadataStore,
    StoreCorruptError,
    StoreError,
    StoreVersionError,
    fts_query,
)

CRANFIELD = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "datasets"
    / "cranfield"
    / "corpus.jsonl"
)


def make_doc(key: str, *, path: str | None = None, **metadata: object) -> DocumentIn:
    return DocumentIn(
        key=key,
        path=path or key,
        title=f"Title of {key}",
        doc_type="md",
        size=100,
        mtime=1_600_000_000.0,
        content_hash=f"c-{key}",
        file_hash=f"f-{key}",
        metadata=metadata,
    )


def make_chunks(*texts: str) -> list[ChunkIn]:
    chunks, offset = [], 0
    for i, text in enumerate(texts):
        chunks.append(ChunkIn(i, text, offset, offset + len(text), len(text.split())))
        offset += len(text) + 1
    return chunks


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetadataStore]:
    with MetadataStore(tmp_path / "index.db", name="demo") as s:
        yield s


def raw_connection(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- opening, persistence ------------------------------------------------------------------


def test_new_store_uses_wal_and_records_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "index.db"
    with MetadataStore(path) as s:
        assert s.get_meta("schema_version") == SCHEMA_VERSION
        conn = raw_connection(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    with MetadataStore(path) as s:
        _, ids, _ = s.replace_document(make_doc("a.md", author="Ann"), make_chunks("alpha", "beta"))
        s.set_manifest({"model": "minilm", "dim": 384})
    with MetadataStore(path) as s:
        assert s.chunk_ids().tolist() == ids
        doc = s.get_document("a.md")
        assert doc is not None and doc.metadata == {"author": "Ann"} and doc.n_chunks == 2
        assert s.get_manifest() == {"model": "minilm", "dim": 384}


def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    s = MetadataStore(tmp_path / "index.db")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.chunk_ids()


# -- documents and chunks --------------------------------------------------------------------


def test_replace_document_inserts_then_replaces_with_fresh_chunk_ids(store: MetadataStore) -> None:
    doc_id, first, removed = store.replace_document(make_doc("a.md"), make_chunks("one", "two"))
    assert removed == [] and len(first) == 2
    assert store.chunks_of_document("a.md") == first

    doc_id2, second, removed2 = store.replace_document(
        make_doc("a.md", version=2), make_chunks("uno", "dos", "tres")
    )
    assert doc_id2 == doc_id
    assert removed2 == first
    assert min(second) > max(first)
    assert store.chunks_of_document("a.md") == second
    assert store.chunk_texts(second) == ["uno", "dos", "tres"]
    assert store.get_document(doc_id) == store.get_document("a.md")
    assert store.get_document("a.md").metadata == {"version": 2}  # type: ignore[union-attr]
    assert store.stats()["chunks"] == 3


def test_returned_chunk_ids_follow_the_order_given(store: MetadataStore) -> None:
    chunks = make_chunks("zero", "one", "two")
    _, ids, _ = store.replace_document(make_doc("a.md"), [chunks[2], chunks[0], chunks[1]])
    assert store.chunk_texts(ids) == ["two", "zero", "one"]


def test_chunk_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    with MetadataStore(path) as s:
        s.replace_document(make_doc("a.md"), make_chunks("a1", "a2"))
        _, last_ids, _ = s.replace_document(make_doc("b.md"), make_chunks("b1", "b2"))
        assert s.delete_documents(["b.md"]) == last_ids
    # Deleting the highest ids and reopening must not hand them out again.
    with MetadataStore(path) as s:
        _, new_ids, _ = s.replace_document(make_doc("c.md"), make_chunks("c1"))
        assert new_ids[0] > max(last_ids)


def test_delete_cascades_to_chunks_and_keyword_index(store: MetadataStore) -> None:
    store.replace_document(make_doc("keep.md"), make_chunks("turbulent boundary layer"))
    _, gone, _ = store.replace_document(
        make_doc("drop.md"), make_chunks("laminar boundary layer", "supersonic nozzle")
    )
    assert store.delete_documents(["drop.md", "never-existed.md"]) == gone
    assert store.get_document("drop.md") is None
    assert store.chunks_by_ids(gone) == []
    assert store.keyword_search("nozzle", 5) == []
    assert [cid for cid, _ in store.keyword_search("boundary", 5)] == store.chunks_of_document(
        "keep.md"
    )
    conn = raw_connection(store.path)
    assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1
    conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    conn.close()


def test_delete_documents_rejects_a_single_string(store: MetadataStore) -> None:
    with pytest.raises(TypeError, match="collection of keys"):
        store.delete_documents("a.md")


def test_document_hashes_paths_and_iteration(store: MetadataStore) -> None:
    for i in range(3):
        store.replace_document(make_doc(f"faq.jsonl#{i}", path="faq.jsonl"), make_chunks(f"q{i}"))
    store.replace_document(make_doc("notes.md"), make_chunks("n"))
    assert store.documents_for_path("faq.jsonl") == ["faq.jsonl#0", "faq.jsonl#1", "faq.jsonl#2"]
    assert store.documents_for_path("missing.md") == []
    hashes = store.document_hashes()
    assert hashes["notes.md"] == ("c-notes.md", "f-notes.md") and len(hashes) == 4
    assert [d.key for d in store.iter_documents()] == sorted(hashes)


def test_iter_documents_pages_through_many_documents(store: MetadataStore) -> None:
    keys = [f"doc-{i:04d}" for i in range(1234)]
    with store.transaction():
        for key in keys:
            store.replace_document(make_doc(key), make_chunks(key))
    assert [d.key for d in store.iter_documents()] == keys


def test_chunks_by_ids_keeps_input_order_and_skips_missing(store: MetadataStore) -> None:
    _, a, _ = store.replace_document(make_doc("a.md", lang="en"), make_chunks("a0", "a1"))
    _, b, _ = store.replace_document(make_doc("b.md"), make_chunks("b0"))
    rows = store.chunks_by_ids(np.array([b[0], -1, a[1], 10_000, a[0]], dtype=np.int64))
    assert [r.id for r in rows] == [b[0], a[1], a[0]]
    assert [r.text for r in rows] == ["b0", "a1", "a0"]
    first = rows[1]
    assert (first.doc_key, first.ordinal, first.title, first.path) == (
        "a.md",
        1,
        "Title of a.md",
        "a.md",
    )
    assert first.metadata == {"lang": "en"} and first.start == 3 and first.end == 5


def test_chunk_texts_names_missing_ids(store: MetadataStore) -> None:
    _, ids, _ = store.replace_document(make_doc("a.md"), make_chunks("x"))
    with pytest.raises(KeyError, match="999"):
        store.chunk_texts([ids[0], 999])


def test_bad_chunks_and_metadata_are_rejected_with_the_document_key(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match=r"chunk 0 of document 'a.md': duplicate ordinal"):
        store.replace_document(
            make_doc("a.md"), [ChunkIn(0, "x", 0, 1, 1), ChunkIn(0, "y", 1, 2, 1)]
        )
    with pytest.raises(ValueError, match=r"start <= end"):
        store.replace_document(make_doc("a.md"), [ChunkIn(0, "x", 5, 1, 1)])
    with pytest.raises(ValueError, match=r"document 'a.md' is not JSON-serialisable.*datetime"):
        store.replace_document(make_doc("a.md", when=datetime(2020, 1, 1)), make_chunks("x"))
    assert store.stats()["documents"] == 0


def test_meta_values_round_trip_as_json(store: MetadataStore) -> None:
    assert store.get_meta("missing", default=7) == 7
    store.set_meta("state", {"dirty": True, "ids": [1, 2]})
    store.set_meta("state", {"dirty": False})
    assert store.get_meta("state") == {"dirty": False}
    with pytest.raises(ValueError):
        store.set_meta("bad", float("nan"))


def test_stats_counts_documents_chunks_and_bytes(store: MetadataStore) -> None:
    store.replace_document(make_doc("a.md"), make_chunks("a", "b"))
    store.replace_document(make_doc("b.md"), make_chunks("c"))
    stats = store.stats()
    assert (stats["documents"], stats["chunks"]) == (2, 3)
    assert stats["doc_types"] == {"md": 2}
    assert stats["db_bytes"] >= store.path.stat().st_size > 0


# -- transactions and threads ------------------------------------------------------------------


def test_exception_inside_transaction_leaves_nothing(store: MetadataStore) -> None:
    store.replace_document(make_doc("old.md"), make_chunks("old text"))
    before = store.chunk_ids().tolist()
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.replace_document(make_doc("new.md"), make_chunks("new text"))
        store.delete_documents(["old.md"])
        store.set_meta("manifest", {"x": 1})
        raise RuntimeError("boom")
    assert store.chunk_ids().tolist() == before
    assert store.get_document("new.md") is None and store.get_manifest() is None
    assert store.keyword_search("new", 5) == []


def test_failed_replace_keeps_the_previous_version(store: MetadataStore) -> None:
    _, ids, _ = store.replace_document(make_doc("a.md"), make_chunks("original"))
    broken = [ChunkIn(0, "fine", 0, 4, 1), ChunkIn(1, None, 4, 8, 1)]  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.replace_document(make_doc("a.md", version=2), broken)
    assert store.chunks_of_document("a.md") == ids
    assert store.get_document("a.md").metadata == {}  # type: ignore[union-attr]


def test_nested_transaction_rolls_back_only_the_inner_block(store: MetadataStore) -> None:
    with store.transaction():
        store.replace_document(make_doc("outer.md"), make_chunks("o"))
        with pytest.raises(KeyError), store.transaction():
            store.replace_document(make_doc("inner.md"), make_chunks("i"))
            raise KeyError("inner")
    assert [d.key for d in store.iter_documents()] == ["outer.md"]


def test_concurrent_threads_share_the_store_safely(store: MetadataStore) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(25):
                key = f"w{worker}-{i}"
                store.replace_document(make_doc(key), make_chunks(f"text {key}", "more"))
                store.keyword_search("text", 3)
                store.chunks_by_ids(store.chunks_of_document(key))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.stats()["documents"] == 100 and len(store.chunk_ids()) == 200


# -- damaged and foreign files -----------------------------------------------------------------


def test_garbage_file_is_reported_as_corrupt_with_the_repair_command(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    path.write_bytes(np.random.default_rng(1).bytes(64 * 1024))
    with pytest.raises(StoreCorruptError) as info:
        MetadataStore(path, name="papers")
    message = str(info.value)
    assert str(path) in message and "embedscope repair papers" in message


def test_truncated_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    with MetadataStore(path) as s, s.transaction():
        for i in range(200):
            s.replace_document(make_doc(f"d{i}"), make_chunks("lorem ipsum dolor " * 40))
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(StoreCorruptError, match=r"embedscope repair index"):
        MetadataStore(path)


def test_foreign_sqlite_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = raw_connection(path)
    conn.execute("CREATE TABLE things (x)")
    conn.close()
    with pytest.raises(StoreCorruptError, match="missing tables"):
        MetadataStore(path, name="other")


def test_newer_schema_version_names_both_versions_and_the_fixes(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    MetadataStore(path).close()
    conn = raw_connection(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreVersionError) as info:
        MetadataStore(path, name="papers")
    message = str(info.value)
    assert "schema version 99" in message and f"supports version {SCHEMA_VERSION}" in message
    assert "upgrade embedscope" in message and "embedscope rm-index papers" in message
    assert (info.value.found, info.value.supported) == (99, SCHEMA_VERSION)


# -- keyword search on real Cranfield documents ------------------------------------------------


@pytest.fixture(scope="module")
def cranfield(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetadataStore, dict]]:
    rows = [json.loads(line) for line in CRANFIELD.read_text().splitlines()[:400]]
    s = MetadataStore(tmp_path_factory.mktemp("cran") / "cranfield.db", name="cranfield")
    texts: dict[int, str] = {}
    with s.transaction():
        for row in rows:
            text = f"{row['title']}\n{row['text']}"
            doc = DocumentIn(
                key=f"corpus.jsonl#{row['_id']}",
                path="corpus.jsonl",
                title=row["title"],
                doc_type="jsonl",
                size=len(text),
                mtime=0.0,
                content_hash=row["_id"],
                file_hash="f",
                metadata={},
            )
            _, ids, _ = s.replace_document(doc, [ChunkIn(0, text, 0, len(text), len(text.split()))])
            texts[ids[0]] = text
    yield s, texts
    s.close()


@pytest.mark.parametrize("doc_id", ["7", "57", "123", "204", "256", "311", "362", "399"])
def test_keyword_search_ranks_the_document_named_by_its_title_first(
    cranfield: tuple[MetadataStore, dict], doc_id: str
) -> None:
    s, _ = cranfield
    doc = s.get_document(f"corpus.jsonl#{doc_id}")
    assert doc is not None
    hits = s.keyword_search(doc.title, 10)
    assert hits[0][0] == s.chunks_of_document(doc.key)[0]
    scores = [score for _, score in hits]
    assert all(score > 0 for score in scores) and scores == sorted(scores, reverse=True)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_candidate_restriction_returns_k_hits_from_the_candidates(
    cranfield: tuple[MetadataStore, dict],
) -> None:
    s, texts = cranfield
    matching = sorted(i for i, t in texts.items() if "flow" in _words(t))
    unrelated = sorted(
        i for i, t in texts.items() if not any(w.startswith("flow") for w in _words(t))
    )
    rng = np.random.default_rng(0)
    picked = rng.choice(matching, 30, replace=False)
    candidates = np.concatenate([picked, rng.choice(unrelated, 100, replace=False)])

    top = s.keyword_search("flow", 10, candidate_ids=candidates)
    assert len(top) == 10 and {cid for cid, _ in top} <= set(picked.tolist())

    everything = s.keyword_search("flow", 50, candidate_ids=candidates)
    assert sorted(cid for cid, _ in everything) == sorted(picked.tolist())
    # Restriction filters the corpus-wide ranking; it does not re-score.
    full = [hit for hit in s.keyword_search("flow", len(texts)) if hit[0] in set(picked.tolist())]
    assert everything == pytest.approx(full)

    assert s.keyword_search("flow", 5, candidate_ids=np.array([], dtype=np.int64)) == []


@pytest.mark.parametrize(
    "hostile",
    [
        'C++ "foo" AND (x',
        '"',
        "'; DROP TABLE chunks; --",
        "NEAR(wing body, 2)",
        "title:wing",
        "-wing ^body {a b}:c",
        "AND OR NOT",
        "wing*",
        "((((",
        "\u00e9coulement sup\u00e9rsonique \U0001f680 \x00",
        "x" * 5000,
    ],
)
def test_hostile_keyword_input_never_breaks_fts(
    cranfield: tuple[MetadataStore, dict], hostile: str
) -> None:
    s, _ = cranfield
    hits = s.keyword_search(hostile, 5)
    assert hits == s.keyword_search(" ".join(re.findall(r"[^\W_]+", hostile)), 5)
    assert s.stats()["chunks"] == 400


def test_fts_query_quotes_and_ors_terms() -> None:
    assert fts_query('C++ "foo" AND (x') == '"c" OR "foo" OR "and" OR "x"'
    assert fts_query(' ()"* ') is None


def test_keyword_search_matches_other_inflections(cranfield: tuple[MetadataStore, dict]) -> None:
    s, texts = cranfield
    hits = s.keyword_search("slipstreams", 5)
    assert hits and all("slipstream" in texts[cid].lower() for cid, _ in hits)


# -- snippets -----------------------------------------------------------------------------------

LONG_TEXT = (
    "Introduction to wing design. "
    + "Filler sentence about nothing in particular. " * 12
    + "The measured "
    "lift of the swept Wings rose sharply in the slipstream of the propeller, while drag stayed "
    "flat. " + "More filler text follows here. " * 10
)


def test_snippet_windows_the_best_match_and_marks_the_words(store: MetadataStore) -> None:
    _, (cid,), _ = store.replace_document(make_doc("a.md"), make_chunks(LONG_TEXT))
    text, spans = store.snippet(cid, "wing slipstream of the", width=120)
    assert text.startswith("…") and text.endswith("…")
    assert len(text) <= 122
    marked = [text[a:b] for a, b in spans]
    assert marked == ["Wings", "slipstream"]


def test_snippet_without_a_match_gives_leading_text(store: MetadataStore) -> None:
    _, (cid,), _ = store.replace_document(make_doc("a.md"), make_chunks(LONG_TEXT))
    text, spans = store.snippet(cid, "quantum chromodynamics", width=60)
    assert spans == []
    assert text.startswith("Introduction to wing design. Filler") and text.endswith("…")
    assert not text[:-1].endswith(" ") and len(text) <= 61
    assert store.snippet(cid, "", width=60) == (text, [])


def test_snippet_spans_are_case_insensitive_prefix_aware_and_ignore_diacritics(
    store: MetadataStore,
) -> None:
    body = "Heated  plates\nand HEAT flows; the flow near the caf\u00e9 was heating up."
    _, (cid,), _ = store.replace_document(make_doc("a.md"), make_chunks(body))
    text, spans = store.snippet(cid, "heat flows cafe", width=200)
    assert text == "Heated plates and HEAT flows; the flow near the caf\u00e9 was heating up."
    assert [text[a:b] for a, b in spans] == [
        "Heated",
        "HEAT",
        "flows",
        "flow",
        "caf\u00e9",
        "heating",
    ]


def test_snippet_of_unknown_chunk_is_a_key_error(store: MetadataStore) -> None:
    with pytest.raises(KeyError, match="no chunk with id 42"):
        store.snippet(42, "x")


def test_importing_the_store_package_loads_no_heavy_modules() -> None:
    code = "import sys, engine.store; print(sorted({'faiss', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_get_document_accepts_numpy_ids(store: MetadataStore) -> None:
    doc_id, _, _ = store.replace_document(make_doc("a.md"), make_chunks("x"))
    found = store.get_document(np.int64(doc_id))
    assert found is not None and found.key == "a.md"
    assert store.get_document(doc_id + 1) is None and store.get_document("b.md") is None
