"""SQLite metadata store: the source of truth of a named index.

Documents, chunks, the FTS5 keyword index and small state (manifest, schema version) live in
one SQLite file; FAISS files only hold vectors keyed by the chunk ids assigned here. Chunk ids
come from AUTOINCREMENT and are never reused, so a FAISS file that still holds old ids (until
reconciled) can never point at a different chunk.

All methods are synchronous and thread-safe: the async engine calls them from worker threads
through one connection guarded by a re-entrant lock.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.disks import unwritable_reason
from engine.embed_text import embedded_text
from engine.store.filters import Filter, register_sql_functions
from engine.store.snippets import TOKEN_RE, snippet

__all__ = [
    "FTS_TOKENIZER",
    "SCHEMA_VERSION",
    "ChunkIn",
    "ChunkRow",
    "DocumentIn",
    "DocumentRow",
    "MetadataStore",
    "StoreCorruptError",
    "StoreError",
    "StoreVersionError",
    "fts_query",
]

# 2: chunks carry the title indexed with them, and the FTS index has a title column.
SCHEMA_VERSION = 2

# Porter stemming on top of unicode61: on Cranfield (1400 docs, 225 queries, OR-ed quoted
# terms, title + text) it lifts nDCG@10 from 0.342 to 0.361, MAP from 0.268 to 0.294 and
# R@100 from 0.699 to 0.728, because queries and documents use different inflections
# ("flows"/"flow", "heated"/"heating").
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"
# BM25 weights of the FTS columns (title, text). On SciFact (300 test queries, title + abstract)
# nDCG@10 is 0.681 with the text alone, 0.687 with the title weighted 1, 0.693 with 2 (3: 0.693).
FTS_WEIGHTS = (2.0, 1.0)

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_IOERR_SHORT_READ = 522
_PAGE = 500


_DOC_COLUMNS = (
    "d.id, d.key, d.path, d.title, d.doc_type, d.size, d.mtime, d.content_hash, d.file_hash, "
    "d.metadata, d.indexed_at, (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id)"
)
_CHUNK_COLUMNS = (
    'c.id, c.doc_id, d.key, c.ordinal, c.text, c.start, c."end", c.page, d.title, d.path, '
    "d.doc_type, d.metadata"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL CHECK (json_valid(value))
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    title TEXT NOT NULL,
    doc_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    content_hash TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_path ON documents(path);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    page INTEGER,
    title TEXT NOT NULL DEFAULT '',
    UNIQUE (doc_id, ordinal)
);
"""
# The keyword index: its own statements, so upgrading a schema-1 file can rebuild it in place.
# `chunks.title` is the document title embedded and indexed with the chunk ('' for none).
_FTS_SCHEMA = (
    f"""CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    title, text, content='chunks', content_rowid='id', tokenize='{FTS_TOKENIZER}'
)""",
    """CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END""",
    """CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text)
    VALUES ('delete', old.id, old.title, old.text);
END""",
    """CREATE TRIGGER IF NOT EXISTS chunks_au AFTER UPDATE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text)
    VALUES ('delete', old.id, old.title, old.text);
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END""",
)
_SCHEMA += "".join(f"{statement};\n" for statement in _FTS_SCHEMA)
_TABLES = frozenset({"meta", "documents", "chunks", "chunks_fts"})


class StoreError(Exception):
    """Base class of metadata store errors."""


class StoreCorruptError(StoreError):
    """The file is not an embedscope metadata store or is damaged."""

    def __init__(self, path: Path, reason: str, name: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"index database {path} is damaged or not an embedscope index ({reason}); "
            f"run `embedscope repair {name}` to rebuild it"
        )


class StoreVersionError(StoreError):
    """The file was written by a newer embedscope with a schema this version cannot read."""

    def __init__(self, path: Path, found: int, name: str) -> None:
        self.path = path
        self.found = found
        self.supported = SCHEMA_VERSION
        super().__init__(
            f"index database {path} has schema version {found}, but this embedscope supports "
            f"version {SCHEMA_VERSION}; upgrade embedscope, or run `embedscope rm-index {name}` "
            "and re-index"
        )


@dataclass(frozen=True, slots=True)
class DocumentIn:
    """A document to store; ``key`` is its stable id within the index."""

    key: str
    path: str
    title: str
    doc_type: str
    size: int
    mtime: float
    content_hash: str
    file_hash: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChunkIn:
    """A chunk of a document; ``start``/``end`` are character offsets into the document text."""

    ordinal: int
    text: str
    start: int
    end: int
    n_tokens: int
    page: int | None = None
    # The document title embedded and keyword-indexed with the chunk ("" for none).
    title: str = ""


