"""Processes sharing one index: one writer at a time (the other fails naming the holder's pid, or
waits), readers never write, a lock left by a killed process is free again, and the vector file
a writer leaves holds exactly the chunks in SQLite however many readers ran beside it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_index_errors import TOPICS, write_notes
from test_index_support import assert_agrees

from engine.config import Config
from engine.engine import Engine
from engine.fsutil import atomic_write_bytes
from engine.index import IndexLockedError
from engine.index.lock import WriterLock
from engine.store.faiss_store import FaissVectorStore

VOCABULARY = (
    "river mountain engine signal harvest copper lantern theory orbit glacier market violin "
    "protein canal ledger meadow circuit falcon mineral poetry harbor tensor vapor granite "
    "bakery comet fabric garden island jungle kettle ladder magnet needle ocean pepper quartz "
    "rocket saddle timber umbrella valley wagon yeast zephyr anchor bridge candle desert "
    "ember forest galaxy hammer iceberg jacket kernel lemon marble nickel oyster pillar quiver"
)
WORDS = VOCABULARY.split()


def env() -> dict[str, str]:
    """Read when a process starts: the test's own data dir is set by then."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def make_corpus(folder: Path, files: int, words: int = 600, seed: int = 7) -> Path:
    """Files of seeded random sentences; each file of 600 words makes 4 chunks."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        sentences = []
        for _ in range(words // 10):
            sentence = " ".join(rng.choice(WORDS) for _ in range(10))
            sentences.append(sentence.capitalize() + ".")
        text = "\n\n".join(" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6))
        (folder / f"doc-{n:03d}.md").write_text(f"# Document {n}\n\n{text}\n", encoding="utf-8")
    return folder


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_all(procs: list[subprocess.Popen[str]], timeout: float = 600) -> list[float]:
    """Wait for every process; returns when each one ended (monotonic seconds)."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(procs):
        assert time.monotonic() < deadline, "processes did not finish"
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.05)
    return [ended[i] for i in range(len(procs))]


def on_disk_agree(folder: Path) -> int:
    """The vector file holds exactly SQLite's chunk ids; returns how many."""
    vectors = FaissVectorStore.open(folder / "vectors.esvs").ids()
    conn = sqlite3.connect(f"{(folder / 'meta.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        chunks = np.array([r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")])
    finally:
        conn.close()
    assert np.array_equal(vectors, chunks), f"{vectors.size} vectors vs {chunks.size} chunks"
    return int(chunks.size)


@pytest.mark.slow
def test_two_index_processes_one_writes_the_other_names_its_pid(
    isolated_home: Path, tmp_path: Path
) -> None:
    corpus = make_corpus(tmp_path / "corpus", 20)
    procs = [cli("index", str(corpus), "--name", "shared") for _ in range(2)]
    ended = finish_all(procs)
    codes = [p.returncode for p in procs]
    errors = [p.stderr.read() for p in procs]  # type: ignore[union-attr]
    assert sorted(codes) == [0, 2], errors
    loser = codes.index(2)
    winner = procs[1 - loser]
    message = errors[loser]
    assert f"index 'shared' is being written by another process (pid {winner.pid})" in message
    assert "--wait" in message and "Traceback" not in message
    assert ended[loser] < ended[1 - loser], "the refused run fails at once, it does not wait"
    assert on_disk_agree(isolated_home / "indexes" / "shared") > 50


