"""The vector-store contract the index codes against, its arguments and its errors.

Kept free of FAISS and pymilvus imports so the TUI and the engine can type-check against the
contract without loading a native library or a network client.

Two kinds of backend sit behind it:

* **local** (``faiss``): vectors only; user filters are resolved by SQLite into candidate chunk
  ids, which the store restricts its search to (``Where.candidate_ids``).
* **pushdown** (``milvus``): the store also holds the filterable document fields of each chunk
  (``ChunkFields``) and translates the parsed user filter into its own query language, so a
  filtered search never ships a list of ids (``Where.filter``).

The index passes the same ``Where`` to either and never asks which one it has: a pushdown store
only calls ``Where.filter``; a local one only calls ``Where.candidate_ids``, which asks SQLite once.

Persistence: a local store is memory plus the file ``save(path)`` writes in the index folder, so
a snapshot of the folder holds it. A remote store's data lives on its server; a snapshot holds
what ``iter_vectors`` lists (ids and vectors; the fields come back from SQLite), and restoring
``add``s them into a new store. ``repair`` never needs the old vectors: it calls ``clear`` and
re-adds SQLite's chunks from the embedding cache, then sets SQLite's generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.errors import EmbedscopeError
from engine.store.filters import Filter

__all__ = [
    "ChunkFields",
    "MissingIdsError",
    "VectorStore",
    "VectorStoreCorruptError",
    "VectorStoreError",
    "VectorStoreMissingError",
    "VectorStoreUnavailableError",
    "VectorStoreVersionError",
    "Where",
    "as_ids",
    "check_vectors",
    "preview",
]

_SHOW_IDS = 10


class VectorStoreError(EmbedscopeError):
    """Base class so callers can catch every vector-store failure in one place (and every
    front end reports it as one line, like the rest of the engine's errors)."""

    code = "vector_store"


class VectorStoreCorruptError(VectorStoreError):
    """A store file failed verification; it is never handed to the native reader."""

    def __init__(self, path: Path, reason: str, name: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.name = name
        target = name if name else "<index-name>"
        super().__init__(
            f"vector store file {self.path} is corrupt: {reason}. "
            f"Fix: run `embedscope repair {target}` to rebuild it from the metadata database."
        )


class VectorStoreVersionError(VectorStoreError):
    """The file was written by a newer embedscope whose layout this build cannot read."""

    def __init__(self, path: Path, found: int, supported: int, name: str | None = None) -> None:
        self.path = Path(path)
        self.found = found
        self.supported = supported
        self.name = name
        target = name if name else "<index-name>"
        super().__init__(
            f"vector store file {self.path} uses format version {found}, but this embedscope "
            f"reads versions up to {supported}. Fix: upgrade embedscope, or run "
            f"`embedscope repair {target}` to rebuild it in the older format."
        )


class VectorStoreUnavailableError(VectorStoreError):
    """A remote store cannot be reached or refused a call; the message names its address."""

    code = "vector_store_unavailable"
    status = 503


class VectorStoreMissingError(VectorStoreError):
    """The store an index was built on is not there (no file, no collection)."""


class MissingIdsError(VectorStoreError, KeyError):
    """``fetch`` asked for ids the store does not hold (a KeyError for older callers)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def preview(ids: np.ndarray) -> str:
    """The first few ids of a set, for error messages."""
    shown = ", ".join(str(int(i)) for i in ids[:_SHOW_IDS])
    more = f", … ({len(ids)} in total)" if len(ids) > _SHOW_IDS else ""
    return f"[{shown}{more}]"


def as_ids(ids: object, what: str) -> np.ndarray:
    """Chunk ids as a contiguous int64 array; ValueError unless 1-D integers >= 0."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of int64 ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expected integer ids (int64), got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.unsignedinteger) and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: ids must fit in int64, got {int(arr.max())}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    negative = out[out < 0]
    if negative.size:
        raise ValueError(f"{what}: ids must be >= 0, got {preview(negative)}")
    return out


def check_vectors(vectors: object, dim: int, what: str, *, unit: bool = False) -> np.ndarray:
    """(n, dim) finite float32 rows, L2-normalised when ``unit``; ValueError otherwise."""
    if not isinstance(vectors, np.ndarray):
        raise ValueError(
            f"{what}: expected a numpy array of shape (n, {dim}) float32, "
            f"got {type(vectors).__name__}"
        )
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
        raise ValueError(
            f"{what}: expected shape (n, {dim}) float32, got shape {vectors.shape} {vectors.dtype}"
        )
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    if unit and vectors.size:
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if bad.size:
            raise ValueError(
                f"{what}: rows must be L2-normalised (cosine search), but row {int(bad[0])} "
                f"has norm {float(norms[bad[0]]):.4f}; {bad.size} row(s) affected. Normalise "
                "them (e.g. encode with normalize_embeddings=True)"
            )
    return np.ascontiguousarray(vectors)


@dataclass(frozen=True, slots=True)
class ChunkFields:
    """What a pushdown store keeps beside a chunk's vector so it can evaluate user filters:
    the document's columns and its front-matter metadata (the filter language's keys)."""

    path: str
    title: str
    doc_type: str
    size: int
    mtime: float
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, doc: Any) -> ChunkFields:
        """From a ``DocumentIn`` or ``DocumentRow`` (anything with those attributes)."""
        return cls(
            path=doc.path,
            title=doc.title,
            doc_type=doc.doc_type,
            size=int(doc.size),
            mtime=float(doc.mtime),
            metadata=dict(doc.metadata or {}),
        )


class Where:
    """Restrictions on one search, given in the form each backend needs, resolved lazily.

    ``filter``: the parsed user filter (empty: no filter). ``resolve``: turns it into the ids of
    the matching chunks (``MetadataStore.filter_chunk_ids``); only local stores call it, once.
    ``exclude``: ids never returned (more-like-this leaves out its source document).
    """

    __slots__ = ("_ids", "_resolved", "exclude", "filter", "resolve")

    def __init__(
        self,
        filter: Filter | None = None,
        resolve: Callable[[Filter], np.ndarray] | None = None,
        exclude: Sequence[int] | np.ndarray = (),
    ) -> None:
        self.filter = filter if filter is not None else Filter()
        self.resolve = resolve
        self.exclude = np.unique(np.asarray(exclude, dtype=np.int64))
        self._ids: np.ndarray | None = None
        self._resolved = False

    def candidate_ids(self) -> np.ndarray | None:
        """Sorted ids matching the filter, or None when there is no filter (every id).

        Raises ValueError when there is a filter but no resolver: a local store cannot
        evaluate filters itself.
        """
        if not self.filter:
            return None
        if not self._resolved:
            if self.resolve is None:
                raise ValueError(
                    "this vector store resolves filters through the metadata database, but the "
                    "search gave no resolver; pass Where(filter, resolve=store.filter_chunk_ids)"
                )
            self._ids = np.unique(np.asarray(self.resolve(self.filter), dtype=np.int64))
            self._resolved = True
        return self._ids


@runtime_checkable
class VectorStore(Protocol):
    """Id-addressed store of L2-normalised float32 vectors searched by inner product (cosine).

    Ids are the caller's int64 chunk ids (>= 0), so results join straight back to the metadata
    database without a translation table. Stores are built and opened by
    ``engine.store.factory`` (``create_store`` / ``open_store``), never by naming a class.

    Every method may raise ``VectorStoreUnavailableError`` on a remote backend (server down,
    call refused; the message names the URI). Argument errors (wrong shape or dtype, negative
    ids, vectors that are not unit length) are ``ValueError`` before anything is written.

    Durability and reconcile: the metadata database (SQLite) is the source of truth. Every
    SQLite transaction that adds or removes chunk ids bumps a *commit generation* stored in
    SQLite; after applying that transaction's vectors the index calls ``set_generation``. On
    open, equal generations mean the store holds exactly SQLite's ids and nothing is listed;
    different ones (a crash between the two writes) mean ``ids()`` is compared with SQLite's.
    """

    @property
    def backend(self) -> str:
        """Factory name of the backend: ``faiss`` or ``milvus``."""
        ...

    @property
    def pushes_filters(self) -> bool:
        """True when ``search`` evaluates ``Where.filter`` itself; such a store needs
        ``fields`` on every ``add``/``upsert`` (ValueError without them)."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension fixed at creation."""
        ...

    @property
    def count(self) -> int:
        """Live vectors (removed ones never count). Exact, reads the caller's own writes."""
        ...

    @property
    def generation(self) -> int:
        """The commit generation last set (0 for a new store); persisted with ``save``."""
        ...

    def set_generation(self, generation: int) -> None:
        """Record that the store holds every write of ``generation`` (an int >= 0).

        Local stores persist it on the next ``save``; remote stores at once.
        """
        ...

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ChunkFields] | None = None
    ) -> None:
        """Add ``vectors`` (n, dim) float32, unit length, under new ``ids`` (n,) int64.

        ``fields``: one per row, required when ``pushes_filters``, ignored otherwise.
        Raises ValueError for an id already stored or repeated in the batch; nothing is added.
        """
        ...

    def upsert(
        self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ChunkFields] | None = None
    ) -> None:
        """Like ``add``, but an id already stored has its vector (and fields) replaced."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids``; absent ones are ignored. Returns how many were stored and removed."""
        ...

    def contains(self, chunk_id: int) -> bool:
        """Whether ``chunk_id`` is stored and live."""
        ...

    def ids(self) -> np.ndarray:
        """Every live id, ascending, as int64. Costs a full listing on a remote store: the index
        calls it only when generations differ."""
        ...

    def iter_vectors(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every live (ids, vectors) in batches of at most ``batch``, ids ascending within
        the listing; what a snapshot or a migration copies."""
        ...

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for ``ids`` as (n, dim) float32, in the order asked.

        Raises ``MissingIdsError`` (a KeyError) naming ids that are not stored.
        """
        ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        candidate_ids: np.ndarray | None = None,
        *,
        where: Where | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine for each query row: (scores, ids), each (nq, k), best first,
        padded with -inf / -1.

        ``where`` restricts the result; every row holds exactly ``min(k, matching ids)``
        results on every backend (a selective filter never leaves a row short).
        ``candidate_ids`` is the local stores' older form of ``Where.candidate_ids``; a pushdown
        store raises ValueError for it. Raises ValueError for a bad shape or k < 1.
        """
        ...

    def save(self, path: Path) -> None:
        """Make every write so far durable. A local store writes its file at ``path``
        atomically (a crash leaves the old or the new file); a remote store's writes are
        durable once acknowledged, so it ignores ``path``."""
        ...

    def optimize(self) -> None:
        """Called after a bulk load (an indexing run, a migration): a remote store seals what
        it has buffered so its ANN index is built; a local one has nothing to do."""
        ...

    def clear(self) -> None:
        """Drop every vector (what ``repair`` does before re-adding SQLite's chunks from the
        embedding cache); settings and dimension stay, the generation goes back to 0."""
        ...

    def close(self) -> None:
        """Release connections; the store must not be used afterwards. Idempotent."""
        ...

    def destroy(self) -> None:
        """Delete what the store keeps outside the index folder (a remote collection) and
        close it; what ``rm-index`` calls. Local stores only drop their memory."""
        ...

    def memory_bytes(self) -> int:
        """Approximate resident bytes in this process (0 for data held by a server)."""
        ...

    def info(self) -> dict[str, Any]:
        """Backend, dimension, count and settings, for ``embedscope info`` and the TUI.
        Never includes credentials."""
        ...
