"""Document pipeline: find files, load them into documents, split documents into chunks."""

from engine.documents.chunking import Chunk, Chunker, page_for_offset
from engine.documents.discovery import discover
from engine.documents.loaders import (
    LOADER_VERSION,
    SUPPORTED_SUFFIXES,
    TYPE_BY_SUFFIX,
    DocumentError,
    LoadedDocument,
    MetadataLimits,
    file_fingerprint,
    load_file,
)

__all__ = [
    "LOADER_VERSION",
    "SUPPORTED_SUFFIXES",
    "TYPE_BY_SUFFIX",
    "Chunk",
    "Chunker",
    "DocumentError",
    "LoadedDocument",
    "MetadataLimits",
    "discover",
    "file_fingerprint",
    "load_file",
    "page_for_offset",
]