@pytest.mark.slow
def test_two_index_processes_with_wait_both_succeed(isolated_home: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", 20)
    procs = [cli("index", str(corpus), "--name", "shared", "--wait", "--json") for _ in range(2)]
    finish_all(procs)
    outs = [p.stdout.read() for p in procs]  # type: ignore[union-attr]
    errors = [p.stderr.read() for p in procs]  # type: ignore[union-attr]
    assert [p.returncode for p in procs] == [0, 0], errors
    reports = [json.loads(out)["report"] for out in outs]
    # One run indexed everything; the other waited for it and found nothing left to do.
    assert sorted(r["added"] for r in reports) == [0, 20]
    assert sorted(r["unchanged"] for r in reports) == [0, 20]
    assert on_disk_agree(isolated_home / "indexes" / "shared") > 50


READER = """
import asyncio, dataclasses, json, sys, time
from pathlib import Path
from engine.config import load_config
from engine.engine import Engine
from engine.index import IndexManager, IndexNotFoundError

async def main(name, stop):
    cfg = load_config(use_user_file=False)
    searches, waits, errors = 0, 0, []
    async with Engine(cfg) as engine:
        await engine.embeddings.model()
        print("ready", flush=True)
        while not Path(stop).exists():
            manager = IndexManager(cfg, engine.embeddings)
            try:
                index = await manager.open(name)
                await index.search("copper lantern orbit", 5, mode="hybrid")
                searches += 1
            except IndexNotFoundError:
                waits += 1
                await asyncio.sleep(0.05)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                manager.close()
    print(json.dumps({"searches": searches, "waits": waits, "errors": errors}), flush=True)

asyncio.run(main(*sys.argv[1:3]))
"""


@pytest.mark.slow
def test_writer_beside_looping_readers_leaves_every_vector(
    isolated_home: Path, tmp_path: Path
) -> None:
    corpus = make_corpus(tmp_path / "corpus", 70)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, "live", str(stop)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready", reader.stderr.read()  # type: ignore[union-attr]
    writer = cli("index", str(corpus), "--name", "live")
    finish_all([writer])
    assert writer.returncode == 0, writer.stderr.read()  # type: ignore[union-attr]
    searched_while_writing = reader.poll() is None
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0 and searched_while_writing, err[-2000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["errors"] == []
    assert stats["searches"] >= 5, stats
    chunks = on_disk_agree(isolated_home / "indexes" / "live")
    assert 200 < chunks < 350


HOLDER = """
import asyncio, dataclasses, sys
from pathlib import Path
from engine.config import load_config
from engine.engine import Engine

async def main(name):
    async with Engine(load_config(use_user_file=False)) as engine:
        index = await engine.indexes.open(name)
        async with index.writing():
            print("held", flush=True)
            await asyncio.sleep(600)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
async def test_lock_of_a_killed_writer_is_free_again(config: Config, tmp_path: Path) -> None:
    notes = write_notes(tmp_path / "notes")
    async with Engine(config) as engine:
        await (await engine.indexes.create("held")).index_path([notes])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "held"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        async with Engine(config) as engine:
            index = await engine.indexes.open("held")
            with pytest.raises(IndexLockedError, match=f"pid {holder.pid}") as refused:
                await index.index_path([notes])
            assert refused.value.pid == holder.pid
            with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
                await engine.indexes.remove("held")
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=60)
            report = await index.index_path([notes])
            assert report.unchanged == len(TOPICS) and not report.failed
            assert_agrees(index)
            await engine.indexes.remove("held")
            assert engine.indexes.names() == []
    finally:
        holder.kill()
        holder.wait(timeout=60)


async def test_wait_in_the_engine_api(config: Config, tmp_path: Path) -> None:
    notes = write_notes(tmp_path / "notes")
    async with Engine(config) as engine:
        index = await engine.indexes.create("waiting")
        other = WriterLock(index.folder, "waiting")
        await other.acquire()
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
            await index.index_path([notes])
        run = asyncio.create_task(index.index_path([notes], wait=True))
        await asyncio.sleep(1.0)
        assert not run.done(), "a waiting writer does not start while the lock is held"
        other.release()
        report = await asyncio.wait_for(run, 300)
        assert report.added == len(TOPICS)
        assert_agrees(index)


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the index but SQLite's shared-memory and write-ahead-log companions."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if not p.name.endswith(("-shm", "-wal"))
    }


async def test_readers_reconcile_in_memory_and_write_nothing(
    config: Config, tmp_path: Path
) -> None:
    notes = write_notes(tmp_path / "notes")
    async with Engine(config) as engine:
        index = await engine.indexes.create("quiet", index_type="flat")
        await index.index_path([notes])
        folder = index.folder
    # As a writer killed between its SQLite commit and its vector save leaves it.
    path = folder / "vectors.esvs"
    lagging = FaissVectorStore.open(path)
    lagging.remove(lagging.ids()[:3])
    lagging.save(path)
    before = files_of(folder)
    async with Engine(config) as engine:
        reader = await engine.indexes.open("quiet")
        assert_agrees(reader)
        hits = await reader.search("ocean tides", 3, mode="vector")
        assert hits[0].doc_key == "tides.md"
    assert files_of(folder) == before, "a reader wrote to the index"
    # SQLite's read-only connection may create its empty coordination files, never content.
    wal = folder / "meta.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    async with Engine(config) as engine:
        writer = await engine.indexes.open("quiet")
        report = await writer.index_path([notes])
        assert report.unchanged == len(TOPICS)
    assert on_disk_agree(folder) == lagging.count + 3, "the writer saved what readers kept"


async def test_a_reader_turned_writer_catches_up_with_another_writer(
    config: Config, tmp_path: Path
) -> None:
    notes = write_notes(tmp_path / "notes")
    async with Engine(config) as first:
        index = await first.indexes.create("shared", index_type="flat")
        await index.index_path([notes])
    async with Engine(config) as app, Engine(config) as cli_engine:
        reading = await app.indexes.open("shared")  # the app: a reader until it indexes
        (notes / "volcano.md").write_text("# Volcano\n\nMagma rises through vents.\n")
        other = await cli_engine.indexes.open("shared")
        assert (await other.index_path([notes])).added == 1
        report = await reading.index_path([notes])
        assert report.unchanged == len(TOPICS) + 1 and report.added == 0
        assert_agrees(reading)
        count = on_disk_agree(reading.folder)
        assert count == reading.vectors.count == other.vectors.count


def test_atomic_writes_from_many_threads_never_collide(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    failures: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(200):
                atomic_write_bytes(target, f"{n}:{i}".encode() * 100)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    text = target.read_text()
    assert text == text[: len(text) // 100] * 100, "the file is one whole write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
