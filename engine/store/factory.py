"""Build or open a vector store by backend name, so the index never names a backend class.

Backends are imported on first use: an index on FAISS never loads pymilvus, and one on Milvus
never loads faiss.

``settings`` is the backend's own plain dict (``index.faiss`` / ``index.milvus`` in the config).
For ``faiss`` the flat ``index`` section of older configs works too: only the FAISS keys
(``type``, ``hnsw_*``, ``ivf_*``, ``auto_hnsw_threshold``, ``exact_candidate_limit``) are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from engine.store.vector_base import (
    VectorStore,
    VectorStoreCorruptError,
    VectorStoreError,
    VectorStoreMissingError,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "FAISS_KEYS",
    "check_backend",
    "create_store",
    "discard_store",
    "index_type_for",
    "is_shared",
    "open_store",
    "recorded_settings",
    "saved_elsewhere",
]

BACKENDS: Final = ("faiss", "milvus")
DEFAULT_BACKEND: Final = "faiss"
# Backends whose data lives on a server that every process of an index talks to.
SHARED: Final = frozenset({"milvus"})
FAISS_KEYS: Final = (
    "hnsw_m",
    "hnsw_ef_search",
    "hnsw_ef_construction",
    "ivf_nlist",
    "ivf_nprobe",
    "auto_hnsw_threshold",
    "exact_candidate_limit",
)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown vector-store backend {backend!r}; choose one of {', '.join(BACKENDS)} "
            "(index.backend in the config)"
        )
    return backend


def _milvus() -> ModuleType:
    """The Milvus backend module; a clear error when its client is not installed."""
    try:
        from engine.store import milvus_store
    except ImportError as exc:
        raise VectorStoreError(
            f"the milvus backend needs pymilvus, which is not installed ({exc}). Fix: "
            "pip install 'embedscope[milvus]', or set index.backend: faiss"
        ) from None
    return milvus_store


def _faiss_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in FAISS_KEYS if k in settings}


def is_shared(backend: str) -> bool:
    """True when the store is one server-side copy every process writes to at once, so a
    reader must never repair it (only the index's writer does); False for a per-process
    copy of a local file."""
    return check_backend(backend) in SHARED


def index_type_for(backend: str, requested: str | None, settings: Mapping[str, Any]) -> str:
    """The index type a new index records: FAISS's own (flat, hnsw, ivf, auto), or ``hnsw``
    for Milvus, which accepts no other (ValueError naming the setting)."""
    if check_backend(backend) == "faiss":
        return str(requested or settings.get("type") or "auto")
    if requested not in (None, "auto", "hnsw"):
        raise ValueError(
            f"index type {requested!r} is a FAISS setting; a {backend} index always uses HNSW "
            "(leave --type out, or use --backend faiss)"
        )
    return "hnsw"


def create_store(
    backend: str,
    settings: Mapping[str, Any],
    dim: int,
    *,
    name: str,
    index_type: str | None = None,
    replace: bool = False,
) -> VectorStore:
    """A new, empty store for index ``name`` with vectors of ``dim``.

    ``index_type`` overrides ``settings["type"]`` (FAISS only: flat, hnsw, ivf, auto).
    FAISS stores live in memory until ``save(path)``; a Milvus collection is created on the
    server at once (VectorStoreError if one exists for ``name``, unless ``replace``: then it is
    emptied; VectorStoreUnavailableError naming the URI when the server cannot be reached).
    ValueError for bad settings.
    """
    if check_backend(backend) == "faiss":
        from engine.store.faiss_store import FaissVectorStore

        kind = index_type or settings.get("type") or "flat"
        return FaissVectorStore(dim, kind, **_faiss_kwargs(settings))
    milvus = _milvus()
    store = milvus.MilvusVectorStore.create(
        dim, milvus.MilvusSettings.from_mapping(settings), name=name, exist_ok=replace
    )
    if replace and (store.generation or store.count):
        store.clear()
    return store


def discard_store(
    backend: str, settings: Mapping[str, Any], dim: int, *, name: str, path: Path
) -> None:
    """Drop what an index's store holds, readable or not, so ``repair`` rebuilds it from the
    metadata database: the FAISS file is deleted; a Milvus collection is emptied (or made)."""
    if check_backend(backend) == "faiss":
        Path(path).unlink(missing_ok=True)
        return
    create_store(backend, settings, dim, name=name, replace=True).close()


def saved_elsewhere(store: VectorStore, path: Path) -> bool:
    """True when a writer must reopen ``store`` before writing: another process saved its
    file since ``store`` read or wrote it; for a shared store always, since another process
    may have moved its generation since this one read it."""
    if is_shared(store.backend):
        return True
    from engine.store.faiss_store import FaissVectorStore

    return FaissVectorStore.file_digest(Path(path)) != getattr(store, "digest", None)


def open_store(
    backend: str,
    settings: Mapping[str, Any],
    dim: int,
    *,
    name: str,
    path: Path,
    missing_ok: bool = False,
) -> VectorStore:
    """The store index ``name`` was built on: the file at ``path`` (FAISS) or the index's
    collection on ``settings["uri"]`` (Milvus).

    The FAISS file is verified before FAISS parses it (VectorStoreCorruptError /
    VectorStoreVersionError); its own parameters win over ``settings``, which only fill in a
    new store. When the file or collection is missing: a new empty store if ``missing_ok``
    (the index then re-adds SQLite's chunks from the embedding cache), else
    VectorStoreMissingError saying where it looked.
    """
    if check_backend(backend) == "faiss":
        from engine.store.faiss_store import FaissVectorStore

        if Path(path).is_file():
            store = FaissVectorStore.open(path, name=name)
            if store.dim != dim:
                raise VectorStoreCorruptError(
                    path, f"it holds {store.dim}-dimensional vectors, the index {dim}", name
                )
            return store
        if missing_ok:
            return create_store(backend, settings, dim, name=name)
        raise VectorStoreMissingError(
            f"index '{name}': its vector file {path} is missing. Fix: run "
            f"`embedscope repair {name}` to rebuild it from the metadata database"
        )
    milvus = _milvus()
    parsed = milvus.MilvusSettings.from_mapping(settings)
    try:
        return milvus.MilvusVectorStore.open(parsed, name=name, dim=dim)
    except VectorStoreMissingError:
        if not missing_ok:
            raise
        return milvus.MilvusVectorStore.create(dim, parsed, name=name)


def recorded_settings(backend: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What an index's manifest records so it reopens on the backend it was built on
    (never a credential: the Milvus token stays in the user's config)."""
    if check_backend(backend) == "faiss":
        out = _faiss_kwargs(settings)
        if "type" in settings:
            out["type"] = settings["type"]
        return out
    return _milvus().MilvusSettings.from_mapping(settings).recorded()
