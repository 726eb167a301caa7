"""Real-FAISS tests for the vector store: correctness against numpy brute force,
deletion, filter push-down, persistence and corruption handling."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import faiss
import numpy as np
import pytest

from engine.store.faiss_store import (
    FORMAT_VERSION,
    THREADS_ENV,
    FaissVectorStore,
    configure_faiss_threads,
    ivf_nlist_for,
)
from engine.store.vector_base import (
    VectorStore,
    VectorStoreCorruptError,
    VectorStoreVersionError,
)

DIM = 64
N_BIG = 20_000
TYPES = ("flat", "hnsw", "ivf", "auto")


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(
    data: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores = q @ data.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def make(index_type: str, n: int, dim: int = DIM, seed: int = 0, **kw: int) -> FaissVectorStore:
    """A store that has really reached its target layout (hnsw / trained ivf)."""
    params: dict[str, int] = {"ivf_nlist": 16, "auto_hnsw_threshold": n // 2}
    params.update(kw)
    store = FaissVectorStore(dim, index_type, **params)
    store.add(np.arange(n, dtype=np.int64) * 3 + 1, unit(n, dim, seed))
    expected = {"flat": "flat", "hnsw": "hnsw", "ivf": "ivf", "auto": "hnsw"}[index_type]
    assert store.active_type == expected
    return store


@pytest.fixture(scope="module")
def big() -> tuple[np.ndarray, np.ndarray, dict[str, FaissVectorStore]]:
    """20k unit vectors in every layout; shared, so tests using it must not mutate."""
    data = unit(N_BIG, seed=1)
    ids = np.arange(N_BIG, dtype=np.int64) * 7 + 5
    stores = {
        "flat": FaissVectorStore(DIM, "flat"),
        # ef 128: uniform random 64-d data is the worst case for HNSW recall
        "hnsw": FaissVectorStore(DIM, "hnsw", hnsw_ef_search=128),
        "ivf": FaissVectorStore(DIM, "ivf", ivf_nlist=64, ivf_nprobe=16),
        "auto": FaissVectorStore(DIM, "auto", auto_hnsw_threshold=15_000),
    }
    for store in stores.values():
        store.add(ids[:10_000], data[:10_000])
        store.add(ids[10_000:], data[10_000:])
    assert stores["auto"].active_type == "hnsw"
    assert stores["ivf"].active_type == "ivf"
    return data, ids, stores


def test_satisfies_protocol() -> None:
    assert isinstance(FaissVectorStore(8), VectorStore)


def test_flat_matches_numpy_bruteforce() -> None:
    data, ids = unit(2000, seed=3), np.arange(2000, dtype=np.int64) * 11 + 2
    store = FaissVectorStore(DIM, "flat")
    store.add(ids, data)
    q = unit(25, seed=4)
    scores, found = store.search(q, 10)
    want_scores, want_ids = brute(data, ids, q, 10)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert store.count == 2000
    assert store.contains(2) and not store.contains(3)
    np.testing.assert_array_equal(store.ids(), ids)
    np.testing.assert_array_equal(store.fetch(ids[[5, 0, 9]]), data[[5, 0, 9]])


def test_padding_when_fewer_than_k() -> None:
    store = FaissVectorStore(DIM, "hnsw")
    scores, found = store.search(unit(2, seed=5), 4)
    assert found.shape == (2, 4) and (found == -1).all() and np.isneginf(scores).all()
    store.add(np.array([10, 20, 30]), unit(3, seed=6))
    scores, found = store.search(unit(2, seed=5), 5)
    assert (found[:, :3] >= 0).all() and (found[:, 3:] == -1).all()
    assert np.isneginf(scores[:, 3:]).all() and np.isfinite(scores[:, :3]).all()


def test_hnsw_recall_vs_flat(big: tuple[np.ndarray, np.ndarray, dict]) -> None:
    _, _, stores = big
    q = unit(200, seed=7)
    _, exact = stores["flat"].search(q, 10)
    # "auto" keeps the default ef_search=64, which random 64-d data holds to ~0.9
    for name, floor in (("hnsw", 0.95), ("auto", 0.85)):
        _, approx = stores[name].search(q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact, strict=True)])
        assert recall >= floor, f"{name} recall@10 {recall:.3f}"


def test_ivf_trains_once_then_searches() -> None:
    store = FaissVectorStore(DIM, "ivf", ivf_nlist=16, ivf_nprobe=16)
    data = unit(1000, seed=8)
    ids = np.arange(1000, dtype=np.int64)
    store.add(ids[:600], data[:600])
    assert store.active_type == "flat" and store.info()["trained_nlist"] is None
    store.add(ids[600:700], data[600:700])  # 700 >= 39 * 16 triggers training
    assert store.active_type == "ivf"
    assert store.info()["trained_on"] == 700 and store.info()["trained_nlist"] == 16
    store.add(ids[700:], data[700:])
    assert store.info()["trained_on"] == 700
    untrained = FaissVectorStore(DIM, "ivf")  # 1000 < 39 * ivf_nlist_for(1000)
    untrained.add(ids, data)
    assert untrained.active_type == "flat"
    q = unit(20, seed=9)
    scores, found = store.search(q, 10)  # nprobe == nlist: IVF must be exact
    want_scores, want_ids = brute(data, ids, q, 10)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_ivf_nlist_heuristic() -> None:
    assert ivf_nlist_for(9) == 16
    assert ivf_nlist_for(100) == 40
    assert ivf_nlist_for(1_000_000) == 4000
    assert ivf_nlist_for(10**9) == 4096


@pytest.mark.parametrize("index_type", TYPES)
def test_remove_never_returns_removed(index_type: str) -> None:
    store = make(index_type, 1000)
    data = unit(1000)
    all_ids = np.arange(1000, dtype=np.int64) * 3 + 1
    gone = all_ids[::20]  # 50 ids: 5%, below the HNSW compaction fraction
    assert store.remove(np.concatenate([gone, [2, 99_999]])) == gone.size
    assert store.remove(gone) == 0
    assert store.count == 950
    assert not store.contains(int(gone[0])) and store.contains(int(all_ids[1]))
    live_mask = ~np.isin(all_ids, gone)
    np.testing.assert_array_equal(store.ids(), all_ids[live_mask])
    with pytest.raises(KeyError, match=str(gone[0])):
        store.fetch(gone[:1])
    # each removed vector as query: its own id must never come back
    _, found = store.search(data[::20], 50)
    assert not np.isin(found, gone).any()
    assert (found != -1).all()
    # each survivor still finds itself: catches an id map shifted by removal
    _, found = store.search(data[live_mask][:100], 1)
    np.testing.assert_array_equal(found[:, 0], all_ids[live_mask][:100])
    _, found = store.search(data[:5], 10, candidate_ids=np.concatenate([gone, all_ids[1:4]]))
    assert set(found.ravel()) == set(all_ids[1:4].tolist()) | {-1}


@pytest.mark.parametrize("index_type", TYPES)
def test_remove_then_readd_same_id(index_type: str) -> None:
    store = make(index_type, 800)
    fresh = unit(1, seed=99)
    store.remove(np.array([4]))
    store.add(np.array([4]), fresh)
    np.testing.assert_array_equal(store.fetch(np.array([4])), fresh)
    _, found = store.search(fresh, 3)
    assert found[0, 0] == 4 and (found[0] == 4).sum() == 1
    assert store.count == 800


def test_hnsw_compacts_when_tombstones_pile_up() -> None:
    store = make("hnsw", 1000)
    store.remove(np.arange(50, dtype=np.int64) * 3 + 1)
    assert store.info()["tombstones"] == 50
    store.remove(np.arange(50, 120, dtype=np.int64) * 3 + 1)  # 120 > 10% of 1000
    assert store.info()["tombstones"] == 0 and store.count == 880


@pytest.mark.parametrize("limit", [20_000, 0], ids=["exact-path", "approximate-path"])
@pytest.mark.parametrize("index_type", TYPES)
def test_filtered_search_returns_exactly_k(
    big: tuple[np.ndarray, np.ndarray, dict], index_type: str, limit: int
) -> None:
    data, ids, stores = big
    store = stores[index_type]
    store.exact_candidate_limit = limit  # restored below; the fixture is shared
    try:
        rng = np.random.default_rng(11)
        q = unit(8, seed=12)
        for size in (1, 3, 10, 20, 500):
            pos = rng.choice(N_BIG, size=size, replace=False)
            cands = np.concatenate([ids[pos], [3, 4, 6]])  # plus ids that are not stored
            scores, found = store.search(q, 10, candidate_ids=cands)
            want = min(10, size)
            assert ((found != -1).sum(axis=1) == want).all(), (size, found)
            assert np.isin(found[:, :want], ids[pos]).all()
            if size <= 20:  # exact either way: the whole candidate set fits in k or fallback
                want_scores, want_ids = brute(data[pos], ids[pos], q, want)
                np.testing.assert_array_equal(found[:, :want], want_ids)
                np.testing.assert_allclose(scores[:, :want], want_scores, atol=1e-5)
        scores, found = store.search(q, 10, candidate_ids=np.array([3, 4], dtype=np.int64))
        assert (found == -1).all() and np.isneginf(scores).all()
    finally:
        store.exact_candidate_limit = 20_000


def test_large_filter_uses_faiss_selector_and_stays_inside(
    big: tuple[np.ndarray, np.ndarray, dict],
) -> None:
    _, ids, stores = big
    cands = ids[::2]  # 10k candidates, above a lowered exact limit
    q = unit(10, seed=13)
    for store in stores.values():
        store.exact_candidate_limit = 100
        try:
            _, found = store.search(q, 20, candidate_ids=cands)
        finally:
            store.exact_candidate_limit = 20_000
        assert (found != -1).all() and np.isin(found, cands).all()


def test_add_validation_errors() -> None:
    store = FaissVectorStore(DIM)
    store.add(np.array([1, 2]), unit(2))
    with pytest.raises(ValueError, match=r"already in the vector store: \[2\]"):
        store.add(np.array([2, 3]), unit(2, seed=1))
    with pytest.raises(ValueError, match=r"duplicate ids within the batch: \[7\]"):
        store.add(np.array([7, 7]), unit(2, seed=1))
    with pytest.raises(ValueError, match=r"expected shape \(n, 64\) float32, got shape \(2, 32\)"):
        store.add(np.array([5, 6]), unit(2, dim=32))
    with pytest.raises(ValueError, match="float64"):
        store.add(np.array([5, 6]), unit(2).astype(np.float64))
    with pytest.raises(ValueError, match=r"got shape \(64,\)"):
        store.add(np.array([5]), unit(1)[0])
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        store.add(np.array([5, 6]), unit(3))
    with pytest.raises(ValueError, match="ids must be >= 0"):
        store.add(np.array([-1]), unit(1))
    with pytest.raises(ValueError, match="integer ids"):
        store.add(np.array([1.5]), unit(1))
    with pytest.raises(ValueError, match="L2-normalised"):
        store.add(np.array([5]), unit(1) * 2)
    bad = unit(1)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.add(np.array([5]), bad)
    with pytest.raises(ValueError, match="k must be"):
        store.search(unit(1), 0)
    with pytest.raises(KeyError, match=r"\[8, 9\]"):
        store.fetch(np.array([1, 8, 9]))
    assert store.count == 2


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="unknown index_type 'annoy'"):
        FaissVectorStore(DIM, "annoy")
    with pytest.raises(ValueError, match="dim must be"):
        FaissVectorStore(0)


@pytest.mark.parametrize("index_type", TYPES)
def test_save_open_round_trip(index_type: str, tmp_path: Path) -> None:
    store = make(index_type, 1000, hnsw_ef_search=40, ivf_nprobe=4)
    store.remove(np.arange(0, 60, 2, dtype=np.int64) * 3 + 1)
    path = tmp_path / "vectors.faiss"
    store.save(path)
    assert not path.with_suffix(".tmp").exists()
    loaded = FaissVectorStore.open(path)
    before, after = store.info(), loaded.info()
    assert before == after
    np.testing.assert_array_equal(loaded.ids(), store.ids())
    np.testing.assert_array_equal(loaded.fetch(store.ids()), store.fetch(store.ids()))
    q = unit(10, seed=21)
    for cands in (None, store.ids()[:15]):
        s1, i1 = store.search(q, 10, candidate_ids=cands)
        s2, i2 = loaded.search(q, 10, candidate_ids=cands)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2)
    loaded.add(np.array([5_000]), unit(1, seed=22))
    assert loaded.count == store.count + 1


def test_save_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "vectors.faiss"
    store = make("flat", 50)
    store.save(path)
    store.remove(np.array([1]))
    store.save(path)
    assert FaissVectorStore.open(path).count == 49


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "vectors.faiss"
    make("hnsw", 300).save(path)
    return path


def test_truncated_file_is_corrupt(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[:-10])
    with pytest.raises(VectorStoreCorruptError, match="header promises") as err:
        FaissVectorStore.open(saved, name="docs")
    assert "embedscope repair docs" in str(err.value) and err.value.path == saved
    saved.write_bytes(data[:20])
    with pytest.raises(VectorStoreCorruptError, match="header truncated"):
        FaissVectorStore.open(saved)


def test_flipped_byte_is_corrupt(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0x40
    saved.write_bytes(bytes(data))
    with pytest.raises(VectorStoreCorruptError, match="sha256"):
        FaissVectorStore.open(saved)


def test_garbage_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "vectors.faiss"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VectorStoreCorruptError, match="magic"):
        FaissVectorStore.open(path)
    path.write_bytes(b"")
    with pytest.raises(VectorStoreCorruptError, match="magic"):
        FaissVectorStore.open(path)


def test_checksummed_non_faiss_payload_is_corrupt(saved: Path) -> None:
    """Even bytes that pass the checksum must fail cleanly inside FAISS's reader."""
    data = saved.read_bytes()
    header = struct.Struct("<4sHHIQQQ32s")
    magic, version, flags, dim, meta_len, n_tombs, _, _ = header.unpack_from(data)
    body = data[header.size : header.size + meta_len + 8 * n_tombs] + b"garbage!" * 8
    forged = header.pack(
        magic, version, flags, dim, meta_len, n_tombs, 64, hashlib.sha256(body).digest()
    )
    saved.write_bytes(forged + body)
    with pytest.raises(VectorStoreCorruptError, match="FAISS could not read"):
        FaissVectorStore.open(saved)


