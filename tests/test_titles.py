"""Titles a loader knows are embedded with every chunk and keyword-searchable, as `eval` embeds
them; an index from before titles upgrades in place and re-embeds only what changed."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_documents import pdf_bytes

from engine.config import Config, load_config
from engine.documents import load_file
from engine.documents.loaders import _content_hash
from engine.embed_text import embedded_text
from engine.engine import Engine
from engine.evaluation.beir import load_beir
from engine.index.corpus import DATABASE, MANIFEST
from engine.store import SCHEMA_VERSION

# Two rows that differ only in their titles; "zanzibar" and "quetzal" appear in titles alone.
ROWS = [
    {"_id": "a", "title": "Zanzibar spice markets", "text": "Cloves are traded every morning."},
    {"_id": "b", "title": "Harbour cranes at dawn", "text": "Cloves are traded every morning."},
    {"_id": "c", "title": "", "text": "A plain row about bicycle chains and cassettes."},
    {"_id": "d", "title": "Only a title, no text", "text": ""},
]


def write_beir(folder: Path) -> Path:
    """A tiny BEIR-layout dataset: what `eval` reads, and a corpus file to index."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "spice trade"}\n', "utf-8")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n", "utf-8")
    return folder


def chunk_vector(index: object, key: str) -> np.ndarray:
    (chunk_id,) = index.store.chunks_of_document(key)  # type: ignore[attr-defined]
    return index.vectors.fetch(np.asarray([chunk_id], dtype=np.int64))[0]  # type: ignore[attr-defined]


async def test_a_beir_row_embeds_what_eval_embeds_and_its_title_is_searchable(
    config: Config, tmp_path: Path
) -> None:
    dataset = write_beir(tmp_path / "tiny")
    async with Engine(config) as engine:
        index = await engine.indexes.create("tiny")
        await index.index_path([dataset / "corpus.jsonl"])
        for mode in ("keyword", "hybrid"):
            hits = await index.search("zanzibar", 5, mode=mode)
            assert hits[0].doc_key == "corpus.jsonl#a", mode
        assert [h.doc_key for h in await index.search("quetzal harbour", 5, mode="keyword")] == [
            "corpus.jsonl#b"
        ]
        # The same text under two titles: two vectors, and the title decides which ranks first.
        hits = await index.search("spice markets of Zanzibar", 4, mode="vector")
        scores = {h.doc_key: h.score for h in hits}
        assert hits[0].doc_key == "corpus.jsonl#a"
        assert scores["corpus.jsonl#a"] - scores["corpus.jsonl#b"] > 0.1
        # Each one-chunk row holds exactly the vector `eval` computes for the same row.
        beir = load_beir(dataset)
        for doc_id, text in zip(beir.doc_ids, beir.doc_texts, strict=True):
            key = f"corpus.jsonl#{doc_id}"
            (chunk_id,) = index.store.chunks_of_document(key)
            assert index.store.chunk_texts([chunk_id]) == [text]
            expected = await engine.embeddings.encode([text])
            np.testing.assert_allclose(chunk_vector(index, key), expected[0], atol=1e-6)
        # A row whose only text is its title is not embedded as "title title".
        assert beir.doc_texts[3] == "Only a title, no text"


async def test_every_loader_that_knows_a_title_indexes_it(config: Config, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "front.md").write_text(
        "---\ntitle: Xylophone tuning\n---\n\nShave the bars underneath to lower the pitch.\n",
        "utf-8",
    )
    (docs / "page.html").write_text(
        "<html><head><title>Quetzal feathers</title></head><body><p>Bright green plumage of "
        "a cloud forest bird.</p></body></html>",
        "utf-8",
    )
    (docs / "table.csv").write_text(
        "id,title,text\n1,Okapi sightings,A shy forest animal with striped legs.\n", "utf-8"
    )
    (docs / "items.json").write_text(
        json.dumps([{"id": "k", "title": "Kinkajou habits", "text": "It eats fruit at night."}]),
        "utf-8",
    )
    (docs / "report.pdf").write_bytes(
        pdf_bytes([["Glaciers carve valleys over thousands of years."]], title="Moraine survey")
    )
    # Titles derived from the body (a heading) or the file name are not indexed as titles.
    (docs / "heading.md").write_text("# Walrus tusks\n\nThey haul out on ice floes.\n", "utf-8")
    (docs / "narwhal-notes.txt").write_text("Sea ice cracks in spring.\n", "utf-8")
    long_title = " ".join(f"word{i}" for i in range(400))
    body = " ".join(f"Sentence {i} about river deltas and sediment." for i in range(300))
    (docs / "long.md").write_text(f"---\ntitle: {long_title}\n---\n\n{body}\n", "utf-8")
    async with Engine(config) as engine:
        index = await engine.indexes.create("docs")
        report = await index.index_path([docs])
        assert not report.failed
        titled = {
            "xylophone": "front.md",
            "quetzal": "page.html",
            "okapi": "table.csv#1",
            "kinkajou": "items.json#k",
            "moraine": "report.pdf",
        }
        for word, key in titled.items():
            hits = await index.search(word, 3, mode="keyword")
            assert [h.doc_key for h in hits] == [key], word
            # The highlight and offsets still refer to the body: the title is not in the text.
            assert word not in hits[0].text.lower()
        assert [h.doc_key for h in await index.search("walrus", 3, mode="keyword")] == [
            "heading.md"
        ]
        assert await index.search("narwhal", 3, mode="keyword") == []
        for key in ("heading.md", "narwhal-notes.txt"):
            ids = index.store.chunks_of_document(key)
            assert index.store.chunk_texts(ids) == [r.text for r in index.store.chunks_by_ids(ids)]
        # Every chunk of a titled document carries the title; title and chunk fit the window,
        # with an over-long title cut to half of it.
        chunker = index._chunker_for()
        ids = index.store.chunks_of_document("long.md")
        assert len(ids) > 3
        rows = index.store.chunks_by_ids(ids)
        for row, text in zip(rows, index.store.chunk_texts(ids), strict=True):
            assert text.startswith("word0 word1 ") and text.endswith(row.text)
            assert chunker.count_tokens(text) <= chunker.max_tokens
            assert chunker.count_tokens(text[: -len(row.text)]) <= chunker.max_tokens // 2 + 1


