"""Embedding service on the real MiniLM model: equality with sentence-transformers, caching across
processes, micro-batching, fault isolation and input checks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import python_json

from engine import Engine
from engine.embedding import OverloadedError
from engine.models import EmbeddingModel, Fingerprint, ModelInfo, Truncated


def varied_texts(n: int = 100) -> list[str]:
    base = [
        "The quick brown fox jumps over the lazy dog.",
        "Schrödinger's cat is both alive and dead — until observed.",
        "東京は日本の首都です。",
        "Ελληνικά κείμενα για δοκιμή.",
        "emoji test 🚀🔥 with symbols ∑ ∫ ≤",
        "short",
        "C++ templates & Rust traits: a comparison",
        "Ünïcödé àccents everywhere in thïs sentençe",
    ]
    long_text = " ".join(f"token{i} and some filler words to make it long" for i in range(300))
    texts = [f"{base[i % len(base)]} (variant {i})" for i in range(n - 5)]
    texts += [long_text, long_text + " different tail", "word " * 2000, "ß" * 3000, "a\n\nb\tc"]
    return texts


async def test_matches_sentence_transformers(config, st_minilm) -> None:
    texts = varied_texts()
    expected = st_minilm.encode(texts, normalize_embeddings=True, batch_size=32)
    async with Engine(config) as engine:
        result = await engine.embeddings.encode_detailed(texts)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (100, 384)
    cosines = np.sum(result.vectors * expected, axis=1)
    assert cosines.min() > 0.9999, cosines.argmin()
    assert sum(result.truncated) == sum(c > 254 for c in result.token_counts) == 3
    snap = engine.embeddings.metrics.snapshot()["minilm"]
    assert snap["truncations"] == sum(result.truncated)


async def test_rows_in_input_order_with_duplicates_and_hits(config) -> None:
    async with Engine(config) as engine:
        first = await engine.embeddings.encode(["alpha", "beta"])
        result = await engine.embeddings.encode_detailed(["beta", "gamma", "alpha", "gamma"])
    assert result.sources == ["l1", "model", "l1", "model"]
    assert np.array_equal(result.vectors[0], first[1])
    assert np.array_equal(result.vectors[2], first[0])
    assert np.array_equal(result.vectors[1], result.vectors[3])


SCRIPT = """
import asyncio, json, sys
from engine import Engine, load_config
async def main():
    async with Engine(load_config(use_user_file=False)) as engine:
        r = await engine.embeddings.encode_detailed(json.loads(sys.argv[1]))
        print(json.dumps({"sources": r.sources, "v": r.vectors[:, :4].tolist()}))
asyncio.run(main())
"""


def run_process(texts: list[str]) -> dict:
    return python_json(SCRIPT, json.dumps(texts))


def test_second_process_gets_disk_hits_and_damage_only_misses(isolated_home: Path) -> None:
    texts = ["persisted one", "persisted two", "persisted three"]
    first = run_process(texts)
    assert first["sources"] == ["model"] * 3
    second = run_process(texts)
    assert second["sources"] == ["l2"] * 3
    assert np.allclose(first["v"], second["v"])

    db = next((isolated_home / "cache").rglob("cache.db"))
    import sqlite3

    with sqlite3.connect(db) as conn:  # damage one entry: wrong length
        conn.execute(
            "UPDATE Cache SET value = x'00ff' WHERE rowid = (SELECT min(rowid) FROM Cache)"
        )
    third = run_process(texts)
    assert sorted(third["sources"]) == ["l2", "l2", "model"]

    db.write_bytes(b"this is not a sqlite database" * 100)  # corrupt the whole file
    fourth = run_process(texts)
    assert fourth["sources"] == ["model"] * 3
    assert np.allclose(first["v"], fourth["v"], atol=1e-5)

    for f in (isolated_home / "cache").rglob("*"):  # delete cache files
        if f.is_file():
            f.unlink()
    assert run_process(texts)["sources"] == ["model"] * 3


class MarkerPayload:
    """Unpickling this writes a file: proof that pickle.load ran on cache data."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


