"""Two cache levels for embeddings: an in-process LRU bounded in bytes, and diskcache on disk.

Values are raw float32 bytes, checked on read for length, finiteness and (for normalised models)
unit length; a non-raw entry is refused rather than unpickled, and a bad entry is a logged miss
that is dropped, never a crash.

Only proof of corruption (SQLite says the file is not a database or is malformed) moves a cache
aside. A disk that is full, read-only or not ours to write is not damage: the cache is then read
without writing (or skipped), with one warning, and the files are left exactly as they were.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

from engine.disks import disk_problem

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# A stored vector whose norm is further than this from 1 is not what a normalising model wrote
# (FAISS refuses rows past the same tolerance).
NORM_TOLERANCE = 1e-3
_DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class MemoryCache:
    """LRU bounded by the bytes of the vectors it holds, not by entry count."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            vec = self._items.get(key)
            if vec is not None:
                self._items.move_to_end(key)
            return vec

    def drop(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                old = self._items.pop(key, None)
                if old is not None:
                    self.nbytes -= old.nbytes

    def put(self, key: str, vec: np.ndarray) -> None:
        if vec.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = vec
            self.nbytes += vec.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes


class _RawDisk(diskcache.Disk):
    """diskcache's storage limited to raw bytes: a tampered entry cannot make us unpickle."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, bytes):
            raise TypeError("the embedding cache stores raw bytes only")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise ValueError(f"refusing cache entry stored in mode {mode} (only raw bytes)")
        return super().fetch(mode, filename, value, read)


class _ReadOnlyEntries:
    """diskcache's table read through a read-only SQLite connection.

    diskcache writes its settings on every open, so it cannot open a cache it may not write;
    this reads the same rows (raw bytes only) without creating or changing a file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        db = directory / "cache.db"
        if not db.is_file():
            raise FileNotFoundError(errno.ENOENT, "no cache database yet", str(db))
        uri = db.resolve().as_uri()
        try:
            self._conn = self._connect(f"{uri}?mode=ro")
        except sqlite3.OperationalError:
            # A WAL database needs its -shm file; where it cannot be created (read-only
            # mount) SQLite reads the file as immutable instead.
            self._conn = self._connect(f"{uri}?immutable=1")
        self._lock = threading.Lock()

    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM Cache WHERE rowid = 0").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT mode, filename, value, expire_time FROM Cache WHERE key = ? AND raw = 1",
                (key,),
            ).fetchone()
        if row is None:
            return None
        mode, filename, value, expire = row
        if expire is not None and expire < time.time():
            return None
        if mode == diskcache.core.MODE_RAW:
            return bytes(value)
        if mode == diskcache.core.MODE_BINARY and isinstance(filename, str):
            path = (self.directory / filename).resolve()
            if not path.is_relative_to(self.directory.resolve()):
                raise ValueError(f"entry file {filename!r} lies outside the cache")
            return path.read_bytes()
        raise ValueError(f"refusing cache entry stored in mode {mode} (only raw bytes)")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM Cache").fetchone()[0])

    def volume(self) -> int:
        return sum(f.stat().st_size for f in self.directory.glob("cache.db*") if f.is_file())

    def close(self) -> None:
        self._conn.close()


