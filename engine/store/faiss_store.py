"""FAISS-backed vector store: cosine search over caller-chosen int64 chunk ids.

Vectors are L2-normalised float32, so inner product equals cosine similarity.

Index layouts (all keep the caller's ids, so results join straight to SQLite):

* ``flat``: ``IndexIDMap2(IndexFlatIP)``; exact, and ``remove_ids`` renumbers in order.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW cannot delete, see ``FaissVectorStore.remove``.
* ``ivf``: vectors sit in a flat layout until there are enough to train k-means, then
  move to an ``IndexIVFFlat`` that stores the ids itself (with a hashtable direct map
  for ``reconstruct``). It is deliberately *not* wrapped in ``IndexIDMap2``:
  ``IndexIDMap2.remove_ids`` compacts its id table assuming the inner index renumbers
  the survivors, which IVF does not, so every id after the removed one would silently
  point at the wrong vector.
* ``auto``: ``flat`` while small, rebuilt as ``hnsw`` once ``count`` exceeds
  ``auto_hnsw_threshold``; it never goes back, to avoid rebuild ping-pong.

Crash safety: ``save`` writes a verified container (magic, version, sha256) through a
temp file, fsync and ``os.replace``; ``open`` checks everything before FAISS parses a
byte, because the native reader can abort the whole process on malformed input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import faiss
import numpy as np

from engine.fsutil import atomic_write
from engine.store.vector_base import (
    ChunkFields,
    MissingIdsError,
    VectorStoreCorruptError,
    VectorStoreVersionError,
    Where,
    as_ids,
    preview,
)

__all__ = [
    "FORMAT_VERSION",
    "INDEX_TYPES",
    "MAGIC",
    "THREADS_ENV",
    "FaissVectorStore",
    "configure_faiss_threads",
    "ivf_nlist_for",
]

MAGIC: Final = b"ESVS"
FORMAT_VERSION: Final = 1
THREADS_ENV: Final = "EMBEDSCOPE_FAISS_THREADS"
INDEX_TYPES: Final = ("flat", "hnsw", "ivf", "auto")

# magic, version, flags, dim, meta length, tombstone count, payload length, sha256
_HEADER: Final = struct.Struct("<4sHHIQQQ32s")
_PREFIX: Final = struct.Struct("<4sH")
_IVF_POINTS_PER_LIST: Final = 39
_TOMBSTONE_FRACTION: Final = 0.1
_EXACT_BLOCK: Final = 16_384


def configure_faiss_threads(threads: int | None = None) -> int | None:
    """Set FAISS's OpenMP thread count from ``threads`` or ``$EMBEDSCOPE_FAISS_THREADS``.

    torch and FAISS share one OpenMP runtime; on a 2-core machine letting both
    spin up full pools at once oversubscribes the CPU, so the count is made
    configurable. With neither set, FAISS's own default is left untouched.
    The setting is process-wide. Returns the count applied, or None.
    """
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return None
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(
                f"{THREADS_ENV}={raw!r} is not an integer; set it to a positive thread "
                "count such as 1 or 2, or unset it to keep FAISS's default"
            ) from None
        source = THREADS_ENV
    else:
        source = "threads"
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{source} must be a positive integer, got {threads!r}")
    faiss.omp_set_num_threads(threads)
    return threads


@contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """OpenMP's count belongs to the calling thread, and searches run on pooled worker threads:
    set it for one call and restore it, so a later build on that thread keeps its own count.
    None leaves the count alone."""
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def ivf_nlist_for(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: ~4*sqrt(n), clamped to [16, 4096]."""
    return int(min(4096, max(16, round(4 * math.sqrt(max(n, 0))))))


