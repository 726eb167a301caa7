"""A reader of a Milvus index whose collection lags SQLite (a writer died after committing to
SQLite, before its vectors reached the server) still finds every document by keyword.

Only a writer repairs a shared store, so until one runs again a reader sees SQLite's chunks and
the server's vectors as they are. The lag is made for real: the session's Milvus server is
stalled (SIGSTOP) once the writer has opened, so the run commits to SQLite and then fails on
the server, as a run killed at that moment leaves it. The model is the real minilm.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from milvus_server import MilvusServer, settings_for

from engine.config import Config, load_config
from engine.engine import Engine
from engine.index.errors import IndexIncompleteError
from engine.index.progress import IndexProgress
from engine.store import VectorStoreUnavailableError

pytest_plugins = ["milvus_server"]

NAME = "lagging"
WORD = "lantern"
# Indexed while the server answers: the collection holds these.
BEFORE = {
    "harbor.md": "A brass lantern hangs by the harbor door and sways in the wind.",
    "bakery.md": "The bakery opens at dawn with rye loaves and warm rolls.",
    "orchard.md": "Apple trees in the orchard bloom late after a cold spring.",
}
# Committed to SQLite while the server is stalled: the collection never gets them.
AFTER = {
    "attic.md": "An old lantern in the attic still smells of lamp oil.",
    "camp.md": "At camp we hung a lantern from the pine to read the maps.",
    "lighthouse.md": "The keeper trimmed the lantern wick in the tower every dusk.",
    "festival.md": "Paper lantern boats drift down the river at the festival.",
    "mine.md": "Miners carried a safety lantern that dimmed in bad air.",
    "garden.md": "Tomatoes in the garden need stakes once they flower.",
}
WITH_WORD = {n for n, t in {**BEFORE, **AFTER}.items() if re.search(rf"\b{WORD}\b", t)}


def milvus_config(folder: Path, milvus: dict[str, Any]) -> Config:
    folder.mkdir()
    path = folder / "config.yaml"
    path.write_text(json.dumps({"index": {"backend": "milvus", "milvus": milvus}}))
    return load_config(path)


def write(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(f"{text}\n", encoding="utf-8")
    return folder


async def test_a_reader_finds_by_keyword_what_the_collection_lacks(
    milvus_server: MilvusServer, tmp_path: Path, isolated_home: Path
) -> None:
    config, impatient = (
        milvus_config(tmp_path / name, settings_for(milvus_server, **extra))
        for name, extra in (("plain", {}), ("impatient", {"timeout_s": 2}))
    )
    folder = write(tmp_path / "notes", BEFORE)
    pid, server = milvus_server.child_pid, re.escape(milvus_server.uri)
    assert pid is not None
    stalled = False

    def stall_once_open(progress: IndexProgress) -> None:
        nonlocal stalled
        if progress.phase == "scanning" and not stalled:  # the writer has caught up: stall
            os.kill(pid, signal.SIGSTOP)
            stalled = True

    try:
        async with Engine(config) as engine:
            await (await engine.indexes.open_or_create(NAME)).index_path([folder])
        write(folder, AFTER)
        # A short timeout only for the stalled run: creating a collection may take longer.
        async with Engine(impatient) as engine:
            writer = await engine.indexes.open(NAME)
            try:
                with pytest.raises(VectorStoreUnavailableError, match=server):
                    await writer.index_path([folder], progress=stall_once_open)
            finally:
                os.kill(pid, signal.SIGCONT)
        assert stalled

        async with Engine(config) as engine:
            reader = await engine.indexes.open(NAME)
            held = set(reader.vectors.ids().tolist())
            assert reader.stats().documents == len(BEFORE) + len(AFTER)
            assert len(held) == reader.vectors.count == len(BEFORE), "the collection lags"

            for per in ("document", "chunk"):
                keyword = await reader.search(WORD, 10, mode="keyword", per=per)
                assert {h.path for h in keyword} == WITH_WORD, per
                hybrid = await reader.search(WORD, 10, mode="hybrid", per=per)
                assert {h.path for h in hybrid} >= WITH_WORD, per
                vector = await reader.search(WORD, 10, mode="vector", per=per)
                assert {h.chunk_id for h in vector} <= held, per
                assert {h.path for h in vector} == set(BEFORE), per
            similar = await reader.more_like_this("harbor.md", 10)
            assert {h.path for h in similar} == set(BEFORE) - {"harbor.md"}
            lagging = sorted(AFTER)[0]
            with pytest.raises(IndexIncompleteError, match="run `embedscope index`"):
                await reader.more_like_this(lagging, 10)

            # A FAISS index of the same files ranks by keyword exactly as the lagging one does.
            clean = await engine.indexes.create("clean", backend="faiss")
            await clean.index_path([folder])
            mine = await reader.search(WORD, 10, mode="keyword")
            theirs = await clean.search(WORD, 10, mode="keyword")
            assert {(h.path, h.score) for h in mine} == {(h.path, h.score) for h in theirs}
            hybrid = await clean.search(WORD, 10, mode="hybrid")
            assert {h.path for h in hybrid} >= WITH_WORD
    finally:
        milvus_server.drop_all_collections()