@dataclass(frozen=True, slots=True)
class DocumentRow:
    """A stored document as the index layer and the TUI document view need it."""

    id: int
    key: str
    path: str
    title: str
    doc_type: str
    size: int
    mtime: float
    content_hash: str
    file_hash: str
    metadata: dict[str, Any]
    indexed_at: float
    n_chunks: int


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A chunk joined with its document: everything a result list shows, in one query."""

    id: int
    doc_id: int
    doc_key: str
    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    title: str
    path: str
    doc_type: str
    metadata: dict[str, Any]


def fts_query(text: str) -> str | None:
    """Free text as a safe FTS5 query: quoted terms OR-ed so partial matches still rank.

    Only runs of letters/digits survive, so quotes, operators and brackets in user text can
    never form FTS5 syntax. None when the text has no searchable term.
    """
    terms = dict.fromkeys(t.lower() for t in TOKEN_RE.findall(text))
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def _frozen(path: Path) -> bool:
    """No WAL side files, and none can be created beside the database (read-only or full
    disk): nobody can write it."""
    sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    return not any(p.exists() for p in sides) and unwritable_reason(path.parent) is not None


class MetadataStore:
    """One index's SQLite database (WAL mode, one locked connection shared by threads).

    ``name`` is the index name used in repair/rm-index hints of error messages. ``readonly``
    opens the file with SQLite's ``mode=ro``: readers of an index that another process is
    writing can then never write to it, and an index that does not exist is not created.
    ``verify=False`` skips the integrity check, for a file this process has just checked.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        readonly: bool = False,
        verify: bool = True,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.readonly = readonly
        self._verify = verify
        self._lock = threading.RLock()
        self._depth = 0
        self._schema_cookie: int | None = None
        self._has_titles = False
        self._closed = True
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = f"{self.path.resolve().as_uri()}?mode=ro" if readonly else str(self.path)
        if readonly and _frozen(self.path):
            # WAL needs a -shm file; where none exists and none can be made (read-only or full
            # disk) SQLite opens the file only as immutable, which is true there.
            target = f"{self.path.resolve().as_uri()}?immutable=1"
        try:
            conn = sqlite3.connect(
                target,
                timeout=10.0,
                isolation_level=None,
                check_same_thread=False,
                uri=readonly,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open index database {self.path}: {exc}") from exc
        self._conn = conn
        try:
            self._open()
        except sqlite3.Error as exc:
            conn.close()
            if _is_corruption(exc):
                raise StoreCorruptError(self.path, str(exc), self.name) from exc
            raise StoreError(f"cannot open index database {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._closed = False

    def _open(self) -> None:
        conn = self._conn
        problems = [r[0] for r in conn.execute("PRAGMA quick_check")] if self._verify else ["ok"]
        if problems != ["ok"]:
            raise StoreCorruptError(self.path, "; ".join(problems[:3]), self.name)
        if not self.readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        register_sql_functions(conn)
        if not self.readonly and not self._tables():
            # executescript commits first, so the transaction lives inside the script; the
            # IF NOT EXISTS / OR IGNORE make a concurrent creation by another process harmless.
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR IGNORE INTO meta(key, value) "
                    f"VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        missing = _TABLES - self._tables()
        if missing:
            raise StoreCorruptError(
                self.path, f"missing tables: {', '.join(sorted(missing))}", self.name
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = json.loads(row[0]) if row else None
        if not isinstance(version, int) or version < 1:
            raise StoreCorruptError(self.path, f"invalid schema_version {version!r}", self.name)
        if version > SCHEMA_VERSION:
            raise StoreVersionError(self.path, version, self.name)
        if version == 1 and not self.readonly:
            self._upgrade_from_1()

    def _upgrade_from_1(self) -> None:
        """Schema 1 -> 2 in place, in one transaction: chunks get a title column (empty until
        the next indexing run re-reads the files) and the keyword index is rebuilt with it. A
        reader keeps reading schema 1 (see `_titles`) until a writer opens the file."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if json.loads(row[0]) == 1:
                conn.execute("ALTER TABLE chunks ADD COLUMN title TEXT NOT NULL DEFAULT ''")
                for trigger in ("chunks_ai", "chunks_ad", "chunks_au"):
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                conn.execute("DROP TABLE chunks_fts")
                for statement in _FTS_SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _titles(self, conn: sqlite3.Connection) -> bool:
        """Whether chunks carry titles (schema 2). Followed through SQLite's schema cookie, as
        a writer may upgrade the file while a reader has it open."""
        cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
        if cookie != self._schema_cookie:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(chunks)")}
            self._has_titles = "title" in columns
            self._schema_cookie = cookie
        return self._has_titles

    def _tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows} - {"sqlite_sequence"}

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise StoreError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self.readonly:
                    self._conn.execute("PRAGMA optimize")
            finally:
                self._conn.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"index database {self.path} is closed")
            yield self._conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, ROLLBACK on any exception; nests via savepoints.

        The lock is held for the whole block so other threads cannot interleave statements.
        """
        with self._locked() as conn:
            depth = self._depth
            conn.execute(f"SAVEPOINT sp{depth}" if depth else "BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                if depth:
                    conn.execute(f"ROLLBACK TO sp{depth}")
                    conn.execute(f"RELEASE sp{depth}")
                else:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute(f"RELEASE sp{depth}" if depth else "COMMIT")
            finally:
                self._depth = depth

    # -- writes ----------------------------------------------------------------------------

    def replace_document(
        self, doc: DocumentIn, chunks: Sequence[ChunkIn]
    ) -> tuple[int, list[int], list[int]]:
        """Insert or replace a document (by key) and all its chunks atomically.

        The document keeps its id; its chunks always get fresh ids. Returns (doc_id, new chunk
        ids in the order given, removed old chunk ids).
        """
        values = _document_values(doc)
        rows = _chunk_rows(doc.key, chunks)
        with self.transaction(), self._locked() as conn:
            removed = [
                r[0]
                for r in conn.execute(
                    "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                    "WHERE d.key = ? ORDER BY c.id",
                    (doc.key,),
                )
            ]
            doc_id = conn.execute(
                "INSERT INTO documents(key, path, title, doc_type, size, mtime, content_hash, "
                "file_hash, metadata, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET path = excluded.path, title = excluded.title, "
                "doc_type = excluded.doc_type, size = excluded.size, mtime = excluded.mtime, "
                "content_hash = excluded.content_hash, file_hash = excluded.file_hash, "
                "metadata = excluded.metadata, indexed_at = excluded.indexed_at RETURNING id",
                values,
            ).fetchall()[0][0]
            conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
            conn.executemany(
                'INSERT INTO chunks(doc_id, ordinal, text, start, "end", n_tokens, page, title) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(doc_id, *row) for row in rows],
            )
            by_ordinal = dict(
                conn.execute("SELECT ordinal, id FROM chunks WHERE doc_id = ?", (doc_id,))
            )
        return doc_id, [by_ordinal[c.ordinal] for c in chunks], removed

    def delete_documents(self, keys: Iterable[str]) -> list[int]:
        """Delete documents (unknown keys are ignored); returns the removed chunk ids."""
        if isinstance(keys, str):
            raise TypeError("delete_documents expects a collection of keys, not one string")
        wanted = json.dumps(list(dict.fromkeys(keys)))
        with self.transaction(), self._locked() as conn:
            removed = [
                r[0]
                for r in conn.execute(
                    "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                    "WHERE d.key IN (SELECT value FROM json_each(?)) ORDER BY c.id",
                    (wanted,),
                )
            ]
            conn.execute(
                "DELETE FROM documents WHERE key IN (SELECT value FROM json_each(?))", (wanted,)
            )
        return removed

    def set_file_hash(self, keys: Iterable[str], file_hash: str) -> None:
        """Record that unchanged documents were seen in a file with new bytes, so the next run
        skips that file without parsing it."""
        wanted = json.dumps(list(keys))
        with self.transaction(), self._locked() as conn:
            conn.execute(
                "UPDATE documents SET file_hash = ? WHERE key IN (SELECT value FROM json_each(?))",
                (file_hash, wanted),
            )

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file, so a copy of the file alone is whole."""
        with self._locked() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value (the manifest, small state)."""
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
        with self._locked() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, encoded),
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._locked() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_manifest(self, manifest: Mapping[str, Any]) -> None:
        """The index manifest (model, chunking, vector store settings) under meta 'manifest'."""
        self.set_meta("manifest", dict(manifest))

    def get_manifest(self) -> dict[str, Any] | None:
        manifest = self.get_meta("manifest")
        return manifest if isinstance(manifest, dict) else None

    # -- documents -------------------------------------------------------------------------

    def document_hashes(self) -> dict[str, tuple[str, str]]:
        """key -> (content_hash, file_hash), to decide what changed since the last run."""
        with self._locked() as conn:
            rows = conn.execute("SELECT key, content_hash, file_hash FROM documents").fetchall()
        return {key: (content, file_) for key, content, file_ in rows}

    def documents_for_path(self, path: str) -> list[str]:
        """Keys of all documents loaded from one file (one per row for jsonl/csv)."""
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT key FROM documents WHERE path = ? ORDER BY key", (path,)
            ).fetchall()
        return [r[0] for r in rows]

    def get_document(self, key_or_id: str | int) -> DocumentRow | None:
        """A document by key (str) or by id (any integer, numpy included)."""
        if isinstance(key_or_id, str):
            where, value = "d.key = ?", key_or_id
        else:
            where, value = "d.id = ?", int(key_or_id)
        with self._locked() as conn:
            row = conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents d WHERE {where}", (value,))
            found = row.fetchone()
        return None if found is None else _document_row(found)

    def iter_documents(self) -> Iterator[DocumentRow]:
        """All documents by key, fetched in pages so the lock is never held across yields."""
        last = ""  # keys are never empty, so "" sorts before all of them
        while True:
            with self._locked() as conn:
                rows = conn.execute(
                    f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.key > ? ORDER BY d.key "
                    "LIMIT ?",
                    (last, _PAGE),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _document_row(row)
            last = rows[-1][1]

    # -- chunks ----------------------------------------------------------------------------

    def chunk_ids(self) -> np.ndarray:
        """All chunk ids, sorted, as int64 (what the vector store must hold)."""
        with self._locked() as conn:
            rows = conn.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def chunks_by_ids(self, ids: Iterable[int]) -> list[ChunkRow]:
        """Rows for ``ids`` in the order given; ids that do not exist (e.g. -1) are skipped."""
        wanted = [int(i) for i in ids]
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "WHERE c.id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            ).fetchall()
        by_id = {row[0]: row for row in rows}
        return [_chunk_row(by_id[i]) for i in wanted if i in by_id]

    def chunk_texts(self, ids: Iterable[int]) -> list[str]:
        """What the model embeds for ``ids``, in order: title and chunk text, as when indexing
        (`embedded_text`), so a vector rebuilt from here equals the one indexed; a missing id
        is a KeyError."""
        wanted = [int(i) for i in ids]
        with self._locked() as conn:
            title = "title" if self._titles(conn) else "''"
            texts = {
                i: embedded_text(t, text)
                for i, t, text in conn.execute(
                    f"SELECT id, {title}, text FROM chunks "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(wanted),),
                ).fetchall()
            }
        missing = [i for i in wanted if i not in texts]
        if missing:
            raise KeyError(f"no chunks with ids {missing[:20]} in {self.path}")
        return [texts[i] for i in wanted]

    def embedded_in_use(self, texts: Iterable[str]) -> set[str]:
        """Which of these chunk texts (the `text` column) some chunk still has, as the model
        embeds them (`embedded_text`, with the chunk's title): the embedding cache keeps those."""
        with self._locked() as conn:
            title = "title" if self._titles(conn) else "''"
            rows = conn.execute(
                f"SELECT {title}, text FROM chunks WHERE text IN (SELECT value FROM json_each(?))",
                (json.dumps(list(set(texts))),),
            ).fetchall()
        return {embedded_text(t, text) for t, text in rows}

    def chunks_of_document(self, key: str) -> list[int]:
        """Chunk ids of one document in ordinal order (empty for an unknown key)."""
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "WHERE d.key = ? ORDER BY c.ordinal",
                (key,),
            ).fetchall()
        return [r[0] for r in rows]

    # -- search ----------------------------------------------------------------------------

    def keyword_search(
        self, query: str, k: int, candidate_ids: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """BM25 over chunk title and text: (chunk id, score > 0, higher is better), best first.

        ``candidate_ids`` restricts the search inside SQL, so k results come back whenever
        k matching candidates exist.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matches = _fts_matches(query, candidate_ids)
        if matches is None:
            return []
        sql, params = matches
        with self._locked() as conn:
            rows = conn.execute(
                f"{sql.format(rank=self._bm25(conn))} ORDER BY s, id LIMIT ?", [*params, k]
            ).fetchall()
        return [(rowid, -score) for rowid, score in rows]

    def _bm25(self, conn: sqlite3.Connection) -> str:
        if not self._titles(conn):
            return "bm25(chunks_fts)"
        return f"bm25(chunks_fts, {FTS_WEIGHTS[0]}, {FTS_WEIGHTS[1]})"

    def chunk_documents(self, ids: Iterable[int]) -> dict[int, int]:
        """chunk id -> document id for the ids that exist."""
        wanted = json.dumps([int(i) for i in ids])
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT id, doc_id FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                (wanted,),
            ).fetchall()
        return dict(rows)

    def snippet(
        self, chunk_id: int, query: str, width: int = 160
    ) -> tuple[str, list[tuple[int, int]]]:
        """One stored chunk's snippet for ``query`` (see `engine.store.snippets.snippet`)."""
        with self._locked() as conn:
            row = conn.execute("SELECT text FROM chunks WHERE id = ?", (int(chunk_id),)).fetchone()
        if row is None:
            raise KeyError(f"no chunk with id {chunk_id} in {self.path}")
        return snippet(row[0], query, width)

    def filter_chunk_ids(self, flt: Filter) -> np.ndarray:
        """Sorted unique ids of the chunks whose document matches every condition."""
        where, params = flt.to_sql()
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE {where} "
                "ORDER BY c.id",
                params,
            ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def stats(self) -> dict[str, Any]:
        """Counts and on-disk size (database plus write-ahead log)."""
        with self._locked() as conn:
            documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            types = dict(
                conn.execute(
                    "SELECT doc_type, count(*) FROM documents GROUP BY doc_type ORDER BY doc_type"
                ).fetchall()
            )
        size = 0
        for suffix in ("", "-wal"):
            part = self.path.with_name(self.path.name + suffix)
            if part.exists():
                size += part.stat().st_size
        return {
            "documents": documents,
            "chunks": chunks,
            "doc_types": types,
            "db_bytes": size,
            "schema_version": SCHEMA_VERSION,
        }


def _fts_matches(query: str, candidate_ids: np.ndarray | None) -> tuple[str, list[Any]] | None:
    """`SELECT id, s` of the chunks matching `query` (among the candidates), `{rank}` left for
    the BM25 expression; None when nothing can match."""
    match = fts_query(query)
    if match is None:
        return None
    sql = "SELECT rowid AS id, {rank} AS s FROM chunks_fts WHERE chunks_fts MATCH ?"
    params: list[Any] = [match]
    if candidate_ids is not None:
        candidates = np.asarray(candidate_ids, dtype=np.int64)
        if candidates.size == 0:
            return None
        # Unary + keeps SQLite from probing FTS5 once per candidate rowid (seconds on big
        # candidate sets); the filter then runs over the MATCH results instead.
        sql += " AND +rowid IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(candidates.ravel().tolist()))
    return sql, params


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or code == _SQLITE_IOERR_SHORT_READ


def _document_values(doc: DocumentIn) -> tuple[Any, ...]:
    """Validated column values of a document, metadata encoded as JSON."""
    if not doc.key:
        raise ValueError(f"document key must not be empty (path {doc.path!r})")
    if not math.isfinite(doc.mtime):
        raise ValueError(f"document {doc.key!r}: mtime must be a finite number, got {doc.mtime}")

    def reject(value: object) -> Any:
        raise TypeError(f"{type(value).__name__} value {value!r}")

    try:
        metadata = json.dumps(
            dict(doc.metadata), ensure_ascii=False, sort_keys=True, allow_nan=False, default=reject
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metadata of document {doc.key!r} is not JSON-serialisable: {exc}; convert dates "
            "to ISO strings and drop NaN/objects"
        ) from None
    return (
        doc.key,
        doc.path,
        doc.title,
        doc.doc_type,
        int(doc.size),
        float(doc.mtime),
        doc.content_hash,
        doc.file_hash,
        metadata,
        time.time(),
    )


def _chunk_rows(key: str, chunks: Sequence[ChunkIn]) -> list[tuple[Any, ...]]:
    seen: set[int] = set()
    rows: list[tuple[Any, ...]] = []
    for chunk in chunks:
        where = f"chunk {chunk.ordinal} of document {key!r}"
        if chunk.ordinal in seen:
            raise ValueError(f"{where}: duplicate ordinal")
        if not 0 <= chunk.start <= chunk.end:
            raise ValueError(f"{where}: need 0 <= start <= end, got {chunk.start}..{chunk.end}")
        if chunk.n_tokens < 0:
            raise ValueError(f"{where}: n_tokens must be >= 0, got {chunk.n_tokens}")
        seen.add(chunk.ordinal)
        rows.append(
            (
                chunk.ordinal,
                chunk.text,
                chunk.start,
                chunk.end,
                chunk.n_tokens,
                chunk.page,
                chunk.title,
            )
        )
    return rows


def _document_row(row: Sequence[Any]) -> DocumentRow:
    return DocumentRow(*row[:9], json.loads(row[9]), row[10], row[11])


def _chunk_row(row: Sequence[Any]) -> ChunkRow:
    return ChunkRow(*row[:11], json.loads(row[11]))