def test_newer_version_is_refused(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    struct.pack_into("<H", data, 4, FORMAT_VERSION + 1)
    saved.write_bytes(bytes(data))
    with pytest.raises(VectorStoreVersionError) as err:
        FaissVectorStore.open(saved)
    assert err.value.found == FORMAT_VERSION + 1 and err.value.supported == FORMAT_VERSION


def test_auto_switches_to_hnsw_past_threshold() -> None:
    store = FaissVectorStore(DIM, "auto", auto_hnsw_threshold=200)
    data = unit(300, seed=30)
    ids = np.arange(300, dtype=np.int64)
    store.add(ids[:200], data[:200])
    assert store.active_type == "flat"
    store.add(ids[200:], data[200:])
    assert store.active_type == "hnsw" and store.info()["index_type"] == "auto"
    _, found = store.search(data[:50], 1)
    np.testing.assert_array_equal(found[:, 0], ids[:50])


def test_memory_and_info() -> None:
    store = FaissVectorStore(DIM, "hnsw", hnsw_m=16)
    empty = store.memory_bytes()
    store.add(np.arange(500), unit(500))
    assert store.memory_bytes() > empty + 500 * DIM * 4
    info = store.info()
    assert info["count"] == 500 and info["dim"] == DIM and info["params"]["hnsw_m"] == 16


def test_thread_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    original = faiss.omp_get_max_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        assert configure_faiss_threads() == 1
        assert faiss.omp_get_max_threads() == 1
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(ValueError, match=THREADS_ENV):
            FaissVectorStore(DIM)
        monkeypatch.delenv(THREADS_ENV)
        assert configure_faiss_threads() is None
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            configure_faiss_threads(0)
    finally:
        faiss.omp_set_num_threads(original)
