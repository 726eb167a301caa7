"""Index storage: the SQLite metadata store (source of truth), user metadata filters, and the
vector-store contract with its factory.

The backends (``engine.store.faiss_store``, ``engine.store.milvus_store``) are deliberately not
imported here: ``create_store`` / ``open_store`` load the one asked for, so importing this
package never loads faiss or pymilvus.
"""

from engine.store.factory import BACKENDS, create_store, open_store, recorded_settings
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
from engine.store.vector_base import (
    ChunkFields,
    MissingIdsError,
    VectorStore,
    VectorStoreCorruptError,
    VectorStoreError,
    VectorStoreMissingError,
    VectorStoreUnavailableError,
    VectorStoreVersionError,
    Where,
)

__all__ = [
    "BACKENDS",
    "FILTER_FORMS",
    "SCHEMA_VERSION",
    "ChunkFields",
    "ChunkIn",
    "ChunkRow",
    "Condition",
    "DocumentIn",
    "DocumentRow",
    "Filter",
    "FilterError",
    "MetadataStore",
    "MissingIdsError",
    "StoreCorruptError",
    "StoreError",
    "StoreVersionError",
    "VectorStore",
    "VectorStoreCorruptError",
    "VectorStoreError",
    "VectorStoreMissingError",
    "VectorStoreUnavailableError",
    "VectorStoreVersionError",
    "Where",
    "create_store",
    "fts_query",
    "open_store",
    "parse_filter",
    "parse_filters",
    "recorded_settings",
    "split_filter_text",
]
