"""SIGKILL an indexing process at random moments: the index must always open, agree with
itself, and finish equal to an uninterrupted run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_index_support import (
    CranfieldBuild,
    assert_agrees,
    build_cranfield,
    config_for,
    copy_cache,
    ranked,
)

from engine.engine import Engine
from engine.index import MODES

pytestmark = pytest.mark.slow

TRIALS = 6
SEED = 20240611
QUERIES = ("shock wave boundary layer interaction", "buckling of cylindrical shells")

WORKER = """
import asyncio, dataclasses, sys, time
from pathlib import Path
from engine.config import load_config
from engine.engine import Engine

async def main(data_dir, name, corpus):
    cfg = dataclasses.replace(load_config(use_user_file=False), data_dir=Path(data_dir))
    async with Engine(cfg) as engine:
        await engine.embeddings.model()
        index = await engine.indexes.open_or_create(name, index_type="flat")
        print("ready", flush=True)
        started = time.perf_counter()
        report = await index.index_path([Path(corpus)])
        print("done", time.perf_counter() - started, report.model_calls, flush=True)

asyncio.run(main(*sys.argv[1:4]))
"""


def start_worker(data_dir: Path, name: str, corpus: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(data_dir), name, str(corpus)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"worker did not start (exit {proc.poll()})"
    return proc


def write_markdown_corpus(folder: Path, rows: list[dict]) -> None:
    """One .md file per document: many files means many commit points to be killed between.
    The body is the jsonl text verbatim, so the session's embedding cache covers every chunk."""
    for row in rows:
        title = row["title"].strip().replace('"', "'") or f"doc {row['_id']}"
        path = folder / f"d{int(row['_id']) % 7}" / f"doc-{row['_id']}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'---\ntitle: "{title}"\n---\n{row["text"]}\n', encoding="utf-8")


async def snapshot_of(index) -> dict[str, object]:
    docs = {row.key: row.content_hash for row in index.store.iter_documents()}
    chunks = {
        key: [r.text for r in index.store.chunks_by_ids(index.store.chunks_of_document(key))]
        for key in docs
    }
    results = {}
    for q in QUERIES:
        for mode in MODES:
            results[f"{q}|{mode}"] = ranked(await index.search(q, 10, mode=mode))
    return {"docs": docs, "chunks": chunks, "results": results}


