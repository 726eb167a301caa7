"""The embedding cache never serves a bad vector, and a full or read-only disk is not damage:
reading commands work, writing ones fail with one clear line, and nothing is moved aside.

The disks are real: a read-only bind mount and a small tmpfs, each in a private mount namespace
(`unshare -m`), so the kernel itself answers EROFS and ENOSPC.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_index_errors import TOPICS, write_notes

from engine.config import Config
from engine.embedding import cache_key
from engine.engine import Engine

FLIPS = {
    # The top exponent bit of a component: 0.05 becomes ~1.7e37, a finite vector of norm ~1e37.
    "exponent bit": lambda word: word ^ (1 << 30),
    # Exponent all ones: the component reads as inf.
    "inf": lambda word: (word & 0x80000000) | 0x7F800000,
}


def cache_db(config: Config) -> Path:
    return config.data_dir / "cache" / "embeddings" / "v1" / "cache.db"


def damage(db: Path, key: str, flip) -> bytes:
    """Flip bits of the first float of one stored vector, in the file on disk; the length is
    kept, so only a check of the values can notice."""
    with sqlite3.connect(db) as conn:
        (raw,) = conn.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
        (word,) = struct.unpack_from("<I", raw)
        bad = struct.pack("<I", flip(word)) + bytes(raw[4:])
        conn.execute("UPDATE Cache SET value = ? WHERE key = ?", (bad, key))
    return bytes(raw)


def stored(db: Path, key: str) -> bytes:
    with sqlite3.connect(db) as conn:
        return bytes(conn.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()[0])


@pytest.mark.parametrize("flip", FLIPS.values(), ids=FLIPS.keys())
async def test_a_damaged_vector_is_a_miss_and_is_replaced(config: Config, flip) -> None:
    texts = ["the tide comes in", "the tide goes out"]
    async with Engine(config) as engine:
        first = await engine.embeddings.encode(texts)
        engine.embeddings.disk.flush()
        digest = (await engine.embeddings.model()).fingerprint.digest
    key = cache_key(digest, texts[0])
    good = damage(cache_db(config), key, flip)

    async with Engine(config) as engine:
        result = await engine.embeddings.encode_detailed(texts)
        assert result.sources == ["model", "l2"]
        assert engine.embeddings.disk.errors == 1
        engine.embeddings.disk.flush()
    assert np.isfinite(result.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.vectors, first, atol=1e-5)
    fresh = np.frombuffer(stored(cache_db(config), key), dtype=np.float32)
    np.testing.assert_allclose(fresh, np.frombuffer(good, dtype=np.float32), atol=1e-5)

    async with Engine(config) as engine:  # the replacement is served from disk from now on
        assert (await engine.embeddings.encode_detailed(texts)).sources == ["l2", "l2"]


async def test_indexing_after_a_bit_flip_reembeds_that_chunk(config: Config, tmp_path: Path):
    notes = write_notes(tmp_path / "notes")
    async with Engine(config) as engine:
        first = await engine.indexes.create("first")
        await first.index_path([notes])
        engine.embeddings.disk.flush()
        chunk = first.store.chunks_of_document("tides.md")[0]
        (text,) = first.store.chunk_texts(np.array([chunk]))
        digest = first.model.fingerprint.digest
        expected = first.vectors.fetch(np.array([chunk]))
    damage(cache_db(config), cache_key(digest, text), FLIPS["exponent bit"])

    async with Engine(config) as engine:
        second = await engine.indexes.create("second")
        report = await second.index_path([notes])
        assert report.added == len(TOPICS) and not report.failed
        assert engine.embeddings.metrics.snapshot()["minilm"]["misses"] == 1
        ids = second.vectors.ids()
        vectors = second.vectors.fetch(ids)
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        again = second.store.chunks_of_document("tides.md")[0]
        np.testing.assert_allclose(second.vectors.fetch(np.array([again])), expected, atol=1e-5)


# -- real read-only and full disks ---------------------------------------------------------------


def namespace_prefix() -> list[str]:
    """`unshare -m` (root) or `unshare -rm` (a user namespace): mounts that vanish with the
    script, never touching the host. Skips, naming why, where neither is allowed."""
    tried = []
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        if shutil.which(prefix[0]) is None:
            pytest.skip("unshare(1) is not installed: cannot make a real read-only or full disk")
        probe = subprocess.run(
            [*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>&1 || exit 1"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            return prefix
        tried.append(f"{' '.join(prefix)}: {probe.stdout.strip() or probe.stderr.strip()}")
    pytest.skip(f"no mount namespace to make a real read-only or full disk: {'; '.join(tried)}")


def cli_line(out: Path, name: str, *args: str) -> str:
    """One shell line running `embedscope ARGS`, its output and status kept in `out`."""
    argv = shlex.join([sys.executable, "-m", "tui.cli", *args])
    o, e, rc = (shlex.quote(str(out / f"{name}.{s}")) for s in ("out", "err", "rc"))
    return f"{argv} >{o} 2>{e}; echo $? >{rc}"


def result(out: Path, name: str) -> tuple[int, str, str]:
    return (
        int((out / f"{name}.rc").read_text()),
        (out / f"{name}.out").read_text(),
        (out / f"{name}.err").read_text(),
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-shm", "-wal", ".lock"))
    }


async def build(config: Config, tmp_path: Path) -> tuple[Path, int]:
    async with Engine(config) as engine:
        index = await engine.indexes.create("notes")
        await index.index_path([write_notes(tmp_path / "notes")])
        engine.embeddings.disk.flush()
        return tmp_path / "notes", index.stats().chunks


@pytest.mark.slow  # CLI processes, each loading torch and the model
async def test_reading_commands_work_on_a_read_only_data_dir(
    config: Config, tmp_path: Path
) -> None:
    prefix = namespace_prefix()
    _, chunks = await build(config, tmp_path)
    data = config.data_dir
    before = snapshot(data)
    out = tmp_path / "out"
    out.mkdir()
    d = shlex.quote(str(data))
    script = "\n".join(
        [
            "set -e",
            f"mount --bind {d} {d}",
            f"mount -o remount,bind,ro {d} {d}",
            "set +e",
            f"touch {d}/probe 2>{shlex.quote(str(out / 'probe.err'))}",
            cli_line(out, "info", "info", "--name", "notes", "--json"),
            cli_line(out, "search", "search", "volcanic ash and lava", "-n", "notes", "-k", "3"),
            cli_line(out, "list", "info"),
        ]
    )
    subprocess.run([*prefix, "sh", "-c", script], cwd=REPO, check=True, timeout=600)
    assert "Read-only file system" in (out / "probe.err").read_text()

    rc, stdout, stderr = result(out, "info")
    assert rc == 0, stderr
    info = json.loads(stdout)
    assert info["chunks"] == info["vectors"]["count"] == chunks
    rc, stdout, stderr = result(out, "search")
    assert rc == 0 and stdout.count("[") == 3, stderr
    for name in ("info", "search"):
        lines = result(out, name)[2].splitlines()
        assert lines == [
            f"embedding cache at {data}/cache/embeddings/v1 cannot be written (the file system "
            "is read-only); reading it only, new embeddings are kept in memory for this run"
        ]
    assert result(out, "list")[0] == 0
    assert snapshot(data) == before
    assert not list(data.rglob("*damaged*"))


@pytest.mark.slow  # CLI processes, each loading torch and the model
async def test_a_full_disk_is_one_clear_message_and_loses_nothing(
    config: Config, tmp_path: Path
) -> None:
    prefix = namespace_prefix()
    notes, chunks = await build(config, tmp_path)
    (notes / "volcano.md").write_text("# Volcano\n\nAsh clouds cool the climate.\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    full = shlex.quote(str(disk))
    home = disk / "data"
    script = "\n".join(
        [
            "set -e",
            f"mount -t tmpfs -o size=32m tmpfs {full}",
            f"cp -a {shlex.quote(str(config.data_dir))} {full}/data",
            f"export EMBEDSCOPE_HOME={shlex.quote(str(home))}",
            "set +e",
            f"dd if=/dev/zero of={full}/filler bs=4k 2>/dev/null",
            cli_line(out, "search", "search", "volcanic ash and lava", "-n", "notes", "-k", "3"),
            cli_line(out, "info", "info", "--name", "notes", "--json"),
            cli_line(out, "index", "index", str(notes), "--name", "notes"),
            f"cp -a {full}/data {shlex.quote(str(tmp_path / 'after'))}",
            f"rm {full}/filler",
            cli_line(out, "reopen", "info", "--name", "notes", "--json"),
        ]
    )
    subprocess.run([*prefix, "sh", "-c", script], cwd=REPO, check=True, timeout=900)

    rc, stdout, stderr = result(out, "search")
    assert rc == 0 and stdout.count("[") == 3, stderr
    rc, stdout, stderr = result(out, "info")
    assert rc == 0 and json.loads(stdout)["vectors"]["count"] == chunks, stderr
    for name in ("search", "info"):
        stderr = result(out, name)[2]
        assert "Traceback" not in stderr and len(stderr.splitlines()) <= 1, stderr
        assert stderr == "" or "(the disk is full)" in stderr
    rc, stdout, stderr = result(out, "index")
    assert rc == 2 and "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("embedscope index:")]
    assert line == (
        f"embedscope index: the disk is full under {home}; nothing committed before was lost: "
        "free some space and run the command again"
    )
    assert len(stderr.splitlines()) <= 2, stderr  # that line, and the cache's own warning
    after = tmp_path / "after"
    assert not list(after.rglob("*damaged*"))
    assert (after / "cache" / "embeddings" / "v1" / "cache.db").is_file()
    rc, stdout, stderr = result(out, "reopen")
    assert rc == 0, stderr
    info = json.loads(stdout)
    assert info["chunks"] == info["vectors"]["count"] == chunks