def downgrade_to_schema_1(
    folder: Path, untitled: dict[int, np.ndarray], hashes: dict[str, str]
) -> None:
    """Rewrite an index as embedscope wrote it before titles: schema 1 (no chunk titles, a
    one-column keyword index), loader version 3, content hashes without titles, and the
    vectors of titled chunks embedded from their text alone."""
    from engine.store.faiss_store import FaissVectorStore

    conn = sqlite3.connect(folder / DATABASE)
    conn.executescript(
        """
        DROP TRIGGER chunks_ai; DROP TRIGGER chunks_ad; DROP TRIGGER chunks_au;
        DROP TABLE chunks_fts;
        ALTER TABLE chunks DROP COLUMN title;
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, content='chunks', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
        END;
        CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END;
        CREATE TRIGGER chunks_au AFTER UPDATE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
            INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
        END;
        INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');
        UPDATE meta SET value = '1' WHERE key = 'schema_version';
        """
    )
    conn.executemany(
        "UPDATE documents SET content_hash = ? WHERE key = ?", [(h, k) for k, h in hashes.items()]
    )
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["loader_version"] = 3
    conn.execute("UPDATE meta SET value = ? WHERE key = 'manifest'", (json.dumps(manifest),))
    conn.commit()
    conn.close()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    vectors = FaissVectorStore.open(folder / "vectors.esvs")
    ids = np.asarray(sorted(untitled), dtype=np.int64)
    vectors.remove(ids)
    vectors.add(ids, np.stack([untitled[i] for i in ids]))
    vectors.save(folder / "vectors.esvs")


async def test_an_index_from_before_titles_upgrades_without_reembedding_unchanged_texts(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    (corpus / "front.md").write_text(
        "---\ntitle: Xylophone tuning\n---\n\nShave the bars underneath to lower the pitch.\n",
        "utf-8",
    )
    (corpus / "heading.md").write_text("# Walrus tusks\n\nThey haul out on ice floes.\n", "utf-8")
    loaded = {d.key: d for f in sorted(corpus.iterdir()) for d in load_file(f, corpus)}
    titled = {key for key, d in loaded.items() if d.indexed_title}
    assert titled == {"corpus.jsonl#a", "corpus.jsonl#b", "front.md"}
    # What an older embedscope stored: hashes without titles, vectors of the bare text.
    old_hashes = {key: _content_hash(d.title, d.text, d.metadata) for key, d in loaded.items()}
    async with Engine(config) as engine:
        index = await engine.indexes.create("old")
        await index.index_path([corpus])
        chunk_ids = {key: index.store.chunks_of_document(key) for key in loaded}
        assert all(len(ids) == 1 for ids in chunk_ids.values())
        hashes = {r.key: r.content_hash for r in index.store.iter_documents()}
        bare = {chunk_ids[key][0]: loaded[key].text for key in sorted(titled)}
        vectors = await engine.embeddings.encode(list(bare.values()))
        folder = index.folder
    # Documents without a title keep the hash they had before titles were indexed.
    assert {k for k in loaded if hashes[k] != old_hashes[k]} == titled
    downgrade_to_schema_1(folder, dict(zip(bare, vectors, strict=True)), old_hashes)

    # A new data dir, so a new embedding cache: every model call below is counted as a miss.
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(tmp_path / "upgraded"))
    config = load_config(use_user_file=False)
    shutil.copytree(folder, config.data_dir / "indexes" / "old")
    async with Engine(config) as engine:
        index = await engine.indexes.open("old")
        # A reader of the old file searches it as it is: keyword search without titles.
        assert [h.doc_key for h in await index.search("walrus", 3, mode="keyword")] == [
            "heading.md"
        ]
        assert await index.search("zanzibar", 3, mode="keyword") == []
        assert "minilm" not in engine.embeddings.metrics.snapshot(), "no text embedded yet"
        report = await index.index_path([corpus])
        assert (report.updated, report.unchanged, report.added) == (3, 3, 0)
        # The model embedded the three titled texts and nothing else.
        assert engine.embeddings.metrics.snapshot()["minilm"]["misses"] == 3
        assert report.chunks_embedded == 3
        assert index.store.get_meta("schema_version") == SCHEMA_VERSION == 2
        for key in set(loaded) - titled:
            assert index.store.chunks_of_document(key) == chunk_ids[key], "untouched"
        for key in titled:
            (chunk_id,) = index.store.chunks_of_document(key)
            (text,) = index.store.chunk_texts([chunk_id])
            assert text == embedded_text(loaded[key].indexed_title, loaded[key].text)
            expected = await engine.embeddings.encode([text])
            np.testing.assert_allclose(chunk_vector(index, key), expected[0], atol=1e-6)
        for word, key in (("zanzibar", "corpus.jsonl#a"), ("xylophone", "front.md")):
            assert [h.doc_key for h in await index.search(word, 3, mode="keyword")] == [key]
        again = await index.index_path([corpus])
        assert again.unchanged == len(loaded) and again.model_calls == 0
    conn = sqlite3.connect(config.data_dir / "indexes" / "old" / DATABASE)
    assert conn.execute(
        "INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)"
    ).fetchall() == []
    conn.close()
