"""A named, persistent corpus index: SQLite is the source of truth, a vector store (FAISS or
Milvus, built by `engine.store.factory` from the backend the manifest records) holds the vectors.

Crash safety comes from ordering: a document and its chunks commit to SQLite in one
transaction that also bumps the index's commit generation, vectors follow, then the store
records that generation. On open, equal generations mean the two agree; otherwise they are
reconciled (ids only in the store are removed, ids only in SQLite are re-embedded from the
cache). A local store's ids are in memory, so it is always compared; a remote store is listed
only when the generations differ. A SIGKILL at any moment therefore leaves an index that opens,
agrees with itself, and completes on the next run.

Processes share an index as readers and one writer. A reader never writes: its SQLite connection
is read-only and it reconciles in memory only, so it cannot save an older vector file over the
writer's. A writer (`writing()`) holds the index's `WriterLock`, first catches up with whatever
another writer saved since it opened, and alone saves.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.cancel import CancelToken
from engine.config import Config
from engine.embed_text import embedded_text
from engine.embedding import EmbeddingService
from engine.embedding.pruning import ReplacedChunks
from engine.errors import DocumentNotFoundError
from engine.fsutil import atomic_write_bytes, temp_files
from engine.index.documents_mode import rank_documents, top_documents, with_matches
from engine.index.errors import (
    CorpusIndexError,
    IndexCorruptError,
    IndexIncompleteError,
    IndexModelMismatchError,
    IndexNotFoundError,
    IndexSourceError,
    IndexVersionError,
)
from engine.index.lock import WriterLock
from engine.index.progress import FileFailure, IndexProgress, IndexReport
from engine.index.search import (
    SearchHit,
    SearchResults,
    check_mode,
    check_per,
    reciprocal_rank_fusion,
)
from engine.limits import RequestLimits
from engine.models import EmbeddingModel, ModelError
from engine.store import (
    ChunkIn,
    ChunkRow,
    DocumentIn,
    DocumentRow,
    MetadataStore,
    StoreCorruptError,
    StoreVersionError,
    parse_filters,
    split_filter_text,
)
from engine.store.factory import (
    DEFAULT_BACKEND,
    check_backend,
    create_store,
    discard_store,
    index_type_for,
    is_shared,
    open_store,
    recorded_settings,
    saved_elsewhere,
)
from engine.store.filters import Filter
from engine.store.snippets import snippet as snippet_of
from engine.store.vector_base import (
    ChunkFields,
    MissingIdsError,
    VectorStore,
    VectorStoreCorruptError,
    VectorStoreError,
    VectorStoreMissingError,
    VectorStoreVersionError,
    Where,
)

# The document pipeline (loaders, chunker, tokenizers, YAML) is imported by the methods that
# index: a cold search never needs it.
if TYPE_CHECKING:
    from engine.documents import Chunker, DocumentError, LoadedDocument

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "meta.sqlite"
VECTORS = "vectors.esvs"
# SQLite meta key of the commit generation (see the module docstring).
GENERATION = "generation"
# Chunks embedded per group: big enough for full model batches, small enough that progress and
# cancellation stay responsive and a crash loses little work.
GROUP_CHUNKS = 256
# The type of documents given by key rather than found in a folder (engine/index/ingest.py).
KEYED_DOC_TYPE = "api"
SAVE_EVERY_S = 5.0
# Over-fetch factor for hybrid search: each ranking contributes this many times k candidates.
HYBRID_DEPTH = 4

ProgressFn = Callable[[IndexProgress], None]


@dataclass(frozen=True)
class IndexStats:
    name: str
    model: str
    dimension: int
    index_type: str
    documents: int
    chunks: int
    bytes_on_disk: int
    last_indexed: float | None
    path: Path
    source: str | None = None
    backend: str = DEFAULT_BACKEND

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*") if f.is_file())


def read_manifest(folder: Path, name: str) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexNotFoundError(
            f"no index named '{name}' (looked for {path}); create it with "
            f"`embedscope index PATH --name {name}`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("format_version"), int):
            raise ValueError("not an embedscope manifest")
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(
            f"index '{name}': manifest {path} is damaged ({exc}); run `embedscope repair {name}`"
        ) from exc
    if data["format_version"] > FORMAT_VERSION:
        raise IndexVersionError(
            f"index '{name}' has format version {data['format_version']}, but this embedscope "
            f"reads up to {FORMAT_VERSION}; upgrade embedscope, or `embedscope rm-index {name}` "
            "and re-index"
        )
    return data


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=2).encode())


def backend_of(manifest: dict[str, Any]) -> str:
    """The backend an index was built on (indexes older than the choice are FAISS)."""
    return str(manifest.get("backend") or DEFAULT_BACKEND)


def store_settings(config: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    """The config's settings for the index's backend under what its manifest recorded: the
    recorded ones (server, graph parameters) win; credentials come from the config."""
    backend = backend_of(manifest)
    settings = {**config.store_settings(backend), **(manifest.get("store") or {})}
    settings["type"] = manifest["index_type"]
    return settings


def relative_key_path(file: Path, source: Path) -> str:
    """The `path` a loader gives a file: relative to the indexed folder (or the file's name).

    A file that resolves outside the folder (a symlink retargeted since discovery) keeps the
    path it was found at, so the loader can report it instead of the run stopping here.
    """
    if source.is_file():
        return file.name
    resolved, root = file.resolve(), source.resolve()
    if resolved.is_relative_to(root):
        return resolved.relative_to(root).as_posix()
    return file.absolute().relative_to(source.absolute()).as_posix()


# Manifest entries a new index takes from its model and the config; a run that fails before its
# first commit must not pin them (see IndexManager.open_or_create).
PINNED_SETTINGS = ("model", "dimension", "backend", "index_type", "chunk_tokens", "chunk_overlap")


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    digest = [m.get("fingerprint", {}).get("digest") for m in (a, b)]
    return digest[0] == digest[1] and all(a.get(k) == b.get(k) for k in PINNED_SETTINGS)


@dataclass(frozen=True)
class NewIndex:
    """A new index checked and built in memory (`CorpusIndex.plan`), not yet written."""

    model: EmbeddingModel
    manifest: dict[str, Any]
    chunker: Chunker | None


@dataclass
class _Pending:
    doc: LoadedDocument
    chunks: list[ChunkIn]
    file_hash: str


@dataclass
class _Prepared:
    """One file after loading: what to embed, what is unchanged, what to delete."""

    rel: str
    to_embed: list[_Pending]
    unchanged: list[str]
    stale: list[str]
    file_hash: str
    failure: FileFailure | None = None
    # Rows of a multi-row file that were left out (blank), each with its line.
    skipped: list[FileFailure] = field(default_factory=list)
    # True when the file's bytes are unchanged: its documents need no write at all.
    same_file: bool = False


class CorpusIndex:
    def __init__(
        self,
        name: str,
        folder: Path,
        config: Config,
        service: EmbeddingService,
        model: EmbeddingModel,
        manifest: dict[str, Any],
        store: MetadataStore,
        vectors: VectorStore,
    ) -> None:
        self.name = name
        self.folder = folder
        self.config = config
        self.service = service
        self.model = model
        self.manifest = manifest
        self.store = store
        self.vectors = vectors
        self._chunker: Chunker | None = None
        self._write_lock = asyncio.Lock()
        # Held only inside `writing()`; without it nothing is saved.
        self._writer: WriterLock | None = None
        # The vectors differ from the vector file (a reader's in-memory reconcile).
        self._dirty = False
        self._db_id = _file_id(folder / DATABASE)
        # Read-only stores replaced when this reader became a writer; searches that started
        # on them may still be running, so they close with the index.
        self._retired: list[MetadataStore] = []

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"])

    @property
    def index_type(self) -> str:
        return str(self.manifest["index_type"])

    @property
    def backend(self) -> str:
        return backend_of(self.manifest)

    # -- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    async def plan(
        name: str,
        config: Config,
        service: EmbeddingService,
        model_name: str | None = None,
        index_type: str | None = None,
        backend: str | None = None,
    ) -> NewIndex:
        """Everything a new index pins (model, backend, vector layout, chunking), checked before
        anything is written, so a bad setting fails here and leaves nothing behind. The store
        itself is made by `create`, under the writer lock (a Milvus collection is a write)."""
        model = await service.model(model_name)
        try:
            backend = check_backend(backend or config.index_backend)
            settings = config.store_settings(backend)
            index_type = index_type_for(backend, index_type, settings)
            recorded = recorded_settings(backend, {**settings, "type": index_type})
        except ValueError as exc:
            raise IndexSourceError(f"{exc} (nothing was written)") from exc
        chunker = None
        if model.folder is not None:
            chunker = await asyncio.to_thread(
                _new_chunker,
                model.name,
                model.folder,
                config.index["chunk_tokens"],
                config.index["chunk_overlap"],
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "model": model.name,
            "fingerprint": model.fingerprint.to_dict(),
            "dimension": model.dimension,
            "backend": backend,
            "store": recorded,
            "index_type": index_type,
            "chunk_tokens": config.index["chunk_tokens"],
            "chunk_overlap": config.index["chunk_overlap"],
            "source": None,
            "documents": 0,
            "chunks": 0,
            "created": time.time(),
            "last_indexed": None,
        }
        return NewIndex(model, manifest, chunker)

    @classmethod
    async def create(
        cls,
        name: str,
        folder: Path,
        config: Config,
        service: EmbeddingService,
        plan: NewIndex,
    ) -> CorpusIndex:
        """Write a planned index into `folder`; the caller holds the folder's writer lock."""
        folder.mkdir(parents=True, exist_ok=True)
        manifest = dict(plan.manifest)
        vectors = await asyncio.to_thread(_new_vectors, name, config, manifest)
        try:
            store = await asyncio.to_thread(MetadataStore, folder / DATABASE, name=name)
            store.set_manifest(manifest)
            store.set_meta(GENERATION, 0)
            await asyncio.to_thread(vectors.save, folder / VECTORS)
        except BaseException:
            vectors.close()
            raise
        write_manifest(folder, manifest)
        index = cls(name, folder, config, service, plan.model, manifest, store, vectors)
        index._chunker = plan.chunker
        return index

    @classmethod
    async def open(
        cls,
        name: str,
        folder: Path,
        config: Config,
        service: EmbeddingService,
        model_name: str | None = None,
    ) -> CorpusIndex:
        manifest = read_manifest(folder, name)
        built_with = manifest["model"]
        if model_name and model_name != built_with:
            raise IndexModelMismatchError(
                f"index '{name}' was built with model '{built_with}', not '{model_name}'; "
                f"search it with --model {built_with} (or no --model), or rebuild it: "
                f"`embedscope rm-index {name}` then `embedscope index PATH --name {name} "
                f"--model {model_name}`"
            )
        model = await service.model(built_with)
        if model.fingerprint.digest != manifest["fingerprint"].get("digest"):
            raise IndexModelMismatchError(
                f"index '{name}' was built with different weights or settings of model "
                f"'{built_with}' than those installed now; re-embed it with "
                f"`embedscope repair {name}`"
            )
        store = await asyncio.to_thread(_open_store, folder, name)
        try:
            vectors = await asyncio.to_thread(_open_vectors, folder, name, config, manifest)
        except BaseException:
            store.close()
            raise
        index = cls(name, folder, config, service, model, manifest, store, vectors)
        await index.reconcile()
        return index

    def close(self) -> None:
        for store in (*self._retired, self.store):
            store.close()
        self._retired.clear()
        self.vectors.close()

    def replaced(self) -> bool:
        """True when another process removed or rebuilt this index since it was opened here."""
        if _file_id(self.folder / DATABASE) != self._db_id:
            return True
        try:
            manifest = read_manifest(self.folder, self.name)
        except CorpusIndexError:
            return True
        # A migration switches the backend in place: the old store is then dropped.
        return any(manifest.get(k) != self.manifest.get(k) for k in ("created", "backend", "store"))

    @asynccontextmanager
    async def writing(
        self, wait: bool = False, lock: WriterLock | None = None
    ) -> AsyncIterator[None]:
        """Be the index's one writer for the block: take its writer lock (fail at once naming
        the holder, or `wait` for it), then catch up with what other writers saved.

        `lock`: a lock on this folder the caller already holds (repair, restore)."""
        async with self._write_lock:
            held = lock or WriterLock(self.folder, self.name)
            if lock is None:
                await held.acquire(wait)
            self._writer = held
            try:
                await self._catch_up()
                yield
            finally:
                self._writer = None
                if lock is None:
                    # Truncating the lock file can wait on the disk: never on the event loop.
                    await asyncio.shield(asyncio.to_thread(held.release))

    async def _catch_up(self) -> None:
        """Before a write: reload what other writers saved since this object read it, switch
        to a writable connection, and save what an in-memory reconcile changed."""
        manifest = await asyncio.to_thread(self._reread_folder)
        if any(manifest.get(k) != self.manifest.get(k) for k in ("chunk_tokens", "chunk_overlap")):
            self._chunker = None
        self.manifest = manifest
        if self.store.readonly:
            self._retired.append(self.store)
            # The same file this reader checked on open (`replaced()` said so): no second check.
            self.store = await asyncio.to_thread(
                MetadataStore, self.folder / DATABASE, name=self.name, verify=False
            )
        # A local store's file may have been saved by another writer; a remote one is shared.
        if saved_elsewhere(self.vectors, self.folder / VECTORS):
            old = self.vectors
            self.vectors = await asyncio.to_thread(
                _open_vectors, self.folder, self.name, self.config, manifest
            )
            old.close()
            self._dirty = False
        await self.reconcile()
        if self._dirty:
            await asyncio.to_thread(self._save)

    def _reread_folder(self) -> dict[str, Any]:
        """The manifest as saved now, once stale temp files are gone (file I/O: in a thread)."""
        if self.replaced():
            raise CorpusIndexError(
                f"index '{self.name}' was removed or rebuilt by another process since it was "
                "opened here; open it again"
            )
        manifest = read_manifest(self.folder, self.name)
        for stale in temp_files(self.folder):
            stale.unlink(missing_ok=True)
        return manifest

    async def reconcile(self) -> tuple[int, int]:
        """Make the store hold exactly SQLite's chunk ids: (vectors added, vectors removed).

        Only a writer saves the result; a reader keeps it in memory, so it never replaces the
        vector file that a writer in another process is producing. A shared (remote) store is
        repaired by the writer alone: a reader leaves it as it is, and is not listed at all
        while its generation matches SQLite's."""
        generation = await asyncio.to_thread(self.store.get_meta, GENERATION)
        shared = is_shared(self.backend)
        if shared and (self._writer is None or generation == self.vectors.generation):
            return 0, 0
        sql_ids = await asyncio.to_thread(self.store.chunk_ids)
        vec_ids = await asyncio.to_thread(self.vectors.ids)
        # Both listings hold each id once; assume_unique also keeps np.unique, which imports
        # numpy.ma (~30 ms), off a cold search.
        extra = np.setdiff1d(vec_ids, sql_ids, assume_unique=True)
        missing = np.setdiff1d(sql_ids, vec_ids, assume_unique=True)
        if extra.size:
            await asyncio.to_thread(self.vectors.remove, extra)
        fields = _FieldCache(self.store) if self.vectors.pushes_filters else None
        for start in range(0, missing.size, 1024):
            batch = missing[start : start + 1024]
            texts = await asyncio.to_thread(self.store.chunk_texts, batch)
            vecs = await self.service.encode(texts, self.model_name)
            rows = await asyncio.to_thread(fields.of, batch) if fields else None
            await asyncio.to_thread(self.vectors.add, batch, vecs, rows)
        if self._writer is not None and generation != self.vectors.generation:
            if generation is None:  # an index from before generations: start counting
                await asyncio.to_thread(self.store.set_meta, GENERATION, self.vectors.generation)
            else:
                await asyncio.to_thread(self.vectors.set_generation, int(generation))
                self._dirty = True
        if extra.size or missing.size or self._dirty:
            if self._writer is not None:
                await asyncio.to_thread(self._save)
            else:
                self._dirty = True
        return int(missing.size), int(extra.size)

    def _chunker_for(self) -> Chunker:
        if self._chunker is None:
            from engine.documents import Chunker

            if self.model.folder is None:
                raise IndexSourceError(f"model '{self.model_name}' has no local tokenizer")
            self._chunker = Chunker.from_model_dir(
                self.model.folder,
                max_tokens=self.manifest.get("chunk_tokens"),
                overlap_tokens=self.manifest.get("chunk_overlap", 32),
            )
        return self._chunker

    # -- indexing ----------------------------------------------------------------------------

    async def index_path(
        self,
        paths: Sequence[Path],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        wait: bool = False,
    ) -> IndexReport:
        """Bring the index in line with one folder or file: unchanged files cost no model call,
        changed ones replace their chunks, removed ones leave the index; bad files are reported
        and skipped. The run is the index's one writer: another writer makes it fail at once
        with that writer's pid, or with `wait` it waits for it."""
        if len(paths) != 1:
            raise IndexSourceError("index one folder or file at a time")
        source = Path(paths[0]).expanduser().resolve()
        if not source.exists():
            raise IndexSourceError(f"{source} does not exist")
        async with self.writing(wait):
            return await self._index(source, include, exclude, progress, cancel or CancelToken())

    async def _index(
        self,
        source: Path,
        include: Sequence[str],
        exclude: Sequence[str],
        progress: ProgressFn | None,
        cancel: CancelToken,
    ) -> IndexReport:
        """The run itself; the caller is inside `writing()`."""
        known = self.manifest.get("source")
        if known and Path(known) != source and self.store.stats()["documents"]:
            raise IndexSourceError(
                f"index '{self.name}' covers {known}, not {source}; use another name "
                f"(`--name NEW`) for a second corpus"
            )
        started = time.perf_counter()
        report = IndexReport()
        docs_cfg = self.config.documents
        include = list(include) or docs_cfg["include"]
        exclude = list(exclude) or docs_cfg["exclude"]
        from engine.documents import LOADER_VERSION, discover

        left_out: list[DocumentError] = []
        files = await asyncio.to_thread(discover, [source], include, exclude, skipped=left_out)
        report.failed.extend(FileFailure(e.path, e.reason) for e in left_out)
        by_path: dict[str, dict[str, DocumentRow]] = {}
        for row in await asyncio.to_thread(lambda: list(self.store.iter_documents())):
            by_path.setdefault(row.path, {})[row.key] = row
        batches_before = self._model_batches()
        # Files whose bytes match are skipped unparsed, unless the loaders changed since.
        trust_hashes = self.manifest.get("loader_version") == LOADER_VERSION
        state = {"files": 0, "chunks": 0, "tokens": 0}
        replaced = ReplacedChunks(self.store, self.service, self.model_name)

        def emit(phase: str, current: str = "") -> None:
            if progress is None:
                return
            elapsed = max(time.perf_counter() - started, 1e-6)
            done = state["files"]
            eta = (len(files) - done) * elapsed / done if done else None
            progress(
                IndexProgress(
                    phase=phase,
                    files_total=len(files),
                    files_done=done,
                    chunks_done=state["chunks"],
                    tokens=state["tokens"],
                    chunks_per_s=state["chunks"] / elapsed,
                    eta_s=eta,
                    current=current,
                )
            )

        emit("scanning")
        group: list[_Pending] = []
        group_chunks = 0
        in_flight: asyncio.Task[None] | None = None
        last_save = time.monotonic()
        # Like files that fail to load, entries left out keep what the index has of them.
        seen = {e.path for e in left_out}
        failed = True

        async def flush(items: list[_Pending]) -> None:
            nonlocal last_save
            if cancel.cancelled:
                # Not committed, so the next run indexes these documents; nothing is half-done.
                report.cancelled = True
                return
            texts = [embedded_text(c.title, c.text) for item in items for c in item.chunks]
            vecs = await self.service.encode(texts, self.model_name) if texts else None
            await asyncio.to_thread(replaced.note_documents, [i.doc.key for i in items])
            await asyncio.to_thread(self._commit, items, vecs)
            state["chunks"] += len(texts)
            state["tokens"] += sum(c.n_tokens for item in items for c in item.chunks)
            report.chunks_embedded += len(texts)
            if time.monotonic() - last_save > SAVE_EVERY_S:
                await asyncio.to_thread(self._save)
                last_save = time.monotonic()
            emit("indexing", items[-1].doc.path if items else "")

        # Resolving every path is a syscall each: thousands of them would stall the loop.
        rels = await asyncio.to_thread(lambda: [relative_key_path(f, source) for f in files])
        try:
            for file, rel in zip(files, rels, strict=True):
                if cancel.cancelled:
                    report.cancelled = True
                    break
                seen.add(rel)
                prepared = await asyncio.to_thread(
                    self._prepare, file, source, rel, by_path.get(rel, {}), trust_hashes
                )
                state["files"] += 1
                report.failed.extend(prepared.skipped)
                if prepared.failure is not None:
                    report.failed.append(prepared.failure)
                    emit("indexing", rel)
                    continue
                report.unchanged += len(prepared.unchanged)
                if prepared.unchanged and not prepared.same_file:
                    await asyncio.to_thread(
                        self.store.set_file_hash, prepared.unchanged, prepared.file_hash
                    )
                if prepared.stale:
                    await asyncio.to_thread(replaced.note_documents, prepared.stale)
                    await self._delete(prepared.stale)
                    report.removed += len(prepared.stale)
                for pending in prepared.to_embed:
                    if pending.doc.key in by_path.get(rel, {}):
                        report.updated += 1
                    else:
                        report.added += 1
                for pending in prepared.to_embed:
                    group.append(pending)
                    group_chunks += len(pending.chunks)
                    if group_chunks >= GROUP_CHUNKS:
                        if in_flight is not None:
                            await in_flight
                        in_flight = asyncio.create_task(flush(group))
                        group, group_chunks = [], 0
                emit("indexing", rel)
            if in_flight is not None:
                await in_flight
                in_flight = None
            if group and not cancel.cancelled:
                await flush(group)
            report.cancelled = report.cancelled or cancel.cancelled
            if not report.cancelled:
                # A folder left out (unlistable, say) keeps what the index has of it.
                kept = tuple(p for p in seen if p.endswith("/"))
                # Documents a client gave by key (the server's PUT) belong to no folder.
                gone = [
                    key
                    for path, rows in by_path.items()
                    if path not in seen and not path.startswith(kept)
                    for key, row in rows.items()
                    if row.doc_type != KEYED_DOC_TYPE
                ]
                if gone:
                    emit("removing")
                    await asyncio.to_thread(replaced.note_documents, gone)
                    await self._delete(gone)
                    report.removed += len(gone)
            failed = False
        finally:
            if in_flight is not None:
                in_flight.cancel()
            emit("saving")
            await asyncio.to_thread(self._save, source, report.cancelled or failed)
            await replaced.prune()
        report.model_calls = self._model_batches() - batches_before
        report.seconds = time.perf_counter() - started
        emit("done")
        return report

    def _model_batches(self) -> int:
        return int(self.service.metrics.snapshot().get(self.model_name, {}).get("batches", 0))

    def _prepare(
        self,
        file: Path,
        source: Path,
        rel: str,
        existing: dict[str, DocumentRow],
        trust_hashes: bool,
    ) -> _Prepared:
        """Runs in a thread: hash, and only if the file changed, load and chunk it."""
        from engine.documents import DocumentError, MetadataLimits, file_fingerprint, load_file

        try:
            fingerprint = file_fingerprint(file)
        except DocumentError as exc:
            return _Prepared(rel, [], [], [], "", FileFailure(rel, exc.reason))
        if (
            trust_hashes
            and existing
            and all(row.file_hash == fingerprint for row in existing.values())
        ):
            return _Prepared(rel, [], list(existing), [], fingerprint, same_file=True)
        docs_cfg = self.config.documents
        skipped: list[DocumentError] = []
        try:
            docs = load_file(
                file,
                source,
                max_bytes=int(docs_cfg["max_file_mb"] * 1024 * 1024),
                csv_text_column=docs_cfg["csv_text_column"],
                csv_id_column=docs_cfg["csv_id_column"],
                csv_title_column=docs_cfg["csv_title_column"],
                limits=MetadataLimits.from_settings(docs_cfg),
                skipped=skipped,
            )
        except DocumentError as exc:
            return _Prepared(rel, [], [], [], fingerprint, FileFailure(rel, exc.reason))
        except Exception as exc:  # a loader bug must cost one file, not the run
            reason = f"could not be loaded ({type(exc).__name__}: {exc})"
            return _Prepared(rel, [], [], [], fingerprint, FileFailure(rel, reason))
        changed = [
            d
            for d in docs
            if d.key not in existing or existing[d.key].content_hash != d.content_hash
        ]
        to_embed = self._pending(changed, fingerprint)
        loaded = {d.key for d in docs}
        changed_keys = {d.key for d in changed}
        unchanged = [d.key for d in docs if d.key not in changed_keys]
        stale = [key for key in existing if key not in loaded]
        rows_left_out = [FileFailure(rel, e.reason) for e in skipped]
        return _Prepared(rel, to_embed, unchanged, stale, fingerprint, skipped=rows_left_out)

    def _pending(self, docs: list[LoadedDocument], file_hash: str | None = None) -> list[_Pending]:
        """Each document's chunks, as they will be embedded: behind the document's title, whose
        tokens are held back from every chunk (one longer than half a chunk is cut there).
        ``file_hash`` None: each document's own content hash (documents given by key)."""
        from engine.documents import page_for_offset

        chunker = self._chunker_for()
        titles = [chunker.head(d.indexed_title, chunker.max_tokens // 2) for d in docs]
        chunked = chunker.chunk_many([d.text for d in docs], [n for _, n in titles])
        items = []
        for doc, chunks, (title, _) in zip(docs, chunked, titles, strict=True):
            rows = [
                ChunkIn(
                    ordinal=c.ordinal,
                    text=c.text,
                    start=c.start,
                    end=c.end,
                    n_tokens=c.n_tokens,
                    page=page_for_offset(doc.pages, c.start) if doc.pages else None,
                    title=title,
                )
                for c in chunks
                if c.text.strip()
            ]
            items.append(_Pending(doc, rows, doc.content_hash if file_hash is None else file_hash))
        return items

    def _commit(self, items: list[_Pending], vecs: np.ndarray | None) -> None:
        """SQLite first (one transaction with the next generation), then the vectors, then the
        store records that generation: a crash in between is reconciled."""
        new_ids: list[int] = []
        removed: list[int] = []
        fields: list[ChunkFields] = []
        with self.store.transaction():
            for item in items:
                doc_in = _document_in(item.doc, item.file_hash)
                _, ids, old = self.store.replace_document(doc_in, item.chunks)
                new_ids.extend(ids)
                removed.extend(old)
                fields.extend([ChunkFields.of(doc_in)] * len(ids))
            generation = self._next_generation()
        if removed:
            self.vectors.remove(np.asarray(removed, dtype=np.int64))
        if new_ids and vecs is not None:
            self.vectors.add(np.asarray(new_ids, dtype=np.int64), vecs, fields)
        self.vectors.set_generation(generation)

    def _delete_sync(self, keys: list[str]) -> None:
        with self.store.transaction():
            removed = self.store.delete_documents(keys)
            generation = self._next_generation()
        if removed:
            self.vectors.remove(np.asarray(removed, dtype=np.int64))
        self.vectors.set_generation(generation)

    async def _delete(self, keys: list[str]) -> None:
        await asyncio.to_thread(self._delete_sync, keys)

    def _next_generation(self) -> int:
        """Inside a SQLite transaction: bump and return the commit generation."""
        generation = int(self.store.get_meta(GENERATION) or 0) + 1
        self.store.set_meta(GENERATION, generation)
        return generation

    def _save(self, source: Path | None = None, cancelled: bool = False) -> None:
        """Vectors, and with `source` the manifest of a run (`cancelled`: it did not finish)."""
        if self._writer is None:
            raise RuntimeError(f"index '{self.name}': saving outside writing() (a bug)")
        self.vectors.save(self.folder / VECTORS)
        self._dirty = False
        if source is None:
            return
        self.vectors.optimize()
        stats = self.store.stats()
        self.manifest.update(
            source=str(source),
            documents=stats["documents"],
            chunks=stats["chunks"],
            last_indexed=time.time(),
            complete=not cancelled,
        )
        if not cancelled:
            from engine.documents import LOADER_VERSION

            self.manifest["loader_version"] = LOADER_VERSION
        self.store.set_manifest(self.manifest)
        write_manifest(self.folder, self.manifest)

    # -- reading -----------------------------------------------------------------------------

    def stats(self) -> IndexStats:
        db = self.store.stats()
        return IndexStats(
            name=self.name,
            model=self.model_name,
            dimension=int(self.manifest["dimension"]),
            index_type=self.index_type,
            documents=db["documents"],
            chunks=db["chunks"],
            bytes_on_disk=folder_bytes(self.folder),
            last_indexed=self.manifest.get("last_indexed"),
            path=self.folder,
            source=self.manifest.get("source"),
            backend=self.backend,
        )

    def document(self, key: str) -> DocumentRow | None:
        return self.store.get_document(key)

    def chunk_context(self, chunk_id: int) -> tuple[ChunkRow, list[ChunkRow]]:
        """A chunk and all chunks of its document in order, for the detail view."""
        rows = self.store.chunks_by_ids([chunk_id])
        if not rows:
            raise DocumentNotFoundError(f"no chunk {chunk_id} in index '{self.name}'")
        siblings = self.store.chunks_by_ids(self.store.chunks_of_document(rows[0].doc_key))
        return rows[0], siblings

    def _candidates(self, filters: Sequence[str] | str | None) -> np.ndarray | None:
        flt = self._filter(filters)
        return self.store.filter_chunk_ids(flt) if flt else None

    @staticmethod
    def _filter(filters: Sequence[str] | str | None) -> Filter:
        if not filters:
            return Filter()
        items = split_filter_text(filters) if isinstance(filters, str) else list(filters)
        return parse_filters(items) if items else Filter()

    async def search(
        self,
        query: str,
        k: int = 10,
        *,
        filters: Sequence[str] | str | None = None,
        mode: str = "hybrid",
        per: str = "document",
    ) -> SearchResults:
        """The k best documents (`per="document"`: each once, by its best chunk) or chunks."""
        mode = check_mode(mode)
        per = check_per(per)
        limits = RequestLimits.from_config(self.config)
        k = limits.check_k(k)
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty; type some words to search for")
        limits.check_query(query)
        limits.check_filters(filters)
        # No filter, no SQLite: skipping the thread hop saves a lone query ~0.5 ms under load.
        candidates = await asyncio.to_thread(self._candidates, filters) if filters else None
        if candidates is not None and candidates.size == 0:
            return SearchResults()
        flt = self._filter(filters)
        depth = k if mode != "hybrid" else k * HYBRID_DEPTH
        ranked: list[tuple[int, float]]
        vector_ranking: list[tuple[int, float]] = []
        keyword_ranking: list[tuple[int, float]] = []
        reason: str | None = None
        qvec: np.ndarray | None = None
        if mode in ("vector", "hybrid"):
            try:
                qvec = await self.service.encode([query], self.model_name)
            except ModelError as exc:
                # Another model's vectors are incomparable, so keyword results, said as such.
                reason = f"the query could not be embedded: {exc}"
                mode = "keyword"
        if per == "document":
            hits = await asyncio.to_thread(
                self._document_hits, mode, k, depth, query, qvec, candidates, flt
            )
            return SearchResults(hits, degraded="keyword" if reason else None, reason=reason)
        if qvec is not None:
            vector_ranking = await asyncio.to_thread(
                self._vector_search, qvec, depth, candidates, flt
            )
        if mode in ("keyword", "hybrid"):
            keyword_ranking = await asyncio.to_thread(
                self.store.keyword_search, query, depth, candidates
            )
        if mode == "vector":
            ranked = vector_ranking
        elif mode == "keyword":
            ranked = keyword_ranking
        else:
            ranked = reciprocal_rank_fusion(
                [[i for i, _ in vector_ranking], [i for i, _ in keyword_ranking]],
                k,
                self.config.index["rrf_k"],
            )
        hits = await asyncio.to_thread(self._hits, ranked[:k], query)
        return SearchResults(hits, degraded="keyword" if reason else None, reason=reason)

    def _vector_search(
        self,
        qvec: np.ndarray,
        k: int,
        candidates: np.ndarray | None,
        flt: Filter | None = None,
        exclude: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """``candidates``: SQLite's ids for the user filter ``flt`` less ``exclude`` (None: no
        filter). A local store searches among them; a pushdown store evaluates ``flt`` and
        ``exclude`` itself, so SQLite's ids are never shipped to a server."""
        # A k past the index size would only allocate padding: ask for what exists.
        k = min(k, self.vectors.count if candidates is None else int(candidates.size))
        if k < 1:
            return []
        if candidates is None or not flt:
            scores, ids = self.vectors.search(qvec, k, candidates)
        else:
            left_out = () if exclude is None else exclude
            where = Where(flt, resolve=lambda _: candidates, exclude=left_out)
            scores, ids = self.vectors.search(qvec, k, where=where)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    def _document_hits(
        self,
        mode: str,
        k: int,
        depth: int,
        query: str,
        qvec: np.ndarray | None,
        candidates: np.ndarray | None,
        flt: Filter,
    ) -> list[SearchHit]:
        vector, available = None, 0
        if qvec is not None:
            vector = partial(self._vector_search, qvec, candidates=candidates, flt=flt)
            # The store's own count (a shared one may lag SQLite until a writer reconciles).
            available = self.vectors.count if candidates is None else int(candidates.size)
        ranked = rank_documents(
            self.store,
            mode,
            k,
            depth,
            query=query,
            vector=vector,
            vectors_available=available,
            chunks_per_document=self._chunks_per_document(),
            candidates=candidates,
            rrf_k=self.config.index["rrf_k"],
        )
        return with_matches(self._hits([(d.chunk_id, d.score) for d in ranked], query), ranked)

    def _chunks_per_document(self) -> float:
        """From the manifest's counts (as of the last run): only sizes the first fetch."""
        documents = int(self.manifest.get("documents") or 0)
        return int(self.manifest.get("chunks") or 0) / max(documents, 1)

    def _hits(self, ranked: list[tuple[int, float]], query: str) -> list[SearchHit]:
        rows = {r.id: r for r in self.store.chunks_by_ids([i for i, _ in ranked])}
        hits = []
        for chunk_id, score in ranked:
            row = rows.get(chunk_id)
            if row is None:
                continue
            snippet, spans = snippet_of(row.text, query)
            hits.append(
                SearchHit(
                    rank=len(hits) + 1,
                    score=round(score, 6),
                    chunk_id=chunk_id,
                    doc_key=row.doc_key,
                    title=row.title,
                    path=row.path,
                    snippet=snippet,
                    highlights=spans,
                    text=row.text,
                    page=row.page,
                    metadata=row.metadata,
                )
            )
        return hits

    async def more_like_this(
        self,
        target: str | int,
        k: int = 10,
        *,
        filters: Sequence[str] | str | None = None,
        per: str = "document",
    ) -> list[SearchHit]:
        """Neighbours of a document (its mean chunk vector) or a chunk, from the stored vectors
        alone (no model call); the source document itself is left out. Per document, each
        neighbouring document comes once, by its nearest chunk."""
        per = check_per(per)
        limits = RequestLimits.from_config(self.config)
        k = limits.check_k(k)
        limits.check_filters(filters)
        if isinstance(target, str):
            limits.check_query(target, "the document key")
            own = await asyncio.to_thread(self.store.chunks_of_document, target)
            if not own:
                raise DocumentNotFoundError(f"no document '{target}' in index '{self.name}'")
        else:
            rows = []
            if 0 <= int(target) < 2**63:  # chunk ids are SQLite integers; no other id exists
                rows = await asyncio.to_thread(self.store.chunks_by_ids, [int(target)])
            if not rows:
                raise DocumentNotFoundError(f"no chunk {target} in index '{self.name}'")
            own = await asyncio.to_thread(self.store.chunks_of_document, rows[0].doc_key)
        source_ids = np.asarray(own if isinstance(target, str) else [int(target)], dtype=np.int64)
        try:
            found = await asyncio.to_thread(self.vectors.fetch, source_ids)
        except MissingIdsError as exc:  # a shared store behind SQLite, after a writer's crash
            raise IndexIncompleteError(
                f"index '{self.name}': the vectors of '{target}' are not in its vector store yet "
                f"({exc}); run `embedscope index` on its folder again to finish the last run"
            ) from exc
        vec = found.mean(axis=0, keepdims=True)
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
        candidates = await asyncio.to_thread(self._candidates, filters)
        flt = self._filter(filters)
        own_ids = np.asarray(own, dtype=np.int64)
        query = vec.astype(np.float32)
        skip = set(own)
        if candidates is not None:
            candidates = np.setdiff1d(candidates, own_ids)
            if candidates.size == 0:
                return []

        def neighbours(depth: int) -> list[tuple[int, float]]:
            if candidates is not None:
                return self._vector_search(query, depth, candidates, flt, own_ids)
            found = self._vector_search(query, depth + len(skip), None)
            return [(i, s) for i, s in found if i not in skip][:depth]

        if per == "chunk":
            ranked = await asyncio.to_thread(neighbours, k)
            return await asyncio.to_thread(self._hits, ranked, "")
        available = self.vectors.count - len(skip) if candidates is None else int(candidates.size)
        docs = await asyncio.to_thread(
            top_documents,
            neighbours,
            self.store.chunk_documents,
            k,
            available,
            self._chunks_per_document(),
        )
        hits = await asyncio.to_thread(self._hits, [(d.chunk_id, d.score) for d in docs], "")
        return with_matches(hits, docs)


def _document_in(doc: LoadedDocument, file_hash: str) -> DocumentIn:
    return DocumentIn(
        key=doc.key,
        path=doc.path,
        title=doc.title,
        doc_type=doc.doc_type,
        size=doc.size,
        mtime=doc.mtime,
        content_hash=doc.content_hash,
        file_hash=file_hash,
        metadata=doc.metadata,
    )


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _new_chunker(model: str, folder: Path, chunk_tokens: int | None, overlap: int) -> Chunker:
    from engine.documents import Chunker

    try:
        return Chunker.from_model_dir(folder, max_tokens=chunk_tokens, overlap_tokens=overlap)
    except ValueError as exc:
        raise IndexSourceError(
            f"cannot chunk for model '{model}': {exc}; change index.chunk_tokens or "
            "index.chunk_overlap in the config (nothing was written)"
        ) from exc


def _open_store(folder: Path, name: str) -> MetadataStore:
    path = folder / DATABASE
    if not path.is_file():
        raise IndexCorruptError(
            f"index '{name}': its database {path} is missing; run `embedscope repair {name}`"
        )
    try:
        return MetadataStore(path, name=name, readonly=True)
    except StoreCorruptError as exc:
        raise IndexCorruptError(str(exc)) from exc
    except StoreVersionError as exc:
        raise IndexVersionError(str(exc)) from exc


def discard_vectors(folder: Path, name: str, config: Config, manifest: dict[str, Any]) -> None:
    """What `repair` does first: drop the index's vectors wherever they live (they are rebuilt
    from SQLite and the embedding cache); the caller holds the writer lock."""
    backend = backend_of(manifest)
    try:
        discard_store(
            backend,
            store_settings(config, manifest),
            int(manifest["dimension"]),
            name=name,
            path=folder / VECTORS,
        )
    except VectorStoreError as exc:
        raise CorpusIndexError(str(exc)) from exc


def destroy_vectors(folder: Path, name: str, config: Config, manifest: dict[str, Any]) -> None:
    """What `rm-index` does before the folder goes: drop a shared store's data on its server
    (a local file goes with the folder). Raises CorpusIndexError naming the server when it
    cannot be reached, before anything is removed."""
    backend = backend_of(manifest)
    if not is_shared(backend):
        return
    try:
        store = open_store(
            backend,
            store_settings(config, manifest),
            int(manifest["dimension"]),
            name=name,
            path=folder / VECTORS,
        )
    except VectorStoreMissingError:
        return
    except VectorStoreError as exc:
        raise CorpusIndexError(f"{exc} (nothing was removed)") from exc
    try:
        store.destroy()
    except VectorStoreError as exc:
        raise CorpusIndexError(f"{exc} (nothing was removed)") from exc
    finally:
        store.close()


def _new_vectors(name: str, config: Config, manifest: dict[str, Any]) -> VectorStore:
    """A new, empty store for a new index (under its writer lock): a collection left on a
    server by an index of the same name that is gone is emptied, never adopted."""
    backend = backend_of(manifest)
    try:
        return create_store(
            backend,
            store_settings(config, manifest),
            int(manifest["dimension"]),
            name=name,
            index_type=manifest["index_type"],
            replace=True,
        )
    except ValueError as exc:
        raise IndexSourceError(f"index '{name}': {exc}") from exc
    except VectorStoreError as exc:
        raise CorpusIndexError(str(exc)) from exc


def _open_vectors(folder: Path, name: str, config: Config, manifest: dict[str, Any]) -> VectorStore:
    """The index's store on the backend it was built on. A missing local file opens as an empty
    store (reconcile re-adds SQLite's chunks from the cache); a missing remote collection is an
    error naming the server, since only `repair` may write there."""
    backend = backend_of(manifest)
    try:
        return open_store(
            backend,
            store_settings(config, manifest),
            int(manifest["dimension"]),
            name=name,
            path=folder / VECTORS,
            missing_ok=not is_shared(backend),
        )
    except VectorStoreCorruptError as exc:
        raise IndexCorruptError(str(exc)) from exc
    except VectorStoreVersionError as exc:
        raise IndexVersionError(str(exc)) from exc
    except VectorStoreMissingError as exc:
        raise IndexCorruptError(str(exc)) from exc
    except VectorStoreError as exc:
        raise CorpusIndexError(str(exc)) from exc
    except ValueError as exc:
        raise CorpusIndexError(f"index '{name}': {exc}") from exc


class _FieldCache:
    """The filterable document fields of chunks, read from SQLite once per document: what a
    pushdown store needs beside each re-added or copied vector."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._docs: dict[int, ChunkFields] | None = None

    def of(self, ids: np.ndarray) -> list[ChunkFields]:
        if self._docs is None:
            self._docs = {row.id: ChunkFields.of(row) for row in self._store.iter_documents()}
        owner = self._store.chunk_documents(ids.tolist())
        return [self._docs[owner[int(i)]] for i in ids]
