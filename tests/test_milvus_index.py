"""A corpus index on a real Milvus server: index, search, update, reopen, migrate, errors.

The server is the session's `milvus_server` (tests/milvus_server.py); the model is the real
minilm. Documents are generated here, with front matter to filter on.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO
from milvus_server import settings_for

from engine.config import Config, load_config
from engine.engine import Engine
from engine.index import CorpusIndex
from engine.index.migrate import STATE, migrate

pytest_plugins = ["milvus_server"]

TOPICS = {
    "tides.md": ("science", "Tides rise and fall twice a day because the Moon pulls the oceans."),
    "stars.md": ("science", "Neutron stars are the collapsed cores of massive stars."),
    "comets.md": ("science", "A comet's tail always points away from the Sun, pushed by wind."),
    "bread.md": ("food", "Sourdough bread needs a lively starter and a long cold proof."),
    "pasta.md": ("food", "Fresh pasta is flour and eggs, kneaded until smooth and rested."),
    "bikes.md": ("sport", "A bicycle chain stretches with wear; replace it before the cassette."),
    "jazz.md": ("music", "Bebop musicians played fast tempos and complex chord changes."),
    "tax.md": ("money", "Index funds keep costs low, and low costs compound over decades."),
}
QUERIES = ("ocean gravity", "baking bread", "space objects")


def write_corpus(folder: Path, extra: int = 0) -> Path:
    """The topics as Markdown with front matter, plus ``extra`` generated notes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (category, text) in TOPICS.items():
        body = f"---\ncategory: {category}\nyear: 2024\n---\n# {name[:-3].title()}\n\n{text}\n"
        (folder / name).write_text(body, encoding="utf-8")
    for i in range(extra):
        (folder / f"note-{i:03d}.md").write_text(
            f"---\ncategory: notes\n---\nNote {i}: item {i * 7 % 13} of list {i % 5}.\n",
            encoding="utf-8",
        )
    return folder


def milvus_config(tmp_path: Path, server: Any, backend: str = "milvus") -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(
        json.dumps({"index": {"backend": backend, "milvus": settings_for(server)}}),
        encoding="utf-8",
    )
    return load_config(path)


def batches(engine: Engine) -> int:
    return int(engine.embeddings.metrics.snapshot().get("minilm", {}).get("batches", 0))


async def ranked(index: CorpusIndex, **kw: Any) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for query in QUERIES:
        for mode in ("vector", "keyword", "hybrid"):
            hits = await index.search(query, 4, mode=mode, **kw)
            out[f"{query}|{mode}"] = [(h.doc_key, round(h.score, 4)) for h in hits]
    return out


@pytest.mark.slow  # the first collection on a fresh server takes ~25 s
async def test_milvus_index_search_update_reopen(
    milvus_server: Any, tmp_path: Path, isolated_home: Path
) -> None:
    config = milvus_config(tmp_path, milvus_server)
    source = write_corpus(tmp_path / "docs")
    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create("mv-life")
        report = await index.index_path([source])
        assert report.added == len(TOPICS) and not report.failed
        assert index.backend == "milvus" and index.manifest["store"]["uri"] == milvus_server.uri
        assert "token" not in index.manifest["store"]
        info = index.vectors.info()
        assert info["backend"] == "milvus" and info["count"] == index.stats().chunks
        assert index.stats().backend == "milvus"
        assert not (index.folder / "vectors.esvs").exists()

        # Every mode, with a filter the server evaluates: only science documents come back.
        for mode in ("vector", "keyword", "hybrid"):
            hits = await index.search("sun and moon", 10, mode=mode, filters=["category=science"])
            assert hits and {h.metadata["category"] for h in hits} == {"science"}
        vector = await index.search("sun and moon", 10, mode="vector", filters=["category=science"])
        assert {h.doc_key for h in vector} == {"tides.md", "stars.md", "comets.md"}
        similar = await index.more_like_this("bread.md", 3)
        assert "bread.md" not in {h.doc_key for h in similar}
        assert similar[0].doc_key == "pasta.md"
        only_food = await index.more_like_this("bread.md", 5, filters=["category=food"])
        assert [h.doc_key for h in only_food] == ["pasta.md"]
        on_milvus = await ranked(index)

        # Unchanged: no model call and no store write (the generation stays).
        generation = index.vectors.generation
        again = await index.index_path([source])
        assert again.model_calls == 0 and again.chunks_embedded == 0
        assert again.unchanged == len(TOPICS) and index.vectors.generation == generation

        # One edit, one delete.
        (source / "jazz.md").write_text(
            "---\ncategory: music\n---\n# Jazz\n\nSwing bands played for dancers in ballrooms.\n"
        )
        (source / "tax.md").unlink()
        changed = await index.index_path([source])
        assert (changed.updated, changed.removed) == (1, 1)
        assert index.vectors.count == index.stats().chunks
        keys = {h.doc_key for h in await index.search("index funds costs", 10, mode="vector")}
        assert "tax.md" not in keys and len(keys) == len(TOPICS) - 1
        top = await index.search("ballroom dancing", 1, mode="vector")
        assert top[0].doc_key == "jazz.md"
        final = index.vectors.generation
        assert final == index.store.get_meta("generation") and final > generation

    # The same results from a FAISS index of the same files.
    write_corpus(tmp_path / "docs2")
    async with Engine(config) as engine:
        local = await engine.indexes.open_or_create("mv-local", backend="faiss")
        await local.index_path([tmp_path / "docs2"])
        assert local.backend == "faiss"
        assert await ranked(local) == on_milvus

        # Reopened: same generation on both sides, so nothing is listed or re-added.
        reopened = await engine.indexes.open("mv-life")
        assert reopened.vectors.generation == reopened.store.get_meta("generation") == final
        top = await reopened.search("ballroom dancing", 1, mode="vector")
        assert top[0].doc_key == "jazz.md"
        await engine.indexes.remove("mv-life")
        await engine.indexes.remove("mv-local")


