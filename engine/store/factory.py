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
    "open_store",
    "recorded_settings",
]

BACKENDS: Final = ("faiss", "milvus")
DEFAULT_BACKEND: Final = "faiss"
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


def create_store(
    backend: str,
    settings: Mapping[str, Any],
    dim: int,
    *,
    name: str,
    index_type: str | None = None,
) -> VectorStore:
    """A new, empty store for index ``name`` with vectors of ``dim``.

    ``index_type`` overrides ``settings["type"]`` (FAISS only: flat, hnsw, ivf, auto).
    FAISS stores live in memory until ``save(path)``; a Milvus collection is created on the
    server at once (VectorStoreError if one exists for ``name``; VectorStoreUnavailableError
    naming the URI when the server cannot be reached). ValueError for bad settings.
    """
    if check_backend(backend) == "faiss":
        from engine.store.faiss_store import FaissVectorStore

        kind = index_type or settings.get("type") or "flat"
        return FaissVectorStore(dim, kind, **_faiss_kwargs(settings))
    milvus = _milvus()
    return milvus.MilvusVectorStore.create(
        dim, milvus.MilvusSettings.from_mapping(settings), name=name
    )


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