async def test_sigkill_at_random_moments_recovers(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    cran: CranfieldBuild = build_cranfield(tmp_path_factory)
    corpus = tmp_path / "corpus"
    write_markdown_corpus(corpus, cran.rows[:400])
    data_dir = tmp_path / "data"
    copy_cache(cran.data_dir, data_dir)

    reference = start_worker(data_dir, "reference", corpus)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0
    _, seconds, model_calls = out.split()
    assert int(model_calls) == 0, "the warmed cache must cover the corpus"
    run_s = float(seconds)

    rng = random.Random(SEED)
    # Spread the kills evenly over the run (one per slice), jittered within each slice.
    delays = [run_s * (i + rng.random()) / TRIALS for i in range(TRIALS)]
    outcomes = []
    for trial, delay in enumerate(delays):
        proc = start_worker(data_dir, f"crash-{trial}", corpus)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        outcomes.append(proc.returncode)

    assert outcomes.count(-signal.SIGKILL) >= TRIALS // 2, f"too few kills landed: {outcomes}"
    async with Engine(config_for(data_dir)) as engine:
        expected = await snapshot_of(await engine.indexes.open("reference"))
        assert len(expected["docs"]) == 400
        for trial in range(TRIALS):
            index = await engine.indexes.open(f"crash-{trial}")
            assert_agrees(index)
            report = await index.index_path([corpus])
            assert not report.failed
            assert_agrees(index)
            got = await snapshot_of(index)
            assert got["docs"] == expected["docs"], trial
            assert got["chunks"] == expected["chunks"], trial
            assert got["results"] == expected["results"], trial
        batches = engine.embeddings.metrics.snapshot()["minilm"]["batches"]
    # Only the query texts reach the model; recovery re-embeds chunks from the cache.
    assert batches <= len(QUERIES)


REINDEX_TRIALS = 6


def changed_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(edited, deleted): every 5th document rewritten (reversed words, so every chunk is new)
    and every 7th deleted."""
    deleted = [r for i, r in enumerate(rows) if i % 7 == 3]
    edited = [
        {**r, "text": f"zyx revision {r['_id']}. " + " ".join(reversed(r["text"].split()))}
        for i, r in enumerate(rows)
        if i % 5 == 0 and i % 7 != 3
    ]
    return edited, deleted


def apply_changes(folder: Path, edited: list[dict], deleted: list[dict]) -> None:
    write_markdown_corpus(folder, edited)
    for row in deleted:
        (folder / f"d{int(row['_id']) % 7}" / f"doc-{row['_id']}.md").unlink()


async def test_sigkill_during_a_reindex_of_changed_and_deleted_files_recovers(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    cran: CranfieldBuild = build_cranfield(tmp_path_factory)
    rows = cran.rows[:200]
    edited, deleted = changed_rows(rows)
    original = tmp_path / "original"
    write_markdown_corpus(original, rows)
    data_dir = tmp_path / "data"
    copy_cache(cran.data_dir, data_dir)

    # The edited texts are embedded once up front, so every re-index below runs from the cache
    # at the same pace as the timed reference.
    warm = tmp_path / "warm"
    shutil.copytree(original, warm)
    apply_changes(warm, edited, deleted)
    assert start_worker(data_dir, "warm", warm).wait(timeout=300) == 0

    names = ["reference", *(f"recrash-{t}" for t in range(REINDEX_TRIALS))]
    folders = {name: tmp_path / name for name in names}
    async with Engine(config_for(data_dir)) as engine:
        for name, folder in folders.items():
            shutil.copytree(original, folder)
            index = await engine.indexes.create(name, index_type="flat")
            report = await index.index_path([folder])
            assert report.added == len(rows) and report.model_calls == 0
            before = {row.key: row.content_hash for row in index.store.iter_documents()}
    for folder in folders.values():
        apply_changes(folder, edited, deleted)

    reference = start_worker(data_dir, "reference", folders["reference"])
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0
    _, seconds, model_calls = out.split()
    assert int(model_calls) == 0, "the warmed cache must cover the edited documents"
    run_s = float(seconds)

    rng = random.Random(SEED + 1)
    delays = [run_s * (i + rng.random()) / REINDEX_TRIALS for i in range(REINDEX_TRIALS)]
    outcomes = []
    for trial, delay in enumerate(delays):
        proc = start_worker(data_dir, f"recrash-{trial}", folders[f"recrash-{trial}"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        outcomes.append(proc.returncode)
    assert outcomes.count(-signal.SIGKILL) >= REINDEX_TRIALS // 2, f"too few kills: {outcomes}"

    states = []
    async with Engine(config_for(data_dir)) as engine:
        expected = await snapshot_of(await engine.indexes.open("reference"))
        assert len(expected["docs"]) == len(rows) - len(deleted)
        assert set(expected["docs"]) != set(before)
        for trial in range(REINDEX_TRIALS):
            index = await engine.indexes.open(f"recrash-{trial}")
            assert_agrees(index)
            found = {row.key: row.content_hash for row in index.store.iter_documents()}
            states.append(
                "final" if found == expected["docs"] else "before" if found == before else "partial"
            )
            report = await index.index_path([folders[f"recrash-{trial}"]])
            assert not report.failed
            assert_agrees(index)
            got = await snapshot_of(index)
            assert got["docs"] == expected["docs"], trial
            assert got["chunks"] == expected["chunks"], trial
            assert got["results"] == expected["results"], trial
        batches = engine.embeddings.metrics.snapshot()["minilm"]["batches"]
    assert states.count("final") <= REINDEX_TRIALS // 2, f"kills landed too late: {states}"
    # Only the query texts reach the model; recovery re-embeds chunks from the cache.
    assert batches <= len(QUERIES)