async def test_pickled_entry_is_refused_not_loaded(config, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    async with Engine(config) as engine:
        await engine.embeddings.encode(["pickle target"])
        engine.embeddings.disk.flush()
        cache = engine.embeddings.disk._cache
        (key,) = list(cache.iterkeys())
        import pickle
        import sqlite3

        with sqlite3.connect(Path(cache.directory) / "cache.db") as conn:
            conn.execute(  # 4 = diskcache's MODE_PICKLE: fetch() would pickle.load the value
                "UPDATE Cache SET mode = 4, value = ? WHERE key = ?",
                (pickle.dumps(MarkerPayload(marker)), key),
            )
        engine.embeddings.memory = type(engine.embeddings.memory)(1 << 20)
        errors = engine.embeddings.disk.errors
        result = await engine.embeddings.encode_detailed(["pickle target"])
        assert engine.embeddings.disk.errors == errors + 1
    assert not marker.exists(), "the cache unpickled an entry"
    assert result.sources == ["model"]


async def test_64_concurrent_callers_batch_and_get_their_rows(config, st_minilm) -> None:
    texts = [f"concurrent caller number {i} asks about topic {i * 7 % 13}" for i in range(64)]
    expected = st_minilm.encode(texts, normalize_embeddings=True)
    async with Engine(config) as engine:
        await engine.embeddings.encode(["warm the model up"])
        before = engine.embeddings.metrics.snapshot()["minilm"]["batches"]
        rows = await asyncio.gather(*(engine.embeddings.encode([t]) for t in texts))
        batches = engine.embeddings.metrics.snapshot()["minilm"]["batches"] - before
    assert batches < 10
    for row, exp in zip(rows, expected, strict=True):
        assert row.shape == (1, 384)
        assert float(row[0] @ exp) > 0.9999


class FaultyModel(EmbeddingModel):
    """The real MiniLM, except that a batch containing 'BOOM' raises: a fault we cannot cause
    with the real model, injected only at the model boundary. Records every batch it sees."""

    kind = "sentence-transformers"

    def __init__(self, real: EmbeddingModel) -> None:
        self.name = "faulty"
        self._real = real
        self.calls = 0
        self.batches: list[list[str]] = []

    @property
    def fingerprint(self) -> Fingerprint:
        return dataclasses.replace(self._real.fingerprint, name="faulty")

    async def load(self) -> None:
        await self._real.load()

    async def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.batches.append(list(texts))
        if any("BOOM" in t for t in texts):
            raise RuntimeError("injected failure")
        return await self._real.encode(texts)

    def truncate(self, texts: list[str], *, count: bool = True) -> Truncated:
        return self._real.truncate(texts, count=count)

    def info(self) -> ModelInfo:
        return self._real.info()


async def test_failing_batch_fails_only_its_callers(config) -> None:
    async with Engine(config) as engine:
        faulty = FaultyModel(await engine.embeddings.model("minilm"))
        engine.registry.register(faulty)
        svc = engine.embeddings
        await svc.encode(["warm"], "faulty")
        texts = [f"s{i}" for i in range(31)] + ["BOOM"]
        texts += [f"a much longer text for another batch {i}" for i in range(40)]
        results = await asyncio.gather(
            *(svc.encode([t], "faulty") for t in texts), return_exceptions=True
        )
        failing = next(b for b in faulty.batches if "BOOM" in b)
        assert len(faulty.batches) > 2
        for text, result in zip(texts, results, strict=True):
            if text in failing:
                assert isinstance(result, RuntimeError) and str(result) == "injected failure"
            else:
                assert isinstance(result, np.ndarray) and result.shape == (1, 384)
        again = await svc.encode(["after the failure"], "faulty")
        assert again.shape == (1, 384)
        assert svc.metrics.snapshot()["faulty"]["errors"] == 1


async def test_cancelled_callers_are_skipped(config) -> None:
    async with Engine(config) as engine:
        faulty = FaultyModel(await engine.embeddings.model("minilm"))
        engine.registry.register(faulty)
        svc = engine.embeddings
        task = asyncio.create_task(svc.encode(["cancel me please"], "faulty"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The queue is first in, first out: once the next text is embedded, the cancelled one
        # would have been embedded before it or beside it.
        assert (await svc.encode(["still serving"], "faulty")).shape == (1, 384)
        assert any("still serving" in batch for batch in faulty.batches)
        assert not any("cancel me please" in batch for batch in faulty.batches)


async def test_full_queue_answers_overload(config) -> None:
    config.raw["embedding"]["max_queue"] = 10
    async with Engine(config) as engine:
        with pytest.raises(OverloadedError, match="max_queue=10"):
            await engine.embeddings.encode([f"text {i}" for i in range(11)])
        assert engine.embeddings.metrics.snapshot()["minilm"]["overloads"] == 1
        assert (await engine.embeddings.encode(["fits"])).shape == (1, 384)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "non-empty list"),
        ("just a string", "single str"),
        (["ok", 3], r"texts\[1\] is int"),
        (["ok", "fine", ""], r"texts\[2\] is empty"),
        (["   \n\t"], r"texts\[0\] is empty or whitespace"),
        (["ok", None], r"texts\[1\] is NoneType"),
    ],
)
async def test_bad_input_names_the_item(config, texts, message) -> None:
    async with Engine(config) as engine:
        with pytest.raises(ValueError, match=message):
            await engine.embeddings.encode(texts)


