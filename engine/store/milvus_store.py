"""Milvus-backed vector store: one collection per index on a Milvus server or cluster.

Each row is a chunk: its int64 id as primary key, its vector, the document columns the filter
language names (path, title, type, size, mtime), the front-matter metadata as JSON, and the
``forms`` JSON that user filters are translated against (``engine.store.milvus_filters``), so
filtered searches are answered by the server without shipping candidate ids.

Consistency: every read uses the configured level, ``Session`` by default (this client always
sees its own writes; measured ~6 ms per search, ~30 ms right after a write, against ~40 ms for
``Strong`` at proxy.timeTickInterval=20 and ~200 ms at the server's default). Opening a store
does one ``Strong`` read, so a process also sees what other processes wrote before it opened.

The commit generation lives in the collection itself, in a sentinel row with id -1 (chunk ids
are >= 0, and every read says ``id >= 0``): it is written, kept and dropped with the data it
describes. (A collection property would be simpler, but Milvus 2.3.5 forgets altered properties
when it restarts.)

Deletes: a ``Session`` read right after a delete can still see the deleted rows (measured on
2.3.5: 50 of 50 seen), so the first read after a delete or an upsert is ``Strong``; once it has
answered, the server has applied the delete and ``Session`` reads see it too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from engine.store.milvus_filters import FORMS_FIELD, MilvusFilter, chunk_forms, translate
from engine.store.vector_base import (
    ChunkFields,
    MissingIdsError,
    VectorStoreError,
    VectorStoreMissingError,
    VectorStoreUnavailableError,
    Where,
    as_ids,
    check_vectors,
    preview,
)

__all__ = [
    "CONSISTENCY_LEVELS",
    "MAX_TOPK",
    "MilvusSettings",
    "MilvusVectorStore",
    "collection_name",
]

CONSISTENCY_LEVELS: Final = ("Session", "Strong")
MAX_TOPK: Final = 16_384
SENTINEL_ID: Final = -1
FORMAT_VERSION: Final = 1
LIVE: Final = "id >= 0"
_VARCHAR_BYTES: Final = 65_535
_WRITE_BATCH: Final = 1_000
# Milvus' default minSegmentSizeToEnableIndex: smaller sealed segments get no graph.
_SMALL_SEGMENT_ROWS: Final = 1_024
_ID_BATCH: Final = 4_096
_NOT_FOUND_CODES: Final = frozenset({100})
_FIELDS: Final = ("id", "vector", "path", "title", "doc_type", "size", "mtime", "metadata")

# pymilvus logs every failed call with a traceback before raising (its import installs the
# handlers); the store turns failures into one clear error, so those logs would only put
# tracebacks in front of users.
for _logger in ("pymilvus", "pymilvus.milvus_client"):
    logging.getLogger(_logger).setLevel(logging.CRITICAL)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MilvusSettings:
    """``index.milvus`` in the config. ``token`` is ``user:password`` or an API key."""

    uri: str = "http://127.0.0.1:19530"
    token: str = ""
    consistency: str = "Session"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    ef_search: int = 128
    timeout_s: float = 30.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> MilvusSettings:
        """Known keys from a settings dict (others are ignored), each checked."""
        kwargs = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and raw[k] is not None}
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        if not isinstance(self.uri, str) or not re.match(r"^(https?|tcp|grpc)://\S+$", self.uri):
            raise ValueError(
                f"index.milvus.uri must look like http://host:19530, got {self.uri!r}"
            )
        if not isinstance(self.token, str):
            raise ValueError("index.milvus.token must be a string")
        if self.consistency not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"index.milvus.consistency must be one of {', '.join(CONSISTENCY_LEVELS)} "
                f"(read-your-writes), got {self.consistency!r}"
            )
        for key, low, high in (
            ("hnsw_m", 2, 2048),
            ("hnsw_ef_construction", 1, 65_536),
            ("ef_search", 1, MAX_TOPK),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"index.milvus.{key} must be an integer {low}-{high}, got {value!r}"
                )
        timeout = self.timeout_s
        valid = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not valid or not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"index.milvus.timeout_s must be a number > 0, got {timeout!r}")

    def recorded(self) -> dict[str, Any]:
        """What an index's manifest keeps: everything but the token."""
        return {
            "uri": self.uri,
            "consistency": self.consistency,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "ef_search": self.ef_search,
        }


