"""Named indexes side by side under `<data_dir>/indexes/`, plus repair, snapshot and restore.

Everything that changes an index folder (create, index, repair, snapshot, restore, remove) holds
that index's writer lock (`engine.index.lock`); opening an index to read it takes no lock.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.cancel import CancelToken
from engine.config import Config
from engine.embedding import EmbeddingService
from engine.fsutil import fsync_dir
from engine.index.corpus import (
    DATABASE,
    MANIFEST,
    VECTORS,
    CorpusIndex,
    IndexStats,
    backend_of,
    destroy_vectors,
    discard_vectors,
    folder_bytes,
    read_manifest,
    same_settings,
    write_manifest,
)
from engine.index.errors import (
    CorpusIndexError,
    IndexCorruptError,
    IndexExistsError,
    IndexNameError,
    IndexNotFoundError,
    IndexSourceError,
)
from engine.index.lock import WriterLock
from engine.index.progress import IndexReport
from engine.index.snapshot import GB, refuser, unpack_snapshot, verify_unpacked, write_snapshot

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESTORE_PREFIX = ".restore-"
# A staging folder whose lock is free and that has not changed for this long was left by a
# restore that died; younger ones may belong to a restore that is just starting.
ABANDONED_AFTER_S = 60.0


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise IndexNameError(
            f"index name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class IndexManager:
    def __init__(self, config: Config, service: EmbeddingService) -> None:
        self.config = config
        self.service = service
        self.root = config.data_dir / "indexes"
        self._open: dict[str, CorpusIndex] = {}
        self._lock = asyncio.Lock()

    def folder(self, name: str) -> Path:
        return self.root / check_name(name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        # Staging and trash folders start with a dot, which no index name does.
        found = (p for p in self.root.iterdir() if NAME_RE.match(p.name))
        return sorted(p.name for p in found if (p / MANIFEST).is_file())

    def summaries(self) -> list[IndexStats]:
        """From manifests alone: cheap enough for a list that refreshes."""
        out = []
        for name in self.names():
            folder = self.folder(name)
            try:
                m = read_manifest(folder, name)
            except CorpusIndexError:
                continue
            out.append(
                IndexStats(
                    name=name,
                    model=m.get("model", "?"),
                    dimension=int(m.get("dimension", 0)),
                    index_type=m.get("index_type", "?"),
                    documents=int(m.get("documents", 0)),
                    chunks=int(m.get("chunks", 0)),
                    bytes_on_disk=folder_bytes(folder),
                    last_indexed=m.get("last_indexed"),
                    path=folder,
                    source=m.get("source"),
                    backend=backend_of(m),
                )
            )
        return out

    async def open(self, name: str, model: str | None = None) -> CorpusIndex:
        """Open to read (no lock, nothing written); writers then use `CorpusIndex.writing`."""
        async with self._lock:
            return await self._open_index(name, model)

    async def _open_index(self, name: str, model: str | None) -> CorpusIndex:
        index = self._open.get(name)
        if index is not None and index.replaced():
            self._drop(name)
            index = None
        if index is None:
            index = await CorpusIndex.open(
                name, self.folder(name), self.config, self.service, model
            )
            self._open[name] = index
        elif model and model != index.model_name:
            await CorpusIndex.open(name, self.folder(name), self.config, self.service, model)
        return index

    def _drop(self, name: str) -> None:
        index = self._open.pop(name, None)
        if index is not None:
            index.close()

    async def create(
        self,
        name: str,
        model: str | None = None,
        index_type: str | None = None,
        *,
        wait: bool = False,
        backend: str | None = None,
    ) -> CorpusIndex:
        return await self._create(name, model, index_type, wait, reuse=False, backend=backend)

    async def open_or_create(
        self,
        name: str,
        model: str | None = None,
        index_type: str | None = None,
        *,
        wait: bool = False,
        backend: str | None = None,
    ) -> CorpusIndex:
        """For a writer. An index that holds no documents yet (say its first run failed before
        its first commit) pins nothing: if today's model or settings differ, it is made anew.
        ``backend``: for a new index (default ``index.backend``); an existing one keeps its own."""
        if (self.folder(name) / MANIFEST).is_file() and not _holds_nothing(self.folder(name)):
            return await self.open(name, model)
        return await self._create(name, model, index_type, wait, reuse=True, backend=backend)

    async def _create(
        self,
        name: str,
        model: str | None,
        index_type: str | None,
        wait: bool,
        reuse: bool,
        backend: str | None = None,
    ) -> CorpusIndex:
        folder = self.folder(name)
        plan = await CorpusIndex.plan(
            name, self.config, self.service, model, index_type, backend
        )
        async with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            folder.mkdir(exist_ok=True)
            async with WriterLock(folder, name).holding(wait):
                if (folder / MANIFEST).is_file():
                    if not reuse:
                        raise IndexExistsError(
                            f"index '{name}' already exists; open it, or "
                            f"`embedscope rm-index {name}`"
                        )
                    kept = read_manifest(folder, name)
                    if same_settings(kept, plan.manifest) or not _holds_nothing(folder):
                        return await self._open_index(name, model)
                    self._drop(name)
                    _remove_index_files(folder)
                index = await CorpusIndex.create(name, folder, self.config, self.service, plan)
                self._open[name] = index
                return index

    def close(self) -> None:
        for index in self._open.values():
            index.close()
        self._open.clear()

    async def remove(self, name: str, *, wait: bool = False) -> None:
        folder = self.folder(name)
        if not folder.is_dir():
            raise IndexNotFoundError(
                f"no index named '{name}' (indexes: {', '.join(self.names()) or 'none'})"
            )
        async with self._lock, WriterLock(folder, name).holding(wait):
            self._drop(name)
            try:
                manifest = read_manifest(folder, name)
            except CorpusIndexError:
                manifest = None
            if manifest is not None:
                await asyncio.to_thread(destroy_vectors, folder, name, self.config, manifest)
            trash = self.root / f".{name}.removing-{time.time_ns()}"
            folder.rename(trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)

    async def repair(self, name: str, *, wait: bool = False) -> dict[str, object]:
        """Make a broken index usable again, keeping whatever the data allows.

        The vectors are always rebuilt from SQLite (texts) and the embedding cache; a damaged
        database is set aside and rebuilt by re-indexing the recorded source folder.
        """
        folder = self.folder(name)
        if not folder.is_dir():
            raise IndexNotFoundError(f"no index named '{name}' to repair")
        async with self._lock, WriterLock(folder, name).holding(wait) as lock:
            self._drop(name)
            index, outcome = await self._repair(folder, name, lock)
            self._open[name] = index
            return outcome

    async def _repair(
        self, folder: Path, name: str, lock: WriterLock
    ) -> tuple[CorpusIndex, dict[str, object]]:
        actions: list[str] = []
        manifest = _recover_manifest(folder, name, actions)
        db = folder / DATABASE
        if not _database_ok(db):
            for suffix in ("", "-wal", "-shm"):
                part = db.with_name(db.name + suffix)
                if part.exists():
                    part.rename(part.with_name(part.name + f".damaged-{time.time_ns()}"))
            actions.append("database was damaged: set aside, rebuilt from the source files")
        await asyncio.to_thread(discard_vectors, folder, name, self.config, manifest)
        actions.append("vectors rebuilt from the database and the embedding cache")
        source = manifest.get("source")
        manifest.update(source=None, documents=0, chunks=0)
        manifest["fingerprint"] = (
            await self.service.model(manifest["model"])
        ).fingerprint.to_dict()
        write_manifest(folder, manifest)
        report: IndexReport | None = None
        if not db.exists():
            plan = await CorpusIndex.plan(
                name,
                self.config,
                self.service,
                manifest["model"],
                manifest["index_type"],
                backend_of(manifest),
            )
            index = await CorpusIndex.create(name, folder, self.config, self.service, plan)
            async with index.writing(lock=lock):
                if source and Path(source).exists():
                    report = await index._index(Path(source), (), (), None, CancelToken())
                elif source:
                    actions.append(f"source {source} is gone: the index is empty; re-index it")
        else:
            index = await CorpusIndex.open(name, folder, self.config, self.service)
            async with index.writing(lock=lock):
                if source:
                    index.manifest["source"] = source
                await asyncio.to_thread(index._save, Path(source) if source else None)
        stats = index.stats()
        return index, {
            "index": name,
            "actions": actions,
            "documents": stats.documents,
            "chunks": stats.chunks,
            "reindex": report.to_dict() if report else None,
        }

    async def snapshot(self, name: str, target: Path, *, wait: bool = False) -> dict[str, Any]:
        """One tar archive of the index with a sha256 and size per member, checked on restore.

        Taken under the writer lock, so the three files are one consistent state."""
        target = Path(target)
        if target.is_dir():
            raise CorpusIndexError(
                f"{target} is a folder; give the archive's file name, e.g. "
                f"{target / (name + '.tar.gz')}"
            )
        above = next(p for p in (target.parent, *target.parent.parents) if p.exists())
        if not above.is_dir():
            raise CorpusIndexError(f"cannot write snapshot {target}: {above} is not a folder")
        index = await self.open(name)
        if index.backend != "faiss":
            raise CorpusIndexError(
                f"index '{name}' keeps its vectors on a {index.backend} server, which a "
                "snapshot archive does not hold; back the server up with its own tools, or "
                f"`embedscope migrate {name} --to faiss` first and snapshot that"
            )
        async with index.writing(wait):
            return await asyncio.to_thread(write_snapshot, index.folder, name, target)

    async def restore(self, archive: Path, name: str | None = None) -> dict[str, object]:
        """Unpack into a private staging folder, check every member, and open and verify the
        index there; only an archive that passes everything takes its name. A refused archive
        leaves nothing behind."""
        archive = Path(archive)
        if name is not None:
            self._refuse_taken(check_name(name))
        self.root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_sweep_abandoned, self.root)
        staging = self.root / f"{RESTORE_PREFIX}{os.getpid()}-{time.time_ns()}"
        staging.mkdir()
        # Held from unpacking until the index is open under its name: the lock file moves
        # with the folder, so no writer can start on the restored index half-way.
        lock = WriterLock(staging, name or "restore")
        moved = False
        try:
            await lock.acquire()
            cap = int(self.config.index["max_restore_gb"] * GB)
            header = await asyncio.to_thread(unpack_snapshot, archive, staging, cap)
            target = name or _archived_name(archive, header)
            self._refuse_taken(target)
            await verify_unpacked(archive, staging, target, self.service)
            async with self._lock:
                try:
                    # Fails if another process took the name meanwhile (the folder is not empty).
                    os.rename(staging, self.folder(target))
                except OSError as exc:
                    raise self._taken(target) from exc
                moved = True
                fsync_dir(self.root)
                index = await self._open_index(target, None)
        finally:
            if not moved:
                await asyncio.to_thread(shutil.rmtree, staging, True)
            lock.release()
        stats = index.stats()
        return {"index": target, "documents": stats.documents, "chunks": stats.chunks}

    def _refuse_taken(self, name: str) -> None:
        if self.folder(name).exists():
            raise self._taken(name)

    @staticmethod
    def _taken(name: str) -> CorpusIndexError:
        return IndexExistsError(
            f"index '{name}' already exists; `embedscope rm-index {name}` first "
            "or restore under another name with --name"
        )


def _archived_name(archive: Path, header: dict[str, Any]) -> str:
    name = header.get("index")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise refuser(archive)(
            f"its header names the index {name!r}, which is not an index name; restore it "
            "under a name of your choice with --name NAME"
        )
    return name


def _holds_nothing(folder: Path) -> bool:
    """True when the index's database exists and has no document (read-only look)."""
    db = folder / DATABASE
    if not db.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT NOT EXISTS (SELECT 1 FROM documents)").fetchone()[0] == 1
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _remove_index_files(folder: Path) -> None:
    """Manifest first: a crash part-way leaves a folder that is no index, never a torn one."""
    for part in (MANIFEST, DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", VECTORS):
        (folder / part).unlink(missing_ok=True)


def _sweep_abandoned(root: Path) -> None:
    """Remove staging folders of restores that died (their lock is free) and the remains of
    removals that died mid-delete."""
    now = time.time()
    for path in root.glob(f"{RESTORE_PREFIX}*"):
        try:
            if now - path.stat().st_mtime < ABANDONED_AFTER_S:
                continue
            lock = WriterLock(path, path.name)
            if lock.try_acquire() is None:
                shutil.rmtree(path, ignore_errors=True)
                lock.release()
        except (OSError, CorpusIndexError):
            continue
    for path in root.glob(".*.removing-*"):
        shutil.rmtree(path, ignore_errors=True)


def _database_ok(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _recover_manifest(folder: Path, name: str, actions: list[str]) -> dict:
    try:
        return read_manifest(folder, name)
    except IndexCorruptError:
        pass
    db = folder / DATABASE
    if _database_ok(db):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
        finally:
            conn.close()
        if row:
            actions.append("manifest was damaged: restored from the database")
            return json.loads(row[0])
    raise IndexSourceError(
        f"index '{name}': both its manifest and database are unreadable, so nothing says what it "
        f"held; `embedscope rm-index {name}` and index the folder again"
    )
