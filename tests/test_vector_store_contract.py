"""The VectorStore contract, run on every backend: FAISS flat, HNSW and IVF, and a real Milvus
server (tests/milvus_server.py).

The data is real: minilm vectors of SciFact passages (random vectors are a worst case for HNSW),
each passage a document in a real SQLite metadata store with metadata to filter on. SQLite plus
brute force over the same vectors is the oracle every backend is held to; FAISS gets its
filters as SQLite's candidate ids, Milvus translates them itself.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.store import ChunkIn, DocumentIn, MetadataStore, parse_filters
from engine.store.factory import create_store, open_store, recorded_settings
from engine.store.vector_base import (
    ChunkFields,
    MissingIdsError,
    VectorStore,
    VectorStoreCorruptError,
    VectorStoreMissingError,
    VectorStoreUnavailableError,
    Where,
)

pytest_plugins = ["milvus_server"]

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"
N_DOCS = 1000
N_QUERIES = 40
WORDS = 40
K = 10
DIM = 384
BACKENDS = ("faiss-flat", "faiss-hnsw", "faiss-ivf", "milvus")
# Values a filter must match literally, never as expression syntax.
HOSTILE = (
    'say "hi"',
    "back\\slash\\",
    '" or 1==1 or "',
    "' or ''='",
    "ünïcødé 😀 ✓ 中文",
    "x" * 3000,
    "line1\nline2",
    "a]b[c*?",
    '\\" or id >= 0 or \\"',
    'json_contains(forms["q"]["t"] "x")',
)
# Look-alikes that match nothing: an escape that failed would make them match everything.
PROBES = ('" or 1==1 or "x', '") or (id >= 0', "x" * 2999, "' or 1=1 --", "\\")


@dataclass
class Corpus:
    ids: np.ndarray
    vectors: np.ndarray
    fields: list[ChunkFields]
    queries: np.ndarray
    meta: MetadataStore

    def where(self, *filters: str, exclude: Any = ()) -> Where:
        return Where(parse_filters(list(filters)), self.meta.filter_chunk_ids, exclude)

    def exact(self, queries: np.ndarray, k: int, pool: np.ndarray | None = None) -> np.ndarray:
        """Brute-force top-k ids (the oracle), over ``pool`` or every id."""
        ids = self.ids if pool is None else pool
        rows = np.searchsorted(self.ids, ids)
        scores = queries @ self.vectors[rows].T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return ids[order]


def _passages() -> list[dict[str, Any]]:
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in itertools.islice(handle, N_DOCS)]
    return rows


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, st_minilm: Any) -> Iterator[Corpus]:
    rows = _passages()
    texts = [f"{r['title']}. {' '.join(r['text'].split()[:WORDS])}" for r in rows]
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as handle:
        claims = [json.loads(line)["text"] for line in itertools.islice(handle, N_QUERIES)]
    vectors = st_minilm.encode(texts, batch_size=64, normalize_embeddings=True)
    queries = st_minilm.encode(claims, batch_size=64, normalize_embeddings=True)
    meta = MetadataStore(tmp_path_factory.mktemp("contract") / "meta.sqlite", name="contract")
    ids: list[int] = []
    fields: list[ChunkFields] = []
    for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
        metadata: dict[str, Any] = {
            "bucket": i % 50,
            "year": 2000 + i % 20,
            "published": f"{2000 + i % 20}-{1 + i % 12:02d}-{1 + i % 28:02d}",
            "tags": ["even" if i % 2 == 0 else "odd", f"t{i % 7}"],
            "q": HOSTILE[i % len(HOSTILE)],
        }
        doc = DocumentIn(
            key=row["_id"],
            path=f"area{i % 10}/{row['_id']}.md" if i % 97 else f'area{i % 10}/"odd" {i}.md',
            title=row["title"],
            doc_type="md",
            size=len(text),
            mtime=1.6e9 + i * 86_400.0,
            content_hash=row["_id"],
            file_hash=row["_id"],
            metadata=metadata,
        )
        _, chunk_ids, _ = meta.replace_document(
            doc, [ChunkIn(0, text, 0, len(text), len(text.split()))]
        )
        ids.extend(chunk_ids)
        fields.append(ChunkFields.of(doc))
    order = np.argsort(ids)
    yield Corpus(
        np.asarray(ids, dtype=np.int64)[order],
        np.asarray(vectors, dtype=np.float32)[order],
        [fields[i] for i in order],
        np.asarray(queries, dtype=np.float32),
        meta,
    )
    meta.close()


@dataclass
class Backend:
    kind: str
    settings: dict[str, Any]
    path: Path
    name: str = field(default_factory=lambda: f"contract-{uuid.uuid4().hex[:8]}")
    opened: list[VectorStore] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return "milvus" if self.kind == "milvus" else "faiss"

    def create(self) -> VectorStore:
        store = create_store(self.backend, self.settings, DIM, name=self.name)
        self.opened.append(store)
        return store

    def reopen(self, store: VectorStore) -> VectorStore:
        store.save(self.path)
        store.close()
        again = open_store(self.backend, self.settings, DIM, name=self.name, path=self.path)
        self.opened.append(again)
        return again

    def filled(self, corpus: Corpus) -> VectorStore:
        store = self.create()
        store.add(corpus.ids, corpus.vectors, corpus.fields)
        return store


FAISS_SETTINGS = {
    "faiss-flat": {"type": "flat"},
    "faiss-hnsw": {"type": "hnsw", "hnsw_m": 32, "hnsw_ef_search": 64},
    # 16 lists train once 624 vectors exist, so the IVF layout is what gets tested.
    "faiss-ivf": {"type": "ivf", "ivf_nlist": 16, "ivf_nprobe": 8},
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "milvus":
        server = request.getfixturevalue("milvus_server")
        made = Backend(kind, {"uri": server.uri, "consistency": "Session"}, tmp_path / "v")
    else:
        made = Backend(kind, dict(FAISS_SETTINGS[kind]), tmp_path / "vectors.esvs")
    yield made
    for store in made.opened:
        store.close()
    if kind == "milvus":
        server.drop_all_collections()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    shares = [len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(shares))


# ------------------------------------------------------------------------------- tests


def test_add_count_fetch_contains(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    assert isinstance(store, VectorStore)
    assert store.backend == backend.backend and store.dim == DIM
    assert store.count == corpus.ids.size
    assert store.contains(int(corpus.ids[5])) and not store.contains(int(corpus.ids[-1]) + 1)
    pick = corpus.ids[[3, 0, 700, 42]]
    rows = np.searchsorted(corpus.ids, pick)
    assert np.allclose(store.fetch(pick), corpus.vectors[rows], atol=1e-6)
    with pytest.raises(KeyError, match="not in the vector store"):
        store.fetch(np.array([int(corpus.ids[-1]) + 10]))
    with pytest.raises(MissingIdsError):
        store.fetch(np.array([int(corpus.ids[0]), int(corpus.ids[-1]) + 10]))
    with pytest.raises(ValueError, match="already in the vector store"):
        store.add(corpus.ids[:2], corpus.vectors[:2], corpus.fields[:2])
    with pytest.raises(ValueError, match="L2-normalised"):
        store.add(np.array([10**9]), corpus.vectors[:1] * 2, corpus.fields[:1])
    with pytest.raises(ValueError, match=">= 0"):
        store.add(np.array([-5]), corpus.vectors[:1], corpus.fields[:1])
    assert store.count == corpus.ids.size
    assert np.array_equal(store.ids(), corpus.ids)


def test_search_recall_on_real_embeddings(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    scores, found = store.search(corpus.queries, K)
    assert found.shape == (N_QUERIES, K) and (found >= 0).all()
    assert (np.diff(scores, axis=1) <= 1e-5).all(), "best first"
    truth = corpus.exact(corpus.queries, K)
    assert recall(found, truth) >= (1.0 if backend.kind == "faiss-flat" else 0.95)
    # A stored vector finds itself first, with cosine 1.
    own_scores, own = store.search(corpus.vectors[:5], 1)
    assert np.array_equal(own[:, 0], corpus.ids[:5])
    assert np.allclose(own_scores[:, 0], 1.0, atol=1e-4)


def test_remove_never_returns_removed(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    gone = corpus.ids[::3]
    assert store.remove(np.concatenate([gone, [int(corpus.ids[-1]) + 1]])) == gone.size
    assert store.remove(gone) == 0
    kept = np.setdiff1d(corpus.ids, gone)
    assert store.count == kept.size
    assert np.array_equal(store.ids(), kept)
    _, found = store.search(corpus.queries, K)
    assert not np.isin(found, gone).any()
    assert recall(found, corpus.exact(corpus.queries, K, kept)) >= 0.95
    assert not store.contains(int(gone[0]))


def test_filtered_search_returns_exactly_k_correct_hits(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    where = corpus.where("bucket=7")  # 2% of the documents
    allowed = corpus.meta.filter_chunk_ids(where.filter)
    assert allowed.size == N_DOCS // 50
    _, found = store.search(corpus.queries, K, where=where)
    assert (found >= 0).sum(axis=1).tolist() == [K] * N_QUERIES
    assert np.isin(found, allowed).all()
    assert recall(found, corpus.exact(corpus.queries, K, allowed)) >= 0.95


@pytest.mark.parametrize(
    "filters",
    [
        ("path=area3/*",),  # a glob: Milvus finishes it on the hits
        ("year=2005..2007", "tags=even"),
        ("published>=2015-06-01", "type=MD"),
        ("tags!=odd", "year<2010"),
        ("mtime<2020-12-31",),
    ],
)
def test_filters_match_sqlite(backend: Backend, corpus: Corpus, filters: tuple[str, ...]) -> None:
    store = backend.filled(corpus)
    where = corpus.where(*filters, exclude=corpus.ids[:50])
    allowed = np.setdiff1d(corpus.meta.filter_chunk_ids(where.filter), corpus.ids[:50])
    assert allowed.size > K
    _, found = store.search(corpus.queries[:5], K, where=where)
    assert (found >= 0).sum(axis=1).tolist() == [K] * 5
    assert np.isin(found, allowed).all()
    # Everything that matches, when asked for more than there is.
    _, every = store.search(corpus.queries[:1], allowed.size + 5, where=where)
    assert np.array_equal(np.sort(every[0][every[0] >= 0]), allowed)


def test_hostile_filter_values_match_literally(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    for value in (*HOSTILE, *PROBES):
        where = corpus.where(f"q={value}")
        expected = corpus.meta.filter_chunk_ids(where.filter)
        _, found = store.search(corpus.queries[:1], N_DOCS, where=where)
        got = np.sort(found[0][found[0] >= 0])
        assert np.array_equal(got, expected), value
        if value in PROBES:
            assert got.size == 0
        else:
            assert got.size == len(range(HOSTILE.index(value), N_DOCS, len(HOSTILE)))


def test_upsert_replaces_and_adds(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    target = corpus.ids[:3]
    new_id = int(corpus.ids[-1]) + 100
    store.upsert(
        np.concatenate([target, [new_id]]),
        corpus.vectors[[10, 11, 12, 13]],
        [corpus.fields[i] for i in (10, 11, 12, 13)],
    )
    assert store.count == corpus.ids.size + 1
    assert np.allclose(store.fetch(target), corpus.vectors[[10, 11, 12]], atol=1e-6)
    assert np.allclose(store.fetch(np.array([new_id])), corpus.vectors[[13]], atol=1e-6)
    _, own = store.search(corpus.vectors[[13]], 2)
    assert set(own[0].tolist()) == {new_id, int(corpus.ids[13])}


def test_persists_across_close_and_reopen(backend: Backend, corpus: Corpus) -> None:
    store = backend.filled(corpus)
    store.remove(corpus.ids[:100])
    store.set_generation(7)
    before = store.search(corpus.queries, K)
    again = backend.reopen(store)
    assert again.generation == 7
    assert again.count == corpus.ids.size - 100
    assert np.array_equal(again.ids(), corpus.ids[100:])
    after = again.search(corpus.queries, K)
    assert recall(after[1], before[1]) >= 0.99
    listed = list(again.iter_vectors(batch=256))
    assert all(ids.size <= 256 for ids, _ in listed)
    ids = np.concatenate([i for i, _ in listed])
    vecs = np.concatenate([v for _, v in listed])
    order = np.argsort(ids)
    assert np.array_equal(ids[order], corpus.ids[100:])
    assert np.allclose(vecs[order], corpus.vectors[100:], atol=1e-6)


def test_generation_counter_and_clear(backend: Backend, corpus: Corpus) -> None:
    store = backend.create()
    assert store.generation == 0 and store.count == 0
    store.set_generation(3)
    assert store.generation == 3
    with pytest.raises(ValueError):
        store.set_generation(-1)
    store.add(corpus.ids[:20], corpus.vectors[:20], corpus.fields[:20])
    store.optimize()
    store.clear()
    assert store.count == 0 and store.generation == 0
    store.add(corpus.ids[:5], corpus.vectors[:5], corpus.fields[:5])
    assert store.count == 5


def test_where_and_candidate_ids_are_each_store_s_own_form(
    backend: Backend, corpus: Corpus
) -> None:
    store = backend.filled(corpus)
    if store.pushes_filters:
        with pytest.raises(ValueError, match="Where"):
            store.search(corpus.queries[:1], K, corpus.ids[:5])
        # It never needs SQLite: a resolver that fails proves it is not called.
        where = Where(parse_filters(["bucket=3"]), resolve=lambda _f: 1 / 0)
        _, found = store.search(corpus.queries[:1], K, where=where)
        assert (found >= 0).sum() == K
    else:
        with pytest.raises(ValueError, match="resolver"):
            store.search(corpus.queries[:1], K, where=Where(parse_filters(["bucket=3"])))
        _, found = store.search(corpus.queries[:1], K, corpus.ids[:5])
        assert set(found[0][found[0] >= 0].tolist()) == set(corpus.ids[:5].tolist())


# --------------------------------------------------------------------- Milvus alone


@pytest.mark.slow
def test_milvus_data_survives_a_server_restart(milvus_server: Any, corpus: Corpus) -> None:
    settings = {"uri": milvus_server.uri}
    name = f"restart-{uuid.uuid4().hex[:8]}"
    store = create_store("milvus", settings, DIM, name=name)
    store.add(corpus.ids, corpus.vectors, corpus.fields)
    store.remove(corpus.ids[:10])
    store.set_generation(11)
    before = store.search(corpus.queries, K, where=corpus.where("bucket=7"))
    store.close()
    milvus_server.restart()
    again = open_store("milvus", {"uri": milvus_server.uri}, DIM, name=name, path=Path("-"))
    try:
        assert again.generation == 11
        assert again.count == corpus.ids.size - 10
        assert np.array_equal(again.ids(), corpus.ids[10:])
        after = again.search(corpus.queries, K, where=corpus.where("bucket=7"))
        assert np.array_equal(after[1], before[1])
    finally:
        again.close()
        milvus_server.drop_all_collections()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(120)
def test_milvus_down_is_a_clear_error_naming_the_uri() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(VectorStoreUnavailableError, match=uri.replace(".", r"\.")):
        open_store("milvus", {"uri": uri, "timeout_s": 5}, DIM, name="gone", path=Path("-"))
    with pytest.raises(VectorStoreUnavailableError, match="Fix: start it"):
        create_store("milvus", {"uri": uri, "timeout_s": 5}, DIM, name="gone")


def test_milvus_missing_collection_names_uri_and_collection(milvus_server: Any) -> None:
    with pytest.raises(VectorStoreMissingError) as caught:
        open_store("milvus", {"uri": milvus_server.uri}, DIM, name="never-made", path=Path("-"))
    message = str(caught.value)
    assert milvus_server.uri in message and "embedscope_never_made_" in message
    assert "embedscope repair never-made" in message


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_backends_smoke(milvus_server: Any, tmp_path: Path) -> None:
    """The benchmark runs end to end against a server and prints every key it promises; on the
    static model, so the stores take its 256-dimensional vectors (not a fixed 384)."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_backends.py"),
            "--quick",
            "--smoke",
            "--model",
            "minilm-static",
            "--uri",
            milvus_server.uri,
            "--data-dir",
            str(tmp_path / "home"),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for key in (
        "milvus_insert_per_s",
        "milvus_query_p50_ms",
        "milvus_query_p95_ms",
        "milvus_filtered_p50_ms",
        "milvus_filtered_hits_at_10",
        "milvus_recall_at_10",
        "faiss_hnsw_query_p50_ms",
        "migrate_s",
    ):
        assert isinstance(report[key], int | float) and report[key] >= 0, key
    assert report["milvus_filtered_hits_at_10"] == 10.0
    assert (report["model"], report["dimension"]) == ("minilm-static", 256)
    milvus_server.drop_all_collections()


