"""Damaged, foreign and newer indexes give a clear error (what, where, the fix), and `repair`
brings back a working index wherever the data allows."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_index_support import assert_agrees, ranked

from engine.config import Config
from engine.engine import Engine
from engine.index import (
    MODES,
    IndexCorruptError,
    IndexModelMismatchError,
    IndexVersionError,
)

NAME = "notes"
TOPICS = {
    "tides.md": "Tides rise and fall twice a day because the Moon's gravity pulls the oceans.",
    "bread.md": "Sourdough bread needs a lively starter, a long cold proof and a very hot oven.",
    "bikes.md": "A bicycle chain stretches with wear; replace it before it ruins the cassette.",
    "stars.md": "Neutron stars are the collapsed cores of massive stars, denser than any nucleus.",
    "tax.md": "Index funds keep costs low, and low costs compound into higher long-run returns.",
    "jazz.md": "Bebop musicians played fast tempos and complex chord changes in small clubs.",
}
QUERIES = ("ocean gravity", "baking sourdough", "cheap investing")


def write_notes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TOPICS.items():
        (folder / name).write_text(f"# {name[:-3].title()}\n\n{text}\n", encoding="utf-8")
    return folder


async def results(engine: Engine) -> dict[str, list[tuple[str, str, float]]]:
    index = await engine.indexes.open(NAME)
    return {f"{q}|{m}": ranked(await index.search(q, 3, mode=m)) for q in QUERIES for m in MODES}


@pytest.fixture
async def built(config: Config, tmp_path: Path) -> dict[str, list[tuple[str, str, float]]]:
    """A small index, closed again; returns its search results before any damage."""
    source = write_notes(tmp_path / "notes")
    async with Engine(config) as engine:
        index = await engine.indexes.create(NAME, index_type="flat")
        report = await index.index_path([source])
        assert report.added == len(TOPICS)
        return await results(engine)


def folder(config: Config) -> Path:
    return config.data_dir / "indexes" / NAME


async def open_error(config: Config, model: str | None = None) -> str:
    async with Engine(config) as engine:
        with pytest.raises(Exception) as info:
            await engine.indexes.open(NAME, model)
    return f"{type(info.value).__name__}: {info.value}"


async def repair_and_compare(config: Config, before: dict) -> dict[str, object]:
    """Repair in a fresh engine (cold memory cache) and check nothing was re-embedded."""
    async with Engine(config) as engine:
        outcome = await engine.indexes.repair(NAME)
        index = await engine.indexes.open(NAME)
        assert_agrees(index)
        assert await results(engine) == before
        assert engine.embeddings.metrics.snapshot()["minilm"]["batches"] <= 1  # the queries
        return outcome


async def test_corrupt_vectors_error_then_repair_from_database(config: Config, built) -> None:
    path = folder(config) / "vectors.esvs"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    message = await open_error(config)
    assert message.startswith(IndexCorruptError.__name__)
    assert str(path) in message and "sha256" in message
    assert f"embedscope repair {NAME}" in message
    async with Engine(config) as engine:
        outcome = await engine.indexes.repair(NAME)
        index = await engine.indexes.open(NAME)
        assert engine.embeddings.metrics.snapshot()["minilm"]["batches"] == 0
        assert_agrees(index)
        assert index.stats().chunks == index.vectors.count > 0
    assert outcome["documents"] == len(TOPICS)
    assert any("vectors rebuilt" in a for a in outcome["actions"])
    async with Engine(config) as engine:
        assert await results(engine) == built


async def test_truncated_database_error_then_repair_from_source(config: Config, built) -> None:
    db = folder(config) / "meta.sqlite"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    message = await open_error(config)
    assert message.startswith(IndexCorruptError.__name__)
    assert str(db) in message and "damaged" in message
    assert f"embedscope repair {NAME}" in message
    outcome = await repair_and_compare(config, built)
    assert any("database was damaged" in a for a in outcome["actions"])
    assert outcome["reindex"]["added"] == len(TOPICS)
    assert outcome["reindex"]["model_calls"] == 0


async def test_other_model_is_refused_with_the_rebuild_command(config: Config, built) -> None:
    message = await open_error(config, model="mpnet")
    assert message.startswith(IndexModelMismatchError.__name__)
    assert "built with model 'minilm', not 'mpnet'" in message
    assert f"`embedscope rm-index {NAME}`" in message and "--model mpnet" in message


async def test_changed_fingerprint_is_refused_then_repaired(config: Config, built) -> None:
    manifest_path = folder(config) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["fingerprint"]["digest"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    message = await open_error(config)
    assert message.startswith(IndexModelMismatchError.__name__)
    assert "different weights or settings" in message
    assert f"embedscope repair {NAME}" in message
    await repair_and_compare(config, built)


async def test_newer_manifest_format_is_refused(config: Config, built) -> None:
    manifest_path = folder(config) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    message = await open_error(config)
    assert message.startswith(IndexVersionError.__name__)
    assert "format version 99" in message and "upgrade embedscope" in message
    assert f"embedscope rm-index {NAME}" in message
    async with Engine(config) as engine:
        with pytest.raises(IndexVersionError):
            await engine.indexes.repair(NAME)
    assert json.loads(manifest_path.read_text())["format_version"] == 99, "left untouched"


async def test_newer_database_schema_is_refused(config: Config, built) -> None:
    db = folder(config) / "meta.sqlite"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.close()
    message = await open_error(config)
    assert message.startswith(IndexVersionError.__name__)
    assert str(db) in message and "schema version 7" in message
    assert "upgrade embedscope" in message and f"embedscope rm-index {NAME}" in message


async def test_cli_repair_restores_a_corrupt_index(config: Config, built) -> None:
    path = folder(config) / "vectors.esvs"
    path.write_bytes(b"ESVS" + b"\0" * 10)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "tui.cli"]
    broken = subprocess.run(
        [*cli, "search", "tides", "--name", NAME],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert broken.returncode == 2
    assert "corrupt" in broken.stderr and f"embedscope repair {NAME}" in broken.stderr
    fixed = subprocess.run(
        [*cli, "repair", NAME, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    payload = json.loads(fixed.stdout)
    assert payload["index"] == NAME and payload["documents"] == len(TOPICS)
    async with Engine(config) as engine:
        assert await results(engine) == built