def collection_name(index_name: str) -> str:
    """A valid, collision-free Milvus collection name for an index name: letters, digits and
    ``_`` kept, anything else ``_``, plus a digest of the exact name ("a-b" and "a_b" differ)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", index_name)[:64]
    digest = hashlib.sha256(index_name.encode("utf-8")).hexdigest()[:10]
    return f"embedscope_{safe}_{digest}"


def _clip(text: str) -> str:
    """Fit a display column into VARCHAR's byte limit (filters read ``forms``, never clipped)."""
    data = text.encode("utf-8")
    if len(data) <= _VARCHAR_BYTES:
        return text
    return data[:_VARCHAR_BYTES].decode("utf-8", errors="ignore")


def _in_list(ids: np.ndarray) -> str:
    return "[" + ", ".join(str(int(i)) for i in ids) + "]"


class MilvusVectorStore:
    """One index's vectors in a Milvus collection; see the module docstring."""

    def __init__(
        self, client: Any, collection: str, dim: int, settings: MilvusSettings, name: str
    ) -> None:
        """Use ``create`` or ``open``; this adopts a connected client and a loaded collection."""
        self._client = client
        self._collection = collection
        self._dim = dim
        self._settings = settings
        self._name = name
        self._lock = threading.Lock()
        self._generation = 0
        self._closed = False
        # Deletes issued, and how many of them a finished Strong read has covered.
        self._deletes = 0
        self._covered = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls, dim: int, settings: MilvusSettings, *, name: str, exist_ok: bool = False
    ) -> MilvusVectorStore:
        """Create the index's collection (HNSW over inner product) and load it.

        Raises VectorStoreError when it already exists (unless ``exist_ok``: then it is opened).
        """
        client = cls._connect(settings)
        store = cls(client, collection_name(name), dim, settings, name)
        try:
            if store._call("check the collection", client.has_collection, store._collection):
                if not exist_ok:
                    raise VectorStoreError(
                        f"index '{name}': Milvus collection '{store._collection}' already exists "
                        f"on {settings.uri}. Fix: open the index instead, or remove it with "
                        f"`embedscope rm-index {name}`"
                    )
                store._adopt()
            else:
                store._create_collection()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(
        cls, settings: MilvusSettings, *, name: str, dim: int | None = None
    ) -> MilvusVectorStore:
        """Open an existing collection, checking it is an embedscope one of dimension ``dim``.

        Raises VectorStoreMissingError when there is none on the server, naming URI and
        collection; VectorStoreUnavailableError when the server cannot be reached.
        """
        client = cls._connect(settings)
        collection = collection_name(name)
        try:
            described = cls._describe(client, collection, settings, name)
            found = next(
                (int(f["params"]["dim"]) for f in described["fields"] if f["name"] == "vector"),
                None,
            )
            names = {f["name"] for f in described["fields"]}
            if found is None or not {*_FIELDS, FORMS_FIELD} <= names:
                raise VectorStoreError(
                    f"Milvus collection '{collection}' on {settings.uri} was not made by "
                    f"embedscope (its fields are {sorted(names)}). Fix: pick another index name"
                )
            if dim is not None and found != dim:
                raise VectorStoreError(
                    f"index '{name}': Milvus collection '{collection}' on {settings.uri} holds "
                    f"{found}-dimensional vectors, but the index's model makes {dim}. Fix: run "
                    f"`embedscope repair {name}`"
                )
            store = cls(client, collection, found, settings, name)
        except BaseException:
            client.close()
            raise
        try:
            store._adopt(described)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _connect(settings: MilvusSettings) -> Any:
        try:
            return MilvusClient(
                uri=settings.uri,
                token=settings.token,
                timeout=min(settings.timeout_s, 10.0),
                dedicated=True,
            )
        except MilvusException as exc:
            raise VectorStoreUnavailableError(
                f"cannot reach the Milvus server at {settings.uri} ({exc.message}). Fix: start "
                "it (`milvus-server --data DIR`) or point index.milvus.uri at a running server"
            ) from None

    @classmethod
    def _describe(
        cls, client: Any, collection: str, settings: MilvusSettings, name: str
    ) -> dict[str, Any]:
        try:
            return dict(client.describe_collection(collection, timeout=settings.timeout_s))
        except MilvusException as exc:
            if exc.code == 2:  # the connection went away between connect and describe
                raise VectorStoreUnavailableError(
                    f"cannot reach the Milvus server at {settings.uri} ({exc.message})"
                ) from None
            if exc.code in _NOT_FOUND_CODES or "not found" in str(exc.message).lower():
                raise VectorStoreMissingError(
                    f"index '{name}': its Milvus collection '{collection}' is missing on "
                    f"{settings.uri}. Fix: point index.milvus.uri at the server the index was "
                    f"built on, or rebuild it there with `embedscope repair {name}`"
                ) from None
            raise VectorStoreUnavailableError(
                f"Milvus server at {settings.uri} failed to describe collection "
                f"'{collection}': {exc.message}"
            ) from None

    def _create_collection(self) -> None:
        client, s = self._client, self._settings
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        for text in ("path", "title", "doc_type"):
            schema.add_field(text, DataType.VARCHAR, max_length=_VARCHAR_BYTES)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime", DataType.DOUBLE)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(FORMS_FIELD, DataType.JSON)
        index = client.prepare_index_params()
        index.add_index(
            "vector",
            index_type="HNSW",
            metric_type="IP",
            params={"M": s.hnsw_m, "efConstruction": s.hnsw_ef_construction},
        )
        self._call(
            "create the collection",
            client.create_collection,
            self._collection,
            schema=schema,
            index_params=index,
            consistency_level=s.consistency,
        )
        self._write_generation(0)

    def _adopt(self, described: Mapping[str, Any] | None = None) -> None:
        """Load the collection, read its generation, and wait once for everything written
        before now (Strong), so Session reads afterwards include other processes' writes."""
        if described is None:
            described = self._describe(
                self._client, self._collection, self._settings, self._name
            )
        self._call("load the collection", self._client.load_collection, self._collection)
        rows = self._call(
            "read the generation",
            self._client.query,
            self._collection,
            filter=f"id == {SENTINEL_ID}",
            output_fields=["metadata"],
            consistency_level="Strong",
        )
        raw = rows[0]["metadata"].get("generation") if rows else None
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise VectorStoreError(
                f"Milvus collection '{self._collection}' on {self._settings.uri} has no valid "
                f"generation row (found {raw!r}). Fix: run `embedscope repair {self._name}`"
            )
        self._generation = raw

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def save(self, path: Path) -> None:
        """Nothing to write: the server made every acknowledged write durable (``path`` is
        the local stores' file)."""

    def optimize(self) -> None:
        """Flush: seals growing segments so the server builds their HNSW graphs."""
        self._call("flush the collection", self._client.flush, self._collection)

    def wait_indexed(self, timeout_s: float) -> bool:
        """Wait (bounded) until the server searches every flushed row through its HNSW graph;
        True when it does. Until then searches still answer, but rows not yet handed over go
        through the server's interim IVF index (measured: recall@10 0.91 against 0.98 after,
        10k real chunks), so a benchmark or a migration check waits here after ``optimize``."""
        deadline = time.monotonic() + timeout_s
        while True:
            described = self._call(
                "check the index", self._client.describe_index, self._collection, "vector"
            )
            if int(described.get("pending_index_rows", 0)) == 0:
                # Growing segments are not listed; a sealed one serves through its graph, or
                # is scanned exactly when too small to get one (minSegmentSizeToEnableIndex).
                segments = self._call(
                    "list loaded segments", self._client.list_loaded_segments, self._collection
                )
                sealed = sum(int(s.num_rows) for s in segments)
                graphed = all(s.index_id or s.num_rows < _SMALL_SEGMENT_ROWS for s in segments)
                if graphed and sealed >= int(described.get("total_rows", 0)):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def destroy(self) -> None:
        """Drop the collection and close: what removing the index does on the server."""
        self._call("drop the collection", self._client.drop_collection, self._collection)
        self.close()

    def clear(self) -> None:
        with self._lock:
            self._call("drop the collection", self._client.drop_collection, self._collection)
            self._create_collection()

    # ------------------------------------------------------------------ properties

    @property
    def backend(self) -> str:
        return "milvus"

    @property
    def pushes_filters(self) -> bool:
        return True

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def uri(self) -> str:
        return self._settings.uri

    @property
    def collection(self) -> str:
        return self._collection

    @property
    def count(self) -> int:
        # count(*) without a filter answers from statistics that ignore deletes.
        rows = self._query("count the vectors", LIVE, ["count(*)"])
        return int(rows[0]["count(*)"])

    @property
    def generation(self) -> int:
        return self._generation

    def set_generation(self, generation: int) -> None:
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise ValueError(f"generation must be an integer >= 0, got {generation!r}")
        self._write_generation(generation)

    def _write_generation(self, generation: int) -> None:
        row = {
            "id": SENTINEL_ID,
            "vector": [0.0] * self._dim,
            "path": "",
            "title": "",
            "doc_type": "",
            "size": 0,
            "mtime": 0.0,
            "metadata": {"generation": generation, "format": FORMAT_VERSION},
            FORMS_FIELD: {},
        }
        self._call("record the generation", self._client.upsert, self._collection, [row])
        self._deletes += 1
        self._generation = generation

    # ------------------------------------------------------------------ mutation

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ChunkFields] | None = None
    ) -> None:
        new_ids, rows = self._rows(ids, vectors, fields, "add")
        if not rows:
            return
        uniq, counts = np.unique(new_ids, return_counts=True)
        if uniq.size != new_ids.size:
            raise ValueError(f"add: duplicate ids within the batch: {preview(uniq[counts > 1])}")
        with self._lock:
            present = self._existing(uniq)
            if present.size:
                raise ValueError(
                    f"add: ids already in the vector store: {preview(present)}; "
                    "remove them first or upsert to replace their vectors"
                )
            for start in range(0, len(rows), _WRITE_BATCH):
                batch = rows[start : start + _WRITE_BATCH]
                self._call("insert vectors", self._client.insert, self._collection, batch)

    def upsert(
        self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ChunkFields] | None = None
    ) -> None:
        new_ids, rows = self._rows(ids, vectors, fields, "upsert")
        if np.unique(new_ids).size != new_ids.size:
            raise ValueError("upsert: duplicate ids within the batch")
        with self._lock:
            for start in range(0, len(rows), _WRITE_BATCH):
                batch = rows[start : start + _WRITE_BATCH]
                self._call("upsert vectors", self._client.upsert, self._collection, batch)
                self._deletes += 1

    def remove(self, ids: np.ndarray) -> int:
        gone = np.unique(as_ids(ids, "remove ids"))
        with self._lock:
            present = self._existing(gone)
            for start in range(0, present.size, _ID_BATCH):
                part = present[start : start + _ID_BATCH]
                self._call(
                    "delete vectors",
                    self._client.delete,
                    self._collection,
                    filter=f"id in {_in_list(part)}",
                )
                self._deletes += 1
        return int(present.size)

    def _rows(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        fields: Sequence[ChunkFields] | None,
        what: str,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        new_ids = as_ids(ids, f"{what} ids")
        vecs = check_vectors(vectors, self._dim, f"{what} vectors", unit=True)
        if vecs.shape[0] != new_ids.size:
            raise ValueError(
                f"{what}: got {new_ids.size} ids for {vecs.shape[0]} vectors; pass one id per row"
            )
        if new_ids.size == 0:
            return new_ids, []
        if fields is None or len(fields) != new_ids.size:
            got = "none" if fields is None else len(fields)
            raise ValueError(
                f"{what}: Milvus evaluates filters itself, so it needs the document fields of "
                f"every chunk: got {got} for {new_ids.size} ids"
            )
        rows = []
        forms_cache: dict[int, dict[str, Any]] = {}
        for chunk_id, vec, doc in zip(new_ids.tolist(), vecs.tolist(), fields, strict=True):
            forms = forms_cache.get(id(doc))
            if forms is None:
                forms = forms_cache[id(doc)] = chunk_forms(doc)
            rows.append(
                {
                    "id": chunk_id,
                    "vector": vec,
                    "path": _clip(doc.path),
                    "title": _clip(doc.title),
                    "doc_type": _clip(doc.doc_type),
                    "size": int(doc.size),
                    "mtime": float(doc.mtime),
                    "metadata": dict(doc.metadata),
                    FORMS_FIELD: forms,
                }
            )
        return new_ids, rows

    # ------------------------------------------------------------------ lookup

    def contains(self, chunk_id: int) -> bool:
        return self._existing(as_ids([chunk_id], "contains id")).size == 1

    def ids(self) -> np.ndarray:
        found = [part for part, _ in self._iterate(["id"], _ID_BATCH * 4)]
        if not found:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate(found))

    def iter_vectors(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_TOPK:
            raise ValueError(f"batch must be an integer 1-{MAX_TOPK}, got {batch!r}")
        for ids, rows in self._iterate(["vector"], batch):
            order = np.argsort(ids)
            vecs = np.asarray([rows[i]["vector"] for i in order], dtype=np.float32)
            yield ids[order], vecs.reshape(-1, self._dim)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        wanted = as_ids(ids, "fetch ids")
        found: dict[int, list[float]] = {}
        for start in range(0, wanted.size, _ID_BATCH):
            part = np.unique(wanted[start : start + _ID_BATCH])
            rows = self._query("fetch vectors", f"id in {_in_list(part)}", ["vector"])
            found.update((int(r["id"]), r["vector"]) for r in rows)
        missing = np.setdiff1d(wanted, np.fromiter(found, dtype=np.int64, count=len(found)))
        if missing.size:
            raise MissingIdsError(f"ids not in the vector store: {preview(missing)}")
        out = np.empty((wanted.size, self._dim), dtype=np.float32)
        for row, chunk_id in enumerate(wanted.tolist()):
            out[row] = found[chunk_id]
        return out

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        present: list[int] = []
        for start in range(0, ids.size, _ID_BATCH):
            part = ids[start : start + _ID_BATCH]
            rows = self._query("look up ids", f"id in {_in_list(part)}", ["id"])
            present.extend(int(r["id"]) for r in rows)
        return np.unique(np.asarray(present, dtype=np.int64))

    def _iterate(self, fields: list[str], batch: int) -> Iterator[tuple[np.ndarray, list[Any]]]:
        iterator = self._call(
            "list the collection",
            self._client.query_iterator,
            self._collection,
            batch_size=batch,
            filter=LIVE,
            output_fields=fields,
            consistency_level=self._read_level(),
        )
        try:
            while True:
                rows = self._call("list the collection", iterator.next, timed=False)
                if not rows:
                    return
                yield np.asarray([r["id"] for r in rows], dtype=np.int64), list(rows)
        finally:
            iterator.close()

    # ------------------------------------------------------------------ search

    def search(
        self,
        queries: np.ndarray,
        k: int,
        candidate_ids: np.ndarray | None = None,
        *,
        where: Where | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; filters are Milvus expressions, never id lists.

        A filter with a residual (globs, two-ended ranges) is over-fetched until ``k`` hits
        pass it; a row that still comes back short of what matches is answered exactly from
        the matching rows' vectors, so every row holds ``min(k, matching)`` results.
        """
        if candidate_ids is not None:
            raise ValueError(
                "search: this store evaluates filters itself; pass where=Where(filter), "
                "not candidate ids"
            )
        q = check_vectors(queries, self._dim, "search queries")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOPK:
            raise ValueError(f"k must be an integer 1-{MAX_TOPK} (Milvus' limit), got {k!r}")
        flt = translate(where.filter) if where is not None else MilvusFilter("")
        parts = [flt.expr] if flt.expr else []
        if where is not None and where.exclude.size:
            parts.append(f"id not in {_in_list(where.exclude)}")
        expr = " and ".join(f"({p})" for p in [*parts, LIVE])
        out_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        out_i = np.full((q.shape[0], k), -1, dtype=np.int64)
        if q.shape[0] == 0:
            return out_s, out_i
        if flt.residual is None:
            results = self._search(q, k, expr, [])
            for row, hits in enumerate(results):
                if len(hits) < k and self._matching(expr) > len(hits):
                    hits = self._exact(q[row], k, expr, None)
                self._fill(out_s, out_i, row, hits)
            return out_s, out_i
        for row in range(q.shape[0]):
            self._fill(out_s, out_i, row, self._residual_search(q[row], k, expr, flt.residual))
        return out_s, out_i

    def _residual_search(
        self, query: np.ndarray, k: int, expr: str, residual: Callable[[Any], bool]
    ) -> list[tuple[int, float]]:
        limit = min(MAX_TOPK, 4 * k)
        while True:
            hits = self._search(query[None, :], limit, expr, [FORMS_FIELD])[0]
            kept = [(i, s) for i, s, forms in hits if residual(forms)]
            if len(kept) >= k or len(hits) < limit:
                return kept[:k]
            if limit == MAX_TOPK:
                return self._exact(query, k, expr, residual)
            limit = min(MAX_TOPK, limit * 4)

    def _search(self, q: np.ndarray, limit: int, expr: str, fields: list[str]) -> list[list[Any]]:
        params = {"metric_type": "IP", "params": {"ef": max(self._settings.ef_search, limit)}}
        results = self._call(
            "search",
            self._client.search,
            self._collection,
            data=q.tolist(),
            filter=expr,
            limit=limit,
            output_fields=fields,
            search_params=params,
            consistency_level=self._read_level(),
        )
        if fields:
            return [
                [(int(h["id"]), float(h["distance"]), h["entity"][FORMS_FIELD]) for h in hits]
                for hits in results
            ]
        return [[(int(h["id"]), float(h["distance"])) for h in hits] for hits in results]

    def _exact(
        self, query: np.ndarray, k: int, expr: str, residual: Callable[[Any], bool] | None
    ) -> list[tuple[int, float]]:
        """Brute force over the rows ``expr`` matches, streamed: the guarantee behind k hits."""
        fields = ["vector", FORMS_FIELD] if residual else ["vector"]
        iterator = self._call(
            "scan for an exact search",
            self._client.query_iterator,
            self._collection,
            batch_size=_ID_BATCH,
            filter=expr,
            output_fields=fields,
            consistency_level=self._read_level(),
        )
        best: list[tuple[int, float]] = []
        try:
            while True:
                rows = self._call("scan for an exact search", iterator.next, timed=False)
                if not rows:
                    break
                if residual is not None:
                    rows = [r for r in rows if residual(r[FORMS_FIELD])]
                if not rows:
                    continue
                vecs = np.asarray([r["vector"] for r in rows], dtype=np.float32)
                scores = vecs @ query
                best.extend(zip((int(r["id"]) for r in rows), scores.tolist(), strict=True))
                best = sorted(best, key=lambda h: -h[1])[:k]
        finally:
            iterator.close()
        return best

    def _matching(self, expr: str) -> int:
        rows = self._query("count matches", expr, ["count(*)"])
        return int(rows[0]["count(*)"])

    @staticmethod
    def _fill(
        out_s: np.ndarray, out_i: np.ndarray, row: int, hits: Sequence[tuple[Any, ...]]
    ) -> None:
        for col, hit in enumerate(hits[: out_i.shape[1]]):
            out_i[row, col] = hit[0]
            out_s[row, col] = hit[1]

    # ------------------------------------------------------------------ reporting

    def memory_bytes(self) -> int:
        """0: the vectors live in the server's memory, not this process's."""
        return 0

    def info(self) -> dict[str, Any]:
        return {
            "backend": "milvus",
            "collection": self._collection,
            "dim": self._dim,
            "count": self.count,
            "generation": self._generation,
            "memory_bytes": 0,
            "params": self._settings.recorded(),
        }

    # ------------------------------------------------------------------ calls

    def _read_level(self) -> str:
        """The configured level, but Strong until a Strong read issued after the last delete
        has answered (see the module docstring and ``_call``)."""
        return "Strong" if self._deletes != self._covered else self._settings.consistency

    def _query(self, what: str, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        return list(
            self._call(
                what,
                self._client.query,
                self._collection,
                filter=expr,
                output_fields=fields,
                consistency_level=self._read_level(),
            )
        )

    def _call(
        self, what: str, fn: Callable[..., T], *args: Any, timed: bool = True, **kwargs: Any
    ) -> T:
        """Run one client call (with the configured timeout unless ``timed`` is False: an
        iterator's ``next`` takes none); failures become store errors naming the server and
        the collection, never a traceback."""
        if self._closed:
            raise VectorStoreError(f"the Milvus store of index '{self._name}' is closed")
        if timed:
            kwargs.setdefault("timeout", self._settings.timeout_s)
        deletes = self._deletes
        try:
            result = fn(*args, **kwargs)
            if kwargs.get("consistency_level") == "Strong":
                self._covered = max(self._covered, deletes)
            return result
        except (MilvusException, grpc.RpcError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            code = getattr(exc, "code", None)
            place = f"collection '{self._collection}' on the Milvus server at {self.uri}"
            if code in _NOT_FOUND_CODES or "collection not found" in str(message).lower():
                raise VectorStoreMissingError(
                    f"index '{self._name}': {place} is missing (while trying to {what}). Fix: "
                    "point index.milvus.uri at the server the index was built on, or rebuild "
                    f"it there with `embedscope repair {self._name}`"
                ) from None
            raise VectorStoreUnavailableError(
                f"could not {what} in {place}: {message}. Fix: check that the server is "
                "running and reachable"
            ) from None
