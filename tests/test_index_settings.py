"""A run that fails before its first commit pins nothing: a bad chunking setting fails before
anything is written, and an index that holds no documents yet takes today's settings."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_index_concurrency import make_corpus
from test_index_errors import TOPICS, write_notes
from test_index_support import assert_agrees

from engine.config import Config
from engine.engine import Engine
from engine.index import IndexSourceError


def manifest_of(config: Config, name: str) -> dict:
    return json.loads((config.data_dir / "indexes" / name / "manifest.json").read_text())


async def test_bad_chunk_size_fails_before_anything_is_written(
    config: Config, tmp_path: Path
) -> None:
    notes = write_notes(tmp_path / "notes")
    config.raw["index"]["chunk_tokens"] = 5
    async with Engine(config) as engine:
        with pytest.raises(IndexSourceError, match=r"at least 8, got 5.*index\.chunk_tokens"):
            await engine.indexes.open_or_create("notes")
        config.raw["index"]["chunk_tokens"] = 1000
        with pytest.raises(IndexSourceError, match=r"1000 does not fit the model window"):
            await engine.indexes.open_or_create("notes")
        assert not (config.data_dir / "indexes" / "notes").exists(), "nothing was written"
        config.raw["index"]["chunk_tokens"] = 64
        index = await engine.indexes.open_or_create("notes")
        report = await index.index_path([notes])
        assert report.added == len(TOPICS) and not report.failed
    assert manifest_of(config, "notes")["chunk_tokens"] == 64


async def test_an_index_without_documents_takes_todays_settings(
    config: Config, tmp_path: Path
) -> None:
    notes = write_notes(tmp_path / "notes")
    config.raw["index"]["chunk_tokens"] = 32
    config.raw["index"]["chunk_overlap"] = 8
    async with Engine(config) as engine:
        await engine.indexes.open_or_create("notes", index_type="hnsw")
        created = manifest_of(config, "notes")["created"]
        with pytest.raises(IndexSourceError, match="does not exist"):
            await (await engine.indexes.open("notes")).index_path([tmp_path / "missing"])
        again = await engine.indexes.open_or_create("notes", index_type="hnsw")
        assert manifest_of(config, "notes")["created"] == created, "same settings: same index"
        config.raw["index"]["chunk_tokens"] = 48
        fixed = await engine.indexes.open_or_create("notes", index_type="flat")
        assert fixed is not again
        await fixed.index_path([notes])
        assert_agrees(fixed)
    manifest = manifest_of(config, "notes")
    assert (manifest["chunk_tokens"], manifest["index_type"]) == (48, "flat")
    async with Engine(config) as engine:
        config.raw["index"]["chunk_tokens"] = 100
        kept = await engine.indexes.open_or_create("notes")
        assert kept.manifest["chunk_tokens"] == 48, "an index with documents keeps its settings"


def documents_in(db: Path) -> int:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
def test_first_run_killed_before_its_first_commit_pins_nothing(
    isolated_home: Path, tmp_path: Path
) -> None:
    corpus = make_corpus(tmp_path / "corpus", 20)
    first, fixed = tmp_path / "first.yaml", tmp_path / "fixed.yaml"
    first.write_text("index:\n  chunk_tokens: 200\n  chunk_overlap: 16\n")
    fixed.write_text("index:\n  chunk_tokens: 120\n  chunk_overlap: 16\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    folder = isolated_home / "indexes" / "corpus"
    run = [sys.executable, "-m", "tui.cli"]
    proc = subprocess.Popen(
        [*run, "--config", str(first), "index", str(corpus), "--name", "corpus"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (folder / "manifest.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert json.loads((folder / "manifest.json").read_text())["chunk_tokens"] == 200
    assert documents_in(folder / "meta.sqlite") == 0, "killed after its first commit: retry"
    done = subprocess.run(
        [*run, "--config", str(fixed), "index", str(corpus), "--name", "corpus", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["report"]["added"] == 20
    assert json.loads((folder / "manifest.json").read_text())["chunk_tokens"] == 120
    conn = sqlite3.connect(f"{(folder / 'meta.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT max(n_tokens) FROM chunks").fetchone()[0] <= 120
    finally:
        conn.close()
