"""Search input errors, more-like-this, and two named indexes side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_index_errors import TOPICS, write_notes

from engine.config import Config
from engine.engine import Engine
from engine.index import CorpusIndexError, IndexSourceError

OTHER = {
    "volcano.md": "Volcanic eruptions throw ash high into the stratosphere and cool the climate.",
    "coral.md": "Coral reefs bleach when warm water makes the corals expel their algae.",
    "sonata.md": "A sonata contrasts two themes, develops them, then brings them back home.",
}


async def test_search_input_errors_are_clear(config: Config, tmp_path: Path) -> None:
    async with Engine(config) as engine:
        index = await engine.indexes.create("notes")
        await index.index_path([write_notes(tmp_path / "notes")])
        with pytest.raises(ValueError, match="the query is empty"):
            await index.search("   ")
        with pytest.raises(ValueError, match="unknown search mode 'fuzzy'; choose one of vector"):
            await index.search("tides", mode="fuzzy")
        with pytest.raises(ValueError, match="k must be at least 1, got 0"):
            await index.search("tides", 0)
        with pytest.raises(ValueError, match=r"bad filter '=x'.*Expected key=value"):
            await index.search("tides", filters=["=x"])
        with pytest.raises(ValueError, match=r"bad filter 'size>=big'"):
            await index.search("tides", filters="size>=big")
        with pytest.raises(KeyError, match=r"no document 'nope\.md' in index 'notes'"):
            await index.more_like_this("nope.md")
        with pytest.raises(KeyError, match="no chunk 999999"):
            await index.more_like_this(999999)


async def test_more_like_this_excludes_the_source(config: Config, tmp_path: Path) -> None:
    source = write_notes(tmp_path / "notes")
    (source / "moon.md").write_text("# Moon\n\nThe Moon's pull drives ocean tides.\n")
    async with Engine(config) as engine:
        index = await engine.indexes.create("notes")
        await index.index_path([source])
        batches = engine.embeddings.metrics.snapshot()["minilm"]["batches"]
        by_doc = await index.more_like_this("tides.md", 3)
        assert "tides.md" not in {h.doc_key for h in by_doc}
        assert by_doc[0].doc_key == "moon.md"
        assert len(by_doc) == 3
        chunk_id = index.store.chunks_of_document("moon.md")[0]
        by_chunk = await index.more_like_this(chunk_id, 10)
        assert "moon.md" not in {h.doc_key for h in by_chunk}
        assert by_chunk[0].doc_key == "tides.md"
        assert len(by_chunk) == len(TOPICS)
        filtered = await index.more_like_this("tides.md", 10, filters=["path=b*"])
        assert {h.doc_key for h in filtered} == {"bread.md", "bikes.md"}
        after = engine.embeddings.metrics.snapshot()["minilm"]["batches"]
        assert after == batches, "more-like-this uses stored vectors, not the model"


async def test_two_named_indexes_side_by_side(config: Config, tmp_path: Path) -> None:
    notes = write_notes(tmp_path / "notes")
    other = tmp_path / "other"
    other.mkdir()
    for name, text in OTHER.items():
        (other / name).write_text(text + "\n", encoding="utf-8")
    async with Engine(config) as engine:
        a = await engine.indexes.create("a")
        b = await engine.indexes.create("b", index_type="hnsw")
        await a.index_path([notes])
        await b.index_path([other])
        assert engine.indexes.names() == ["a", "b"]
        assert {s.name: s.documents for s in engine.indexes.summaries()} == {
            "a": len(TOPICS),
            "b": len(OTHER),
        }
        hits_a = await a.search("volcanic ash", 10)
        hits_b = await b.search("volcanic ash", 10)
        assert {h.doc_key for h in hits_a} <= set(TOPICS)
        assert {h.doc_key for h in hits_b} == set(OTHER)
        assert hits_b[0].doc_key == "volcano.md"
        with pytest.raises(IndexSourceError, match=r"covers .*notes.*use another name"):
            await a.index_path([other])
        with pytest.raises(CorpusIndexError, match="index 'a' already exists"):
            await engine.indexes.create("a")
        with pytest.raises(CorpusIndexError, match="is not allowed"):
            await engine.indexes.create("../escape")
        await engine.indexes.remove("a")
        assert engine.indexes.names() == ["b"]
        assert (await (await engine.indexes.open("b")).search("sonata", 1))[0].doc_key == (
            "sonata.md"
        )