async def test_metrics_snapshot_and_prometheus(config) -> None:
    async with Engine(config) as engine:
        await engine.embeddings.encode(["one", "two"])
        await engine.embeddings.encode(["one"])
        snap = engine.embeddings.snapshot()
        text = engine.embeddings.prometheus()
    m = snap["models"]["minilm"]
    assert (m["requests"], m["texts"], m["misses"], m["l1_hits"]) == (2, 3, 2, 1)
    assert m["hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert m["request_latency_ms"]["p50"] > 0 and m["texts_per_s"] > 0
    assert sum(m["batch_size_histogram"].values()) == m["batches"]
    assert 'embedscope_l1_hits_total{model="minilm"} 1.0' in text
    assert 'embedscope_batch_size_bucket{le="2",model="minilm"}' in text
    assert snap["cache"]["l1_entries"] == 2


async def test_service_must_be_started(config) -> None:
    engine = Engine(config)
    with pytest.raises(RuntimeError, match="not started"):
        await engine.embeddings.encode(["x"])


def test_truncating_more_texts_than_one_tokenizer_call_keeps_each_text_and_order(config) -> None:
    """`truncate` tokenizes in slices (see TOKENIZE_SLICE); across slice edges every text must be
    cut and counted exactly as it is alone."""
    from engine.models import ModelRegistry
    from engine.models.threaded import TOKENIZE_SLICE

    model = ModelRegistry(config).get("minilm")
    base = varied_texts()
    texts = [f"{base[i % len(base)]} #{i}" for i in range(2 * TOKENIZE_SLICE + 7)]
    together = model.truncate(texts)
    alone = [model.truncate([t]) for t in texts]
    assert together.texts == [a.texts[0] for a in alone]
    assert together.token_counts == [a.token_counts[0] for a in alone]
    assert together.truncated == sum(a.truncated for a in alone) > 0


async def test_batches_group_texts_by_tokens_not_characters(config) -> None:
    """Digits and commas are a token each; these words are one token for ~13 characters. By
    characters the two kinds interleave (59-239 vs 111-223); by tokens every short-token text
    shares a batch, so no batch is padded to a dense text's length for a sparse one."""
    config.raw["embedding"]["max_batch_size"] = 32
    rng = random.Random(5)
    words = ["government", "international", "communication", "responsibility", "university"]
    digits = [[str(rng.randint(0, 9)) for _ in range(rng.randint(30, 120))] for _ in range(32)]
    dense = [",".join(d) for d in digits]
    sparse = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) for _ in range(32)]
    texts = dense + sparse
    rng.shuffle(texts)
    by_chars = sorted(texts, key=len)
    assert any(t in dense for t in by_chars[:32]) and any(t in sparse for t in by_chars[32:])
    async with Engine(config) as engine:
        recorder = FaultyModel(await engine.embeddings.model("minilm"))
        engine.registry.register(recorder)
        await engine.embeddings.encode(["warm"], "faulty")
        result = await engine.embeddings.encode_detailed(texts, "faulty")
    batches = [set(b) for b in recorder.batches[1:]]
    assert sorted(len(b) for b in batches) == [32, 32]
    assert set(sparse) in batches and set(dense) in batches
    assert result.vectors.shape == (64, 384)