def _is_damage(exc: BaseException) -> bool:
    """True only when SQLite itself says the file is not a (sound) database."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _DAMAGE_CODES


def _why(exc: BaseException, directory: Path) -> str:
    return disk_problem(exc, directory) or str(exc) or type(exc).__name__


class DiskCache:
    """Persistent, size-bounded, shared by processes; writes go through one background thread so
    they never slow the embedding path."""

    ERRORS = (sqlite3.Error, OSError, ValueError, TypeError)

    def __init__(self, directory: Path, size_limit: int, ttl: float | None = None) -> None:
        self.directory = directory / f"v{CACHE_FORMAT}"
        self.ttl = ttl
        self.errors = 0
        # Why this cache does not write (full or read-only disk), or None while it does.
        self.read_only: str | None = None
        self._size_limit = size_limit
        self._cache: diskcache.Cache | None = None
        self._reader: _ReadOnlyEntries | None = None
        self._open()
        self._writes: queue.Queue[list[tuple[str, bytes | None]] | None] = queue.Queue()
        self._writer = threading.Thread(
            target=self._write_loop, name="l2-cache-writer", daemon=True
        )
        self._writer.start()

    def _new_cache(self) -> diskcache.Cache:
        if self.directory.exists() and not self.directory.is_dir():
            raise sqlite3.DatabaseError(f"{self.directory} is a file, not a cache folder")
        return diskcache.Cache(
            str(self.directory),
            size_limit=self._size_limit,
            disk=_RawDisk,
            eviction_policy="least-recently-stored",
        )

    def _open(self) -> None:
        try:
            self._cache = self._new_cache()
            return
        except self.ERRORS as exc:
            failure: BaseException = exc
        if self.directory.exists() and (
            _is_damage(failure) or not self.directory.is_dir()
        ):
            aside = self.directory.with_name(f"{self.directory.name}.damaged-{int(time.time())}")
            try:
                shutil.move(str(self.directory), str(aside))
                log.warning(
                    "embedding cache at %s is damaged (%s); moved to %s and started afresh",
                    self.directory,
                    failure,
                    aside,
                )
                self._cache = self._new_cache()
                return
            except self.ERRORS as exc:
                failure = exc
        self._stop_writing(failure)
        try:
            self._reader = _ReadOnlyEntries(self.directory)
        except self.ERRORS:
            log.warning(
                "embedding cache at %s cannot be used (%s); embeddings are kept in memory only "
                "for this run",
                self.directory,
                self.read_only,
            )
            return
        log.warning(
            "embedding cache at %s cannot be written (%s); reading it only, new embeddings are "
            "kept in memory for this run",
            self.directory,
            self.read_only,
        )

    def _stop_writing(self, exc: BaseException) -> None:
        self.read_only = _why(exc, self.directory)

    def _fetch(self, key: str) -> Any:
        if self._cache is not None:
            return self._cache.get(key)
        if self._reader is not None:
            return self._reader.get(key)
        return None

    def get_many(
        self, keys: Iterable[str], nbytes: int, normalized: bool = True
    ) -> dict[str, np.ndarray]:
        """Hits only: an entry of the wrong length, not finite, or (normalised) not of unit
        length is a miss, and is dropped so the next write replaces it."""
        found: dict[str, np.ndarray] = {}
        bad: list[str] = []
        for key in keys:
            try:
                raw = self._fetch(key)
            except self.ERRORS as exc:
                self._miss_error(key, exc)
                continue
            if raw is None:
                continue
            if not isinstance(raw, bytes) or len(raw) != nbytes:
                size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
                self._miss_error(key, ValueError(f"entry has {size} bytes, expected {nbytes}"))
                bad.append(key)
                continue
            vec = np.frombuffer(raw, dtype=np.float32)
            problem = _vector_problem(vec, normalized)
            if problem is not None:
                self._miss_error(key, ValueError(problem))
                bad.append(key)
                continue
            found[key] = vec
        if bad and self.read_only is None:
            self._writes.put([(key, None) for key in bad])
        return found

    def _miss_error(self, key: str, exc: Exception) -> None:
        self.errors += 1
        log.warning("embedding cache entry %s… unreadable, treated as a miss: %s", key[:12], exc)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        if items and self.read_only is None:
            self._writes.put(list(items))

    def drop_many(self, keys: Iterable[str]) -> None:
        """Delete entries (absent keys are ignored), queued behind earlier writes."""
        drops: list[tuple[str, bytes | None]] = [(key, None) for key in keys]
        if drops and self.read_only is None:
            self._writes.put(drops)

    def _write_loop(self) -> None:
        while True:
            batch = self._writes.get()
            try:
                if batch is None:
                    return
                while not self._writes.empty():
                    more = self._writes.get_nowait()
                    if more is None:
                        self._write(batch)
                        return
                    batch.extend(more)
                    self._writes.task_done()
                self._write(batch)
            finally:
                self._writes.task_done()

    def _write(self, batch: list[tuple[str, bytes | None]]) -> None:
        """Sets and drops (None) in order, in one transaction; a disk that stops taking writes
        turns writing off with one warning instead of one per batch."""
        if self._cache is None or self.read_only is not None:
            return
        try:
            with self._cache.transact():
                for key, raw in batch:
                    if raw is None:
                        self._cache.delete(key)
                    else:
                        self._cache.set(key, raw, expire=self.ttl)
        except self.ERRORS as exc:
            self.errors += 1
            if _is_damage(exc):
                log.warning("embedding cache write of %d entries failed: %s", len(batch), exc)
                return
            self._stop_writing(exc)
            log.warning(
                "embedding cache at %s stopped taking writes (%s); new embeddings are kept in "
                "memory for the rest of this run, the cache on disk is left as it was",
                self.directory,
                self.read_only,
            )

    def flush(self) -> None:
        """Wait until every queued write is on disk (tests and shutdown)."""
        self._writes.join()

    def volume(self) -> int:
        try:
            if self._cache is not None:
                return int(self._cache.volume())
            return self._reader.volume() if self._reader is not None else 0
        except self.ERRORS:
            return 0

    def __len__(self) -> int:
        try:
            if self._cache is not None:
                return len(self._cache)
            return len(self._reader) if self._reader is not None else 0
        except self.ERRORS:
            return 0

    def close(self) -> None:
        self._writes.put(None)
        self._writer.join(timeout=30)
        try:
            if self._cache is not None:
                self._cache.close()
            if self._reader is not None:
                self._reader.close()
        except self.ERRORS as exc:
            log.warning("embedding cache at %s did not close cleanly: %s", self.directory, exc)


def _vector_problem(vec: np.ndarray, normalized: bool) -> str | None:
    """Why a stored vector cannot be what the model wrote, or None."""
    if not np.isfinite(vec).all():
        return "entry holds non-finite values"
    if normalized:
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        if abs(norm - 1.0) > NORM_TOLERANCE:
            return f"entry has norm {norm:.6g}, expected 1 (the model normalises)"
    return None
