"""Chunks that leave an index take their vectors out of the embedding cache, unless a chunk of
the index still embeds the same text; checked in the cache's own SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.embedding import cache_key
from engine.engine import Engine

TIDES = "Tides rise and fall twice a day because the Moon's gravity pulls the oceans."
BREAD = "Sourdough bread needs a lively starter, a long proof and a very hot oven."
BONDS = "Index funds spread money over many stocks; bonds pay fixed interest instead."


def entries(folder: Path, keys: dict[str, str]) -> set[str]:
    """Which of the named keys the cache file on disk holds."""
    with sqlite3.connect(folder / "cache.db") as conn:
        return {
            name
            for name, key in keys.items()
            if conn.execute("SELECT count(*) FROM Cache WHERE key = ?", (key,)).fetchone()[0]
        }


async def test_replaced_and_deleted_chunks_leave_the_cache(config, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in {"tides.txt": TIDES, "bread.txt": BREAD, "bonds.txt": BONDS}.items():
        (corpus / name).write_text(text + "\n", encoding="utf-8")
    (corpus / "tides-copy.txt").write_text(TIDES + "\n", encoding="utf-8")
    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create("prune", None, None)
        await index.index_path([corpus])
        digest = index.model.fingerprint.digest

        def keys_of(*docs: str) -> dict[str, str]:
            store = index.store
            return {
                key: cache_key(digest, store.chunk_texts(store.chunks_of_document(key))[0])
                for key in docs
            }

        keys = keys_of("tides.txt", "bread.txt", "bonds.txt")
        engine.embeddings.disk.flush()
        assert entries(engine.embeddings.disk.directory, keys) == set(keys)

        # tides.txt changes but tides-copy.txt still embeds its old text; bread.txt changes;
        # bonds.txt is deleted.
        (corpus / "tides.txt").write_text("Neap tides come with the half moon.\n")
        (corpus / "bread.txt").write_text("Rye bread keeps for a week in a cloth.\n")
        (corpus / "bonds.txt").unlink()
        report = await index.index_path([corpus])
        assert (report.updated, report.removed) == (2, 1)
        engine.embeddings.disk.flush()
        assert entries(engine.embeddings.disk.directory, keys) == {"tides.txt"}
        assert engine.embeddings.memory.get(keys["bread.txt"]) is None
        assert engine.embeddings.memory.get(keys["tides.txt"]) is not None
        # The new texts stay cached, so a repair would embed nothing.
        new = keys_of("tides.txt", "bread.txt")
        assert entries(engine.embeddings.disk.directory, new) == set(new)
