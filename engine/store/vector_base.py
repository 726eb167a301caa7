"""The vector-store contract the engine codes against, and its errors.

Kept free of FAISS imports so the TUI and the engine can type-check against
the protocol without paying for loading the native library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

__all__ = [
    "VectorStore",
    "VectorStoreCorruptError",
    "VectorStoreError",
    "VectorStoreVersionError",
]


class VectorStoreError(Exception):
    """Base class so callers can catch every vector-store failure in one place."""


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


@runtime_checkable
class VectorStore(Protocol):
    """Id-addressed store of L2-normalised float32 vectors searched by inner product.

    Ids are the caller's int64 chunk ids, so results join straight back to the
    metadata database without a translation table.
    """

    @property
    def dim(self) -> int: ...

    @property
    def count(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def contains(self, chunk_id: int) -> bool: ...

    def ids(self) -> np.ndarray: ...

    def fetch(self, ids: np.ndarray) -> np.ndarray: ...

    def search(
        self, queries: np.ndarray, k: int, candidate_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def open(cls, path: Path) -> Self: ...

    def memory_bytes(self) -> int: ...

    def info(self) -> dict[str, Any]: ...
