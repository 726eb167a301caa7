"""Documents given by key (a server's PUT), rather than found in a folder.

The same chunking, embedding and commit order as folder indexing (`CorpusIndex._index`): SQLite
commits each batch in one transaction before FAISS is touched, so once `put_documents` returns,
the documents survive a crash (an open reconciles the vectors from SQLite). A document whose
title, text and metadata are unchanged costs no model call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.documents import LoadedDocument
from engine.embed_text import embedded_text
from engine.errors import LimitError
from engine.index.corpus import KEYED_DOC_TYPE, CorpusIndex, write_manifest

DOC_TYPE = KEYED_DOC_TYPE


@dataclass(frozen=True)
class DocumentInput:
    key: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def content_hash(doc: DocumentInput) -> str:
    payload = {"title": doc.title, "text": doc.text, "metadata": dict(doc.metadata)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_metadata(doc: DocumentInput, max_depth: int, max_kb: float) -> None:
    """The same bounds a file's front matter gets (documents.max_metadata_*)."""

    def depth(value: Any) -> int:
        if isinstance(value, Mapping):
            return 1 + max((depth(v) for v in value.values()), default=0)
        if isinstance(value, list | tuple):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    found = depth(dict(doc.metadata))
    if found > max_depth:
        raise LimitError(
            f"document '{doc.key}': metadata is nested {found} levels deep, over the limit of "
            f"{max_depth}; flatten it, or raise documents.max_metadata_depth in the config file"
        )
    size = len(json.dumps(dict(doc.metadata), ensure_ascii=False).encode())
    if size > max_kb * 1024:
        raise LimitError(
            f"document '{doc.key}': metadata is {size / 1024:.1f} KB, over the limit of "
            f"{max_kb:g} KB; store less, or raise documents.max_metadata_kb in the config file"
        )


def _loaded(doc: DocumentInput, digest: str) -> LoadedDocument:
    meta = {**doc.metadata, "path": doc.key, "type": DOC_TYPE, "size": len(doc.text.encode())}
    return LoadedDocument(
        key=doc.key,
        path=doc.key,
        title=doc.title or doc.key,
        doc_type=DOC_TYPE,
        text=doc.text,
        metadata=meta,
        size=len(doc.text.encode()),
        mtime=time.time(),
        content_hash=digest,
        indexed_title=doc.title,
    )


async def put_documents(index: CorpusIndex, docs: Sequence[DocumentInput]) -> IngestReport:
    """Insert or replace documents by key as the index's one writer; returns once committed."""
    settings = index.config.documents
    for doc in docs:
        check_metadata(doc, settings["max_metadata_depth"], settings["max_metadata_kb"])
    report = IngestReport()
    async with index.writing():
        digests = {d.key: content_hash(d) for d in docs}
        existing = await asyncio.to_thread(
            lambda: {k: index.store.get_document(k) for k in digests}
        )
        changed = []
        for doc in {d.key: d for d in docs}.values():
            row = existing[doc.key]
            if row is not None and row.content_hash == digests[doc.key]:
                report.unchanged += 1
                continue
            if row is None:
                report.added += 1
            else:
                report.updated += 1
            changed.append(_loaded(doc, digests[doc.key]))
        if not changed:
            return report
        items = await asyncio.to_thread(index._pending, changed)
        texts = [embedded_text(c.title, c.text) for item in items for c in item.chunks]
        vecs = await index.service.encode(texts, index.model_name) if texts else None
        await asyncio.to_thread(index._commit, items, vecs)
        report.chunks_embedded = len(texts)
        await asyncio.to_thread(_save, index)
    return report


async def delete_document(index: CorpusIndex, key: str) -> bool:
    """Remove one document by key; False when the index has none by that key."""
    async with index.writing():
        if await asyncio.to_thread(index.store.get_document, key) is None:
            return False
        await index._delete([key])
        await asyncio.to_thread(_save, index)
    return True


def _save(index: CorpusIndex) -> None:
    """Vectors, then the counts `info` and the index list read from the manifest."""
    index._save()
    stats = index.store.stats()
    index.manifest.update(
        documents=stats["documents"], chunks=stats["chunks"], last_indexed=time.time()
    )
    index.store.set_manifest(index.manifest)
    write_manifest(index.folder, index.manifest)