def _check_positive(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise best ``k`` of (nq, m) scores, best first; ``ids`` is (m,) or (nq, m)."""
    nq, m = scores.shape
    if m > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m), (nq, m))
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    cols = np.take_along_axis(part, order, axis=1)
    full_ids = ids if ids.ndim == 2 else np.broadcast_to(ids, (nq, m))
    return (
        np.take_along_axis(scores, cols, axis=1),
        np.take_along_axis(full_ids, cols, axis=1),
    )


class FaissVectorStore:
    """In-memory FAISS index over caller-chosen int64 ids, persisted with ``save``/``open``.

    All calls take an internal lock: the engine runs store calls on worker
    threads, and FAISS indexes are not safe for concurrent mutation and search.
    """

    def __init__(
        self,
        dim: int,
        index_type: str = "flat",
        *,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 64,
        hnsw_ef_construction: int = 80,
        ivf_nlist: int | None = None,
        ivf_nprobe: int = 16,
        auto_hnsw_threshold: int = 50_000,
        exact_candidate_limit: int = 20_000,
        threads: int | None = None,
        generation: int = 0,
    ) -> None:
        """``exact_candidate_limit``: filtered searches over at most this many candidates
        are scored exactly (see ``search``). ``threads``: see ``configure_faiss_threads``.
        ``generation``: the commit generation (see ``VectorStore``); it travels in the saved
        file's parameters, so a file always carries the generation its vectors belong to.
        """
        _check_positive("dim", dim)
        if index_type not in INDEX_TYPES:
            raise ValueError(
                f"unknown index_type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}"
            )
        _check_positive("hnsw_m", hnsw_m, 2)
        _check_positive("hnsw_ef_search", hnsw_ef_search)
        _check_positive("hnsw_ef_construction", hnsw_ef_construction)
        if ivf_nlist is not None:
            _check_positive("ivf_nlist", ivf_nlist)
        _check_positive("ivf_nprobe", ivf_nprobe)
        _check_positive("auto_hnsw_threshold", auto_hnsw_threshold, 0)
        _check_positive("exact_candidate_limit", exact_candidate_limit, 0)
        _check_positive("generation", generation, 0)
        # OpenMP thread counts are per calling thread, and searches run on worker threads:
        # the count is re-applied on every search, not only where the store was built.
        self._threads = configure_faiss_threads(threads)

        self._dim = dim
        self._index_type = index_type
        self._hnsw_m = hnsw_m
        self._hnsw_ef_search = hnsw_ef_search
        self._hnsw_ef_construction = hnsw_ef_construction
        self._ivf_nlist = ivf_nlist
        self._ivf_nprobe = ivf_nprobe
        self._auto_hnsw_threshold = auto_hnsw_threshold
        self._exact_candidate_limit = exact_candidate_limit
        self._generation = generation
        self._lock = threading.RLock()
        self._active = "hnsw" if index_type == "hnsw" else "flat"
        self._index: faiss.Index = self._new_index(self._active)
        self._ids = np.empty(0, dtype=np.int64)
        self._tombstones = np.empty(0, dtype=np.int64)
        self._trained_nlist: int | None = None
        self._trained_on: int | None = None
        # The checksum of the file this store was last opened from or saved to (None: never).
        self.digest: bytes | None = None

    # ------------------------------------------------------------------ properties

    @property
    def backend(self) -> str:
        return "faiss"

    @property
    def pushes_filters(self) -> bool:
        """False: filters arrive as candidate ids resolved by SQLite."""
        return False

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def generation(self) -> int:
        return self._generation

    def set_generation(self, generation: int) -> None:
        """Kept in memory until the next ``save``, which writes it with the vectors."""
        _check_positive("generation", generation, 0)
        with self._lock:
            self._generation = generation

    @property
    def index_type(self) -> str:
        return self._index_type

    @property
    def active_type(self) -> str:
        """The layout actually in use: ``auto`` and untrained ``ivf`` report ``flat``."""
        return self._active

    @property
    def exact_candidate_limit(self) -> int:
        """Filtered searches over at most this many candidates are scored exactly."""
        return self._exact_candidate_limit

    @exact_candidate_limit.setter
    def exact_candidate_limit(self, value: int) -> None:
        _check_positive("exact_candidate_limit", value, 0)
        with self._lock:
            self._exact_candidate_limit = value

    @property
    def count(self) -> int:
        return int(self._ids.size)

    def __len__(self) -> int:
        return self.count

    # ------------------------------------------------------------------ mutation

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ChunkFields] | None = None
    ) -> None:
        """Add vectors under new ids; an id already present is an error, not an overwrite.
        ``fields`` are not kept: SQLite answers filters for this store."""
        new_ids = as_ids(ids, "add ids")
        vecs = self._check_vectors(vectors, "add vectors")
        if vecs.shape[0] != new_ids.size:
            raise ValueError(
                f"add: got {new_ids.size} ids for {vecs.shape[0]} vectors; pass one id per row"
            )
        if new_ids.size == 0:
            return
        norms = np.linalg.norm(vecs, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if bad.size:
            raise ValueError(
                f"add vectors: rows must be L2-normalised (cosine search), but row {int(bad[0])} "
                f"(id {int(new_ids[bad[0]])}) has norm {float(norms[bad[0]]):.4f}; "
                f"{bad.size} row(s) affected. Normalise them (e.g. encode with "
                "normalize_embeddings=True)"
            )
        uniq, counts = np.unique(new_ids, return_counts=True)
        if uniq.size != new_ids.size:
            raise ValueError(f"add: duplicate ids within the batch: {preview(uniq[counts > 1])}")
        with self._lock:
            present = self._present(uniq)
            if present.size:
                raise ValueError(
                    f"add: ids already in the vector store: {preview(present)}; "
                    "remove them first to replace their vectors"
                )
            if self._tombstones.size and np.isin(uniq, self._tombstones).any():
                # A re-used id would collide with its tombstoned twin in IndexIDMap2.
                self._rebuild(self._active)
            self._index.add_with_ids(vecs, new_ids)
            self._ids = np.union1d(self._ids, uniq)
            self._maybe_transition()

    def upsert(
        self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ChunkFields] | None = None
    ) -> None:
        """Add, replacing the vectors of ids already stored (validated before anything goes)."""
        new_ids = as_ids(ids, "upsert ids")
        self._check_vectors(vectors, "upsert vectors")
        with self._lock:
            self.remove(new_ids)
            self.add(new_ids, vectors)

    def optimize(self) -> None:
        """Nothing to seal: FAISS indexes every vector as it is added."""

    def clear(self) -> None:
        with self._lock:
            self._active = "hnsw" if self._index_type == "hnsw" else "flat"
            self._index = self._new_index(self._active)
            self._ids = np.empty(0, dtype=np.int64)
            self._tombstones = np.empty(0, dtype=np.int64)
            self._trained_nlist = None
            self._trained_on = None
            self._generation = 0

    def close(self) -> None:
        """Nothing to release: the store is memory plus the file ``save`` writes."""

    def destroy(self) -> None:
        """Nothing beyond memory: the file lives in the index folder that removal deletes."""
        self.clear()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed.

        HNSW graphs cannot drop nodes, so for ``hnsw`` removed ids become
        tombstones filtered out of every search with an ``IDSelectorNot``; once
        they exceed 10% of the stored vectors the graph is rebuilt from the live
        vectors (reconstructed through ``IndexIDMap2``). That keeps deletes cheap
        (re-indexing one file is a small delete) while bounding wasted memory and
        search effort, at the price of an occasional O(n log n) rebuild.
        """
        gone = as_ids(ids, "remove ids")
        with self._lock:
            present = self._present(np.unique(gone))
            if present.size == 0:
                return 0
            if self._active == "hnsw":
                self._tombstones = np.union1d(self._tombstones, present)
            else:
                removed = self._index.remove_ids(present)
                if removed != present.size:
                    raise RuntimeError(
                        f"FAISS removed {removed} of {present.size} ids; the store is "
                        "inconsistent, rebuild it with `embedscope repair`"
                    )
            self._ids = np.setdiff1d(self._ids, present, assume_unique=True)
            if self._tombstones.size > _TOMBSTONE_FRACTION * self._index.ntotal:
                self._rebuild(self._active)
            return int(present.size)

    # ------------------------------------------------------------------ lookup

    def contains(self, chunk_id: int) -> bool:
        with self._lock:
            pos = int(np.searchsorted(self._ids, chunk_id))
            return pos < self._ids.size and int(self._ids[pos]) == int(chunk_id)

    def ids(self) -> np.ndarray:
        """All stored ids, ascending (a copy)."""
        with self._lock:
            return self._ids.copy()

    def iter_vectors(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Live (ids, vectors) in ascending id batches, each read under the lock."""
        _check_positive("batch", batch)
        ids = self.ids()
        for start in range(0, ids.size, batch):
            part = ids[start : start + batch]
            with self._lock:
                part = self._present(part)
                vecs = self._reconstruct(part) if part.size else np.empty((0, self._dim), "f4")
            yield part, vecs

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for ``ids`` as (n, dim) float32, in the order asked."""
        wanted = as_ids(ids, "fetch ids")
        with self._lock:
            # isin, not setdiff1d: its np.unique imports numpy.ma (~30 ms of a cold `similar`).
            absent = ~np.isin(wanted, self._ids)
            if absent.any():
                missing = np.unique(wanted[absent])
                raise MissingIdsError(f"ids not in the vector store: {preview(missing)}")
            if wanted.size == 0:
                return np.empty((0, self._dim), dtype=np.float32)
            return self._reconstruct(wanted)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        candidate_ids: np.ndarray | None = None,
        *,
        where: Where | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine: (scores, ids), each (nq, k), padded with -inf / -1.

        With ``candidate_ids`` only those ids can be returned, and every row holds
        exactly ``min(k, candidates present)`` results for every index type. The
        filter is pushed into FAISS with an ``IDSelectorBatch``, but HNSW and IVF
        only visit part of the data, so a selective filter can leave a row short.
        Small candidate sets (<= ``exact_candidate_limit``) are therefore scored
        exactly against their reconstructed vectors, which is also cheaper than a
        graph walk that mostly hits filtered-out nodes; any row an approximate
        search leaves short is redone exactly the same way.
        """
        if where is not None:
            return self._search_where(queries, k, candidate_ids, where)
        q = self._check_vectors(queries, "search queries")
        _check_positive("k", k)
        nq = q.shape[0]
        # A lone query runs on one thread unless the user chose: FAISS splits its scan across
        # the pool, and waiting for a second core that torch or the app holds costs more than
        # it saves (100k x 384 flat, 2 cores: p50 10.8 vs 14.1 ms, p95 11.5 vs 28.9 ms).
        threads = self._threads or (1 if nq == 1 else None)
        with self._lock, _omp_threads(threads):
            if candidate_ids is None:
                pool = self._ids
                selector: faiss.IDSelector | None = None
                if self._tombstones.size:
                    dead = faiss.IDSelectorBatch(self._tombstones)  # must outlive the search
                    selector = faiss.IDSelectorNot(dead)
            else:
                pool = self._present(np.unique(as_ids(candidate_ids, "candidate_ids")))
                if (
                    self._active != "flat"
                    and 0 < pool.size <= self._exact_candidate_limit
                    and nq > 0
                ):
                    return self._pad(*self._exact_search(q, k, pool), k)
                selector = faiss.IDSelectorBatch(pool)
            if nq == 0 or pool.size == 0:
                return self._pad(
                    np.empty((nq, 0), dtype=np.float32), np.empty((nq, 0), dtype=np.int64), k
                )
            # FAISS allocates (nq, k) before it looks at the data: never ask past what is stored.
            fetch = min(k, int(self._index.ntotal))
            scores, found = self._index.search(
                q, fetch, params=self._search_params(fetch, selector)
            )
            want = min(fetch, int(pool.size))
            short = np.flatnonzero((found != -1).sum(axis=1) < want)
            if short.size:
                fix_scores, fix_ids = self._pad(
                    *self._exact_search(q[short], fetch, pool), fetch
                )
                scores[short] = fix_scores
                found[short] = fix_ids
            return self._pad(scores, found, k)

    # ------------------------------------------------------------------ reporting

    def memory_bytes(self) -> int:
        """Rough resident size (vectors, graph/lists, id maps), for the TUI's stats."""
        with self._lock:
            stored = int(self._index.ntotal)
            size = stored * self._dim * 4 + self._ids.nbytes + self._tombstones.nbytes
            # per id: 8 bytes stored plus ~40 of hash map (IDMap2 rev_map / IVF direct map)
            size += stored * (8 + 40)
            if self._active == "ivf":
                size += (self._trained_nlist or 0) * self._dim * 4
            if self._active == "hnsw":
                # level-0 holds 2*M links; upper levels add ~1/M of that; plus levels/offsets
                size += int(stored * (2 * self._hnsw_m * 4 * (1 + 1 / self._hnsw_m) + 12))
            return size

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "index_type": self._index_type,
                "active_type": self._active,
                "dim": self._dim,
                "count": self.count,
                "tombstones": int(self._tombstones.size),
                "trained_nlist": self._trained_nlist,
                "trained_on": self._trained_on,
                "memory_bytes": self.memory_bytes(),
                "params": self._params(),
            }

    # ------------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """Atomically write the store: a unique temp file, fsync, ``os.replace``, fsync the
        folder (see ``engine.fsutil.atomic_write``).

        A crash at any point leaves either the old file or the new one, never a mix.
        """
        with self._lock:
            payload = faiss.serialize_index(self._index)
            tombs = self._tombstones.astype("<i8").tobytes()
            meta = json.dumps(
                {
                    "index_type": self._index_type,
                    "active_type": self._active,
                    "count": self.count,
                    "trained_nlist": self._trained_nlist,
                    "trained_on": self._trained_on,
                    "params": self._params(),
                },
                sort_keys=True,
            ).encode("utf-8")
            digest = hashlib.sha256()
            for part in (meta, tombs, payload):
                digest.update(part)
            header = _HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                0,
                self._dim,
                len(meta),
                self._tombstones.size,
                payload.nbytes,
                digest.digest(),
            )
            with atomic_write(Path(path)) as fh:
                for part in (header, meta, tombs, memoryview(payload)):
                    fh.write(part)
            self.digest = digest.digest()

    @staticmethod
    def file_digest(path: Path) -> bytes | None:
        """The sha256 a saved file's header records, read without loading the file: tells
        whether the file changed since this store was opened or saved (see ``digest``)."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(_HEADER.size)
        except FileNotFoundError:
            return None
        if len(head) < _HEADER.size or head[:4] != MAGIC:
            return None
        return _HEADER.unpack(head)[-1]

    @classmethod
    def open(
        cls, path: Path, *, name: str | None = None, threads: int | None = None
    ) -> FaissVectorStore:
        """Load a store written by ``save``, verifying it before FAISS parses it.

        ``name`` (the index name) only makes the repair hint in errors exact.
        """
        path = Path(path)
        data = path.read_bytes()

        def corrupt(reason: str) -> VectorStoreCorruptError:
            return VectorStoreCorruptError(path, reason, name)

        if len(data) < _PREFIX.size or data[:4] != MAGIC:
            raise corrupt("it does not start with the embedscope vector-store magic b'ESVS'")
        (_, version) = _PREFIX.unpack_from(data)
        if version > FORMAT_VERSION:
            raise VectorStoreVersionError(path, version, FORMAT_VERSION, name)
        if version < 1:
            raise corrupt(f"invalid format version {version}")
        if len(data) < _HEADER.size:
            raise corrupt(f"header truncated ({len(data)} of {_HEADER.size} bytes)")
        _, _, _, dim, meta_len, n_tombs, payload_len, digest = _HEADER.unpack_from(data)
        expected = _HEADER.size + meta_len + 8 * n_tombs + payload_len
        if len(data) != expected:
            raise corrupt(f"size is {len(data)} bytes but the header promises {expected}")
        body = memoryview(data)[_HEADER.size :]
        if hashlib.sha256(body).digest() != digest:
            raise corrupt("sha256 checksum mismatch")

        try:
            meta = json.loads(bytes(body[:meta_len]).decode("utf-8"))
            params = meta["params"]
            store = cls(dim, meta["index_type"], threads=threads, **params)
            active = meta["active_type"]
            count = int(meta["count"])
            trained_nlist = meta["trained_nlist"]
            trained_on = meta["trained_on"]
        except (ValueError, KeyError, TypeError) as exc:
            raise corrupt(f"unreadable metadata block ({exc})") from None
        if active not in ("flat", "hnsw", "ivf"):
            raise corrupt(f"unknown active index layout {active!r}")
        tomb_end = meta_len + 8 * n_tombs
        tombstones = np.frombuffer(body[meta_len:tomb_end], dtype="<i8").astype(np.int64)
        payload = np.frombuffer(body[tomb_end:], dtype=np.uint8)
        try:
            index = faiss.deserialize_index(payload)
        except RuntimeError as exc:
            raise corrupt(f"FAISS could not read the index ({exc})") from None

        store._install(index, active, tombstones, trained_nlist, trained_on, corrupt)
        if store.count != count:
            raise corrupt(f"header says {count} vectors but the index holds {store.count}")
        store.digest = digest
        return store

    # ------------------------------------------------------------------ internals

    def _search_where(
        self, queries: np.ndarray, k: int, candidate_ids: np.ndarray | None, where: Where
    ) -> tuple[np.ndarray, np.ndarray]:
        """``search`` with a ``Where``: its filter becomes candidate ids (SQLite), and excluded
        ids are dropped from the candidates, or over-fetched past when every id is a candidate."""
        if candidate_ids is not None:
            raise ValueError("search: pass candidate ids or a Where, not both")
        _check_positive("k", k)
        pool = where.candidate_ids()
        if pool is not None:
            pool = np.setdiff1d(pool, where.exclude, assume_unique=True)
            if pool.size == 0:
                q = self._check_vectors(queries, "search queries")
                return self._pad(
                    np.empty((q.shape[0], 0), "f4"), np.empty((q.shape[0], 0), np.int64), k
                )
            return self.search(queries, k, pool)
        if where.exclude.size == 0:
            return self.search(queries, k)
        scores, found = self.search(queries, k + int(where.exclude.size))
        keep = ~np.isin(found, where.exclude)
        out_s = np.full((found.shape[0], k), -np.inf, dtype=np.float32)
        out_i = np.full((found.shape[0], k), -1, dtype=np.int64)
        for row in range(found.shape[0]):
            kept = found[row][keep[row]][:k]
            out_i[row, : kept.size] = kept
            out_s[row, : kept.size] = scores[row][keep[row]][:k]
        out_s[out_i == -1] = -np.inf
        return out_s, out_i

    def _params(self) -> dict[str, Any]:
        return {
            "hnsw_m": self._hnsw_m,
            "hnsw_ef_search": self._hnsw_ef_search,
            "hnsw_ef_construction": self._hnsw_ef_construction,
            "ivf_nlist": self._ivf_nlist,
            "ivf_nprobe": self._ivf_nprobe,
            "auto_hnsw_threshold": self._auto_hnsw_threshold,
            "exact_candidate_limit": self._exact_candidate_limit,
            "generation": self._generation,
        }

    def _check_vectors(self, vectors: object, what: str) -> np.ndarray:
        if not isinstance(vectors, np.ndarray):
            raise ValueError(
                f"{what}: expected a numpy array of shape (n, {self._dim}) float32, "
                f"got {type(vectors).__name__}"
            )
        if vectors.ndim != 2 or vectors.shape[1] != self._dim or vectors.dtype != np.float32:
            raise ValueError(
                f"{what}: expected shape (n, {self._dim}) float32, "
                f"got shape {vectors.shape} {vectors.dtype}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError(f"{what}: contains NaN or infinite values")
        return np.ascontiguousarray(vectors)

    def _present(self, sorted_unique: np.ndarray) -> np.ndarray:
        """The subset of sorted unique ``ids`` that is stored and live."""
        return np.intersect1d(sorted_unique, self._ids, assume_unique=True)

    def _new_index(self, kind: str) -> faiss.Index:
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self._dim, self._hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = self._hnsw_ef_construction
            hnsw.hnsw.efSearch = self._hnsw_ef_search
            return faiss.IndexIDMap2(hnsw)
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live vector, for rebuilding into another layout."""
        if self._active == "ivf":
            return self._ids.copy(), self._reconstruct(self._ids)
        stored = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vecs = faiss.downcast_index(self._index.index).reconstruct_n(0, self._index.ntotal)
        keep = ~np.isin(stored, self._tombstones)
        return stored[keep], np.ascontiguousarray(vecs[keep], dtype=np.float32)

    def _rebuild(self, kind: str) -> None:
        ids, vecs = self._live_vectors()
        index = self._new_index(kind)
        if ids.size:
            index.add_with_ids(vecs, ids)
        self._index = index
        self._active = kind
        self._tombstones = np.empty(0, dtype=np.int64)

    def _maybe_transition(self) -> None:
        if self._index_type == "auto" and self._active == "flat":
            if self.count > self._auto_hnsw_threshold:
                self._rebuild("hnsw")
        elif self._index_type == "ivf" and self._active == "flat":
            nlist = self._ivf_nlist or ivf_nlist_for(self.count)
            if self.count >= _IVF_POINTS_PER_LIST * nlist:
                self._train_ivf(nlist)

    def _train_ivf(self, nlist: int) -> None:
        """Train k-means once on the vectors so far and move them into the IVF.

        Spherical k-means keeps centroids unit-length, matching inner-product search.
        """
        ids, vecs = self._live_vectors()
        quantizer = faiss.IndexFlatIP(self._dim)
        ivf = faiss.IndexIVFFlat(quantizer, self._dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.spherical = True
        ivf.cp.seed = 1234
        ivf.train(vecs)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.nprobe = min(self._ivf_nprobe, nlist)
        ivf.add_with_ids(vecs, ids)
        self._index = ivf
        self._active = "ivf"
        self._trained_nlist = nlist
        self._trained_on = int(ids.size)

    def _install(
        self,
        index: faiss.Index,
        active: str,
        tombstones: np.ndarray,
        trained_nlist: int | None,
        trained_on: int | None,
        corrupt: Callable[[str], VectorStoreCorruptError],
    ) -> None:
        """Adopt a deserialized index after checking it matches what the header claims."""
        if index.d != self._dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise corrupt(f"index has dim {index.d}, expected {self._dim} with inner product")
        if active == "ivf":
            if not isinstance(index, faiss.IndexIVFFlat) or trained_nlist != index.nlist:
                raise corrupt("expected a trained IndexIVFFlat matching the header")
            if index.direct_map.type != faiss.DirectMap.Hashtable:
                raise corrupt("the IVF index lacks its id hashtable")
            invlists = index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(index.nlist)
                if invlists.list_size(i)
            ]
            stored = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        else:
            inner = (
                faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
            )
            expected = faiss.IndexHNSWFlat if active == "hnsw" else faiss.IndexFlatIP
            if not isinstance(inner, expected):
                raise corrupt(f"expected IndexIDMap2 over {expected.__name__}")
            stored = faiss.vector_to_array(index.id_map)
        stored = stored.astype(np.int64)
        # With counts, np.unique does not import numpy.ma (~30 ms of a cold search).
        live, counts = np.unique(stored, return_counts=True)
        if counts.size and counts.max() > 1:
            raise corrupt("the index stores some ids twice")
        if tombstones.size and (active != "hnsw" or np.setdiff1d(tombstones, live).size):
            raise corrupt("tombstones do not match the stored ids")
        self._index = index
        self._active = active
        self._tombstones = np.unique(tombstones) if tombstones.size else tombstones
        self._ids = np.setdiff1d(live, self._tombstones, assume_unique=True)
        self._trained_nlist = trained_nlist
        self._trained_on = trained_on

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def _search_params(
        self, k: int, selector: faiss.IDSelector | None
    ) -> faiss.SearchParameters | None:
        if self._active == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(self._hnsw_ef_search, k))
        if self._active == "ivf":
            nprobe = min(self._ivf_nprobe, self._index.nlist)
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _exact_search(
        self, q: np.ndarray, k: int, pool: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over ``pool`` (sorted live ids), in blocks to bound memory."""
        best_s = np.empty((q.shape[0], 0), dtype=np.float32)
        best_i = np.empty((q.shape[0], 0), dtype=np.int64)
        for start in range(0, pool.size, _EXACT_BLOCK):
            block = pool[start : start + _EXACT_BLOCK]
            s, i = _topk(q @ self._reconstruct(block).T, block, k)
            best_s, best_i = _topk(
                np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i], axis=1), k
            )
        return best_s, best_i

    @staticmethod
    def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalise to (nq, k) with -inf / -1 where no result exists."""
        nq, m = ids.shape[0], min(ids.shape[1], k)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        out_s[:, :m] = scores[:, :k]
        out_i[:, :m] = ids[:, :k]
        out_s[out_i == -1] = -np.inf
        return out_s, out_i
