"""Persistent corpus indexes: pipeline, SQLite + FAISS storage, retrieval, repair and snapshots.

Importing this package does not import faiss; opening or creating an index does.
"""

from engine.cancel import CancelToken
from engine.index.corpus import CorpusIndex, IndexStats
from engine.index.errors import (
    CorpusIndexError,
    IndexCorruptError,
    IndexLockedError,
    IndexModelMismatchError,
    IndexNotFoundError,
    IndexSourceError,
    IndexVersionError,
)
from engine.index.manager import IndexManager
from engine.index.progress import FileFailure, IndexProgress, IndexReport
from engine.index.search import MODES, PERS, SearchHit

__all__ = [
    "MODES",
    "PERS",
    "CancelToken",
    "CorpusIndex",
    "CorpusIndexError",
    "FileFailure",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexManager",
    "IndexModelMismatchError",
    "IndexNotFoundError",
    "IndexProgress",
    "IndexReport",
    "IndexSourceError",
    "IndexStats",
    "IndexVersionError",
    "SearchHit",
]
