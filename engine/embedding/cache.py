"""Two cache levels for embeddings: an in-process LRU bounded in bytes, and diskcache on disk.

Values are raw float32 bytes whose length is checked on read; a non-raw entry is refused rather than
unpickled, and any damaged entry or file is a logged miss, never a crash.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


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


class DiskCache:
    """Persistent, size-bounded, shared by processes; writes go through one background thread so
    they never slow the embedding path."""

    ERRORS = (sqlite3.Error, OSError, ValueError, TypeError)

    def __init__(self, directory: Path, size_limit: int, ttl: float | None = None) -> None:
        self.directory = directory / f"v{CACHE_FORMAT}"
        self.ttl = ttl
        self.errors = 0
        self._size_limit = size_limit
        self._cache = self._open()
        self._writes: queue.Queue[list[tuple[str, bytes]] | None] = queue.Queue()
        self._writer = threading.Thread(
            target=self._write_loop, name="l2-cache-writer", daemon=True
        )
        self._writer.start()

    def _open(self) -> diskcache.Cache:
        kwargs = {
            "size_limit": self._size_limit,
            "disk": _RawDisk,
            "eviction_policy": "least-recently-stored",
        }
        try:
            return diskcache.Cache(str(self.directory), **kwargs)
        except self.ERRORS as exc:
            aside = self.directory.with_name(f"{self.directory.name}.damaged-{int(time.time())}")
            log.warning(
                "embedding cache at %s is unreadable (%s); moved to %s", self.directory, exc, aside
            )
            shutil.move(str(self.directory), str(aside))
            return diskcache.Cache(str(self.directory), **kwargs)

    def get_many(self, keys: Iterable[str], nbytes: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for key in keys:
            try:
                raw = self._cache.get(key)
            except self.ERRORS as exc:
                self._miss_error(key, exc)
                continue
            if raw is None:
                continue
            if not isinstance(raw, bytes) or len(raw) != nbytes:
                self._miss_error(key, ValueError(f"entry has {len(raw)} bytes, expected {nbytes}"))
                continue
            found[key] = np.frombuffer(raw, dtype=np.float32)
        return found

    def _miss_error(self, key: str, exc: Exception) -> None:
        self.errors += 1
        log.warning("embedding cache entry %s… unreadable, treated as a miss: %s", key[:12], exc)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        if items:
            self._writes.put(items)

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

    def _write(self, batch: list[tuple[str, bytes]]) -> None:
        try:
            with self._cache.transact():
                for key, raw in batch:
                    self._cache.set(key, raw, expire=self.ttl)
        except self.ERRORS as exc:
            self.errors += 1
            log.warning("embedding cache write of %d entries failed: %s", len(batch), exc)

    def flush(self) -> None:
        """Wait until every queued write is on disk (tests and shutdown)."""
        self._writes.join()

    def volume(self) -> int:
        try:
            return int(self._cache.volume())
        except self.ERRORS:
            return 0

    def __len__(self) -> int:
        try:
            return len(self._cache)
        except self.ERRORS:
            return 0

    def close(self) -> None:
        self._writes.put(None)
        self._writer.join(timeout=30)
        self._cache.close()
