"""SIGKILL `embedscope index --backend milvus` while it writes, then run it again: the Milvus
collection must hold exactly SQLite's chunks, each once, with the vectors a clean build has.

Killed twice: during the first build (chunks in SQLite the server may lack), and during a
re-index that edits and deletes files (old chunks on the server that SQLite has dropped). The
server is the session's real one (tests/milvus_server.py); the model is the real minilm.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from milvus_server import MilvusServer, settings_for
from test_index_support import ranked

from engine.config import load_config
from engine.engine import Engine
from engine.index import MODES, CorpusIndex
from engine.store.milvus_store import collection_name

pytest_plugins = ["milvus_server"]

pytestmark = pytest.mark.slow  # four CLI processes, each loading the model

NAME = "crash"
N_DOCS = 900  # one chunk each: several 256-chunk commits to be killed between
WORDS = (
    ("amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "iris", "jade"),
    ("glacier", "orchard", "lantern", "compass", "meadow", "canyon", "beacon", "prairie", "reef"),
    ("drifts", "glows", "erodes", "blooms", "freezes", "echoes", "ripens", "settles", "shifts"),
)
QUERIES = ("a glowing lantern by the harbor", "frozen glacier in a canyon", "orchard in bloom")


def note(i: int, edited: bool = False) -> str:
    a, b, c = (words[i * (3 + n) % len(words)] for n, words in enumerate(WORDS))
    text = f"The {a} {b} {c} at dawn, record {i}; survey {i % 17} noted it twice."
    if edited:
        text = f"Revised record {i}: nobody saw the {b} {c} again after the storm."
    return f"---\nbatch: {i % 9}\n---\n# Record {i}\n\n{text}\n"


def write_notes(root: Path) -> Path:
    for i in range(N_DOCS):
        path = root / f"part{i % 4}" / f"record-{i:03d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(note(i), encoding="utf-8")
    return root


def change_notes(root: Path) -> None:
    """Every 3rd record rewritten (new chunk ids, old ones to remove), every 7th deleted."""
    for i in range(N_DOCS):
        path = root / f"part{i % 4}" / f"record-{i:03d}.md"
        if i % 7 == 3:
            path.unlink()
        elif i % 3 == 0:
            path.write_text(note(i, edited=True), encoding="utf-8")


def generation(db: Path) -> int:
    """SQLite's commit generation, read-only (0 while the database is not there yet)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(json.loads(row[0])) if row else 0
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def index_cli(config: Path, folder: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--config", str(config), "index", str(folder),
         "--name", NAME, "--backend", "milvus", "--json", *extra],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_once_it_commits(proc: subprocess.Popen[str], db: Path, after: int) -> int:
    """SIGKILL as soon as SQLite's generation passes ``after`` (a commit is then on its way to
    the server); returns the generation seen."""
    deadline = time.monotonic() + 300
    while (seen := generation(db)) <= after:
        assert proc.poll() is None, f"index exited before its first commit: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no commit within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return seen


def server_count(server: MilvusServer) -> int:
    """Rows on the server as Milvus counts them (a duplicated primary key counts twice)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, dedicated=True)
    try:
        rows = client.query(
            collection_name(NAME),
            filter="id >= 0",
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"])
    finally:
        client.close()


def finish(config: Path, folder: Path) -> dict[str, Any]:
    proc = index_cli(config, folder)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)["report"]


async def assert_whole(
    index: CorpusIndex, reference: CorpusIndex, server: MilvusServer, documents: int
) -> None:
    """Same chunk ids on both sides, each once; every document's vectors those of a clean
    build; every chunk found by its own vector; the same search results."""
    sql_ids = np.sort(index.store.chunk_ids())
    vec_ids = index.vectors.ids()
    assert index.stats().documents == documents
    assert np.array_equal(vec_ids, sql_ids), f"server {vec_ids.size} ids, SQLite {sql_ids.size}"
    assert server_count(server) == sql_ids.size == np.unique(vec_ids).size, "duplicate rows"
    assert index.vectors.count == sql_ids.size
    expected = {r.key: r.content_hash for r in reference.store.iter_documents()}
    assert {r.key: r.content_hash for r in index.store.iter_documents()} == expected
    mine = index.vectors.fetch(sql_ids)
    for key in expected:
        own = np.asarray(index.store.chunks_of_document(key), dtype=np.int64)
        theirs = np.asarray(reference.store.chunks_of_document(key), dtype=np.int64)
        got = mine[np.searchsorted(sql_ids, own)]
        np.testing.assert_allclose(got, reference.vectors.fetch(theirs), atol=1e-6, err_msg=key)
    _, found = index.vectors.search(mine, 1)
    assert np.array_equal(found[:, 0], sql_ids), "a chunk that its own vector does not find"
    for query in QUERIES:
        for mode in MODES:
            got = ranked(await index.search(query, 10, mode=mode))
            want = ranked(await reference.search(query, 10, mode=mode))
            assert [h[:2] for h in got] == [h[:2] for h in want], (query, mode)
            np.testing.assert_allclose([h[2] for h in got], [h[2] for h in want], atol=1e-5)


async def test_sigkill_mid_index_on_milvus_recovers_exactly(
    milvus_server: MilvusServer, tmp_path: Path, isolated_home: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"index": {"milvus": settings_for(milvus_server)}}))
    folder = write_notes(tmp_path / "notes")
    db = isolated_home / "indexes" / NAME / "meta.sqlite"
    try:
        # 1. Killed during the first build.
        seen = kill_once_it_commits(index_cli(config, folder), db, 0)
        async with Engine(load_config(config)) as engine:
            reader = await engine.indexes.open(NAME)
            assert reader.backend == "milvus"
            assert 0 < reader.stats().documents < N_DOCS, "killed mid-run"
            # A reader never repairs a shared store (only a writer does): what it finds by
            # vector is what the server holds, and only chunks SQLite knows come back.
            stored = server_count(milvus_server)
            assert stored <= reader.stats().chunks
            hits = await reader.search("lantern", 3, mode="vector", per="chunk")
            assert len(hits) == min(3, stored)
        report = finish(config, folder)
        assert report["added"] == N_DOCS - report["unchanged"] and not report["failed"]
        async with Engine(load_config(config)) as engine:
            index = await engine.indexes.open(NAME)
            assert index.vectors.generation == generation(db) >= seen
            reference = await engine.indexes.create("clean", backend="faiss")
            assert (await reference.index_path([folder])).model_calls == 0
            await assert_whole(index, reference, milvus_server, N_DOCS)

        # 2. Killed during a re-index that rewrites and deletes records.
        change_notes(folder)
        kill_once_it_commits(index_cli(config, folder), db, generation(db))
        report = finish(config, folder)
        deleted = len(range(3, N_DOCS, 7))
        assert not report["failed"]
        async with Engine(load_config(config)) as engine:
            index = await engine.indexes.open(NAME)
            reference = await engine.indexes.open("clean")
            assert (await reference.index_path([folder])).model_calls == 0
            await assert_whole(index, reference, milvus_server, N_DOCS - deleted)
            hits = await index.search("nobody saw it again after the storm", 5, mode="vector")
            assert all("Revised record" in h.text for h in hits)
    finally:
        milvus_server.drop_all_collections()
