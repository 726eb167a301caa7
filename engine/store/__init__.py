"""Index storage: the SQLite metadata store (source of truth) and user metadata filters.

The FAISS vector store lives in ``engine.store.faiss_store`` and is deliberately not imported
here, so importing this package never loads faiss.
"""

from engine.store.filters import (
    FILTER_FORMS,
    Condition,
    Filter,
    FilterError,
    parse_filter,
    parse_filters,
    split_filter_text,
)
from engine.store.metadata import (
    SCHEMA_VERSION,
    ChunkIn,
    ChunkRow,
    DocumentIn,
    DocumentRow,
    MetadataStore,
    StoreCorruptError,
    StoreError,
    StoreVersionError,
    fts_query,
)

__all__ = [
    "FILTER_FORMS",
    "SCHEMA_VERSION",
    "ChunkIn",
    "ChunkRow",
    "Condition",
    "DocumentIn",
    "DocumentRow",
    "Filter",
    "FilterError",
    "MetadataStore",
    "StoreCorruptError",
    "StoreError",
    "StoreVersionError",
    "fts_query",
    "parse_filter",
    "parse_filters",
    "split_filter_text",
]