# --------------------------------------------------------------------------- factory


def test_factory_builds_faiss_from_plain_settings(tmp_path: Path) -> None:
    flat_section = {"type": "hnsw", "hnsw_m": 16, "chunk_tokens": None, "rrf_k": 60}
    store = create_store("faiss", flat_section, 8, name="f")
    assert store.backend == "faiss" and store.info()["index_type"] == "hnsw"
    assert create_store("faiss", flat_section, 8, name="f", index_type="flat").info()[
        "index_type"
    ] == "flat"
    path = tmp_path / "vectors.esvs"
    with pytest.raises(VectorStoreMissingError, match="embedscope repair f"):
        open_store("faiss", flat_section, 8, name="f", path=path)
    assert open_store("faiss", flat_section, 8, name="f", path=path, missing_ok=True).count == 0
    store.set_generation(4)
    store.save(path)
    assert open_store("faiss", {}, 8, name="f", path=path).generation == 4
    with pytest.raises(VectorStoreCorruptError, match="8-dimensional"):
        open_store("faiss", {}, 16, name="f", path=path)
    with pytest.raises(ValueError, match="choose one of faiss, milvus"):
        create_store("weaviate", {}, 8, name="f")


def test_recorded_settings_never_hold_the_token() -> None:
    recorded = recorded_settings(
        "milvus", {"uri": "http://127.0.0.1:19530", "token": "root:secret", "ef_search": 80}
    )
    assert "token" not in recorded and "secret" not in json.dumps(recorded)
    assert recorded["ef_search"] == 80 and recorded["consistency"] == "Session"
    with pytest.raises(ValueError, match="consistency"):
        recorded_settings("milvus", {"consistency": "Eventually"})
    with pytest.raises(ValueError, match="uri"):
        recorded_settings("milvus", {"uri": "localhost"})
    assert recorded_settings("faiss", {"type": "ivf", "ivf_nprobe": 4, "rrf_k": 60}) == {
        "type": "ivf",
        "ivf_nprobe": 4,
    }