async def test_migrate_round_trip_keeps_results_without_model_calls(
    milvus_server: Any, tmp_path: Path, isolated_home: Path
) -> None:
    config = milvus_config(tmp_path, milvus_server, backend="faiss")
    source = write_corpus(tmp_path / "docs")
    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create("mv-move")
        await index.index_path([source])
        assert index.backend == "faiss"
        before = await ranked(index)
        filtered = await ranked(index, filters=["category=science,food"])
        calls = batches(engine)

        async with index.writing():
            there = await migrate(index, "milvus", config.store_settings("milvus"))
        assert there["from"] == "faiss" and there["to"] == "milvus"
        assert there["chunks"] == there["copied"] == index.stats().chunks
        assert not there["resumed"]
        assert index.manifest["backend"] == "milvus"
        assert not (index.folder / "vectors.esvs").exists()
        assert not (index.folder / STATE).exists()
        assert await ranked(index) == before
        assert await ranked(index, filters=["category=science,food"]) == filtered

        reopened = await engine.indexes.open("mv-move")
        assert reopened.backend == "milvus"
        assert await ranked(reopened) == before

        async with reopened.writing():
            with pytest.raises(Exception, match="already on milvus"):
                await migrate(reopened, "milvus", config.store_settings("milvus"))
            back = await migrate(reopened, "faiss", config.store_settings("faiss"))
        assert back["checksum"] == there["checksum"]
        assert reopened.backend == "faiss" and (reopened.folder / "vectors.esvs").is_file()
        assert await ranked(reopened) == before
        assert batches(engine) == calls, "a migration copies stored vectors, never embeds"

    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server.uri, dedicated=True)
    try:
        assert not any("mv_move" in c for c in client.list_collections())
    finally:
        client.close()
    async with Engine(config) as engine:
        assert (await engine.indexes.open("mv-move")).backend == "faiss"
        await engine.indexes.remove("mv-move")


def embedscope(config: Path, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "--config", str(config), *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow  # two CLI processes
async def test_migrate_killed_mid_copy_resumes_and_verifies(
    milvus_server: Any, tmp_path: Path, isolated_home: Path
) -> None:
    config = milvus_config(tmp_path, milvus_server, backend="faiss")
    source = write_corpus(tmp_path / "docs", extra=40)
    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create("mv-kill")
        await index.index_path([source])
        chunks = index.stats().chunks
        before = await ranked(index)

    config_file = tmp_path / "config.yaml"
    proc = embedscope(config_file, "migrate", "mv-kill", "--to", "milvus", "--batch", "2")
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("migrate mv-kill: "):
            done = int(line.split()[2].split("/")[0])
            if done >= 4:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert done < chunks, "the copy finished before it could be killed"

    folder = isolated_home / "indexes" / "mv-kill"
    assert json.loads((folder / "manifest.json").read_text())["backend"] == "faiss"
    assert (folder / STATE).is_file() and (folder / "vectors.esvs").is_file()
    async with Engine(config) as engine:  # the source is untouched and still serves
        index = await engine.indexes.open("mv-kill")
        assert index.backend == "faiss" and await ranked(index) == before

    resumed = embedscope(config_file, "migrate", "mv-kill", "--to", "milvus", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert result["resumed"] and result["chunks"] == chunks and result["copied"] < chunks
    ids = np.sort(np.asarray(index_ids(folder), dtype=np.int64))
    assert result["checksum"] == hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()
    async with Engine(config) as engine:
        index = await engine.indexes.open("mv-kill")
        assert index.backend == "milvus" and index.vectors.count == chunks
        assert await ranked(index) == before
        await engine.indexes.remove("mv-kill")


def index_ids(folder: Path) -> list[int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{folder / 'meta.sqlite'}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM chunks")]
    finally:
        conn.close()


def test_server_down_is_one_clear_line(tmp_path: Path, isolated_home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"index": {"milvus": {"uri": uri, "timeout_s": 2}}}))
    docs = write_corpus(tmp_path / "docs")
    proc = embedscope(config, "index", str(docs), "--name", "down", "--backend", "milvus")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("embedscope index: ") and uri in lines[0]


@pytest.mark.slow  # stops and starts the real server
def test_readyz_names_a_milvus_index_whose_server_cannot_be_reached(
    milvus_server: Any, tmp_path: Path, isolated_home: Path
) -> None:
    import asyncio

    import httpx
    from serve_harness import running

    from engine.serve.app import ServeOptions

    config = milvus_config(tmp_path, milvus_server)

    async def build() -> None:
        async with Engine(config) as engine:
            index = await engine.indexes.open_or_create("mv-ready")
            await index.index_path([write_corpus(tmp_path / "docs")])

    asyncio.run(build())
    with running(ServeOptions(config, indexes=("mv-ready",))) as served:
        ready = httpx.get(f"{served.url}/readyz", timeout=60)
        assert ready.status_code == 200 and ready.json()["reasons"] == [], ready.text
        uri = milvus_server.uri
        milvus_server.stop()
        try:
            ready = httpx.get(f"{served.url}/readyz", timeout=120)
        finally:
            milvus_server.start()
        assert ready.status_code == 503, ready.text
        (reason,) = ready.json()["reasons"]
        assert reason.startswith("index 'mv-ready': ") and uri in reason, reason
        alive = httpx.get(f"{served.url}/healthz", timeout=60)
        assert alive.status_code == 200, "not ready is not dead"
