"""Cached vectors of chunks that left an index leave the embedding cache with them.

The policy, kept simple so it is always safe: when an indexing run replaces or deletes chunks,
the texts they embedded are noted before they go; at the end of the run, every noted text that
no chunk of the same index still embeds (same chunk text and title, read from its SQLite) has its
cache entry deleted. So an edited file does not leave its old chunks' vectors behind for ever,
while a text another document of the index repeats keeps its vector. Other indexes are not
consulted (their own vectors live in their own files; only a `repair` of one that shares the
text would embed it again), and query entries are only touched if a query was exactly a
removed chunk's text. The size-bounded eviction of `DiskCache` still covers everything else.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from engine.models import ModelError

if TYPE_CHECKING:
    from engine.embedding.service import EmbeddingService
    from engine.store import MetadataStore

log = logging.getLogger(__name__)


class ReplacedChunks:
    """What one indexing run took out of an index, to prune from the cache when it ends."""

    def __init__(self, store: MetadataStore, service: EmbeddingService, model: str) -> None:
        self.store = store
        self.service = service
        self.model = model
        # Embedded text (what the cache keys) -> the chunk's own text (what SQLite can find).
        self._texts: dict[str, str] = {}

    def note_documents(self, keys: Iterable[str]) -> None:
        """Before these documents' chunks are replaced or deleted (on the writer's thread)."""
        ids = [i for key in keys for i in self.store.chunks_of_document(key)]
        if not ids:
            return
        rows = self.store.chunks_by_ids(ids)
        embedded = self.store.chunk_texts([r.id for r in rows])
        self._texts.update(zip(embedded, (r.text for r in rows), strict=True))

    async def prune(self) -> int:
        """Delete the cache entries of noted texts the index no longer embeds; how many. A
        failure costs only disk space, so it is logged and the run it ends stands."""
        if not self._texts:
            return 0
        texts, self._texts = self._texts, {}
        try:
            kept = await asyncio.to_thread(self.store.embedded_in_use, texts.values())
            return await self.service.forget([t for t in texts if t not in kept], self.model)
        except (ModelError, OSError, sqlite3.Error) as exc:
            log.warning("cached vectors of %d replaced chunks were kept: %s", len(texts), exc)
            return 0
