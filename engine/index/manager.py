"""Named indexes side by side under `<data_dir>/indexes/`, plus repair, snapshot and restore."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import sqlite3
import tarfile
import time
from pathlib import Path

from engine.config import Config
from engine.embedding import EmbeddingService
from engine.fsutil import atomic_write_bytes
from engine.index.corpus import (
    DATABASE,
    MANIFEST,
    VECTORS,
    CorpusIndex,
    IndexStats,
    folder_bytes,
    read_manifest,
    write_manifest,
)
from engine.index.errors import (
    CorpusIndexError,
    IndexCorruptError,
    IndexNotFoundError,
    IndexSourceError,
)
from engine.index.progress import IndexReport
from engine.models.sources import sha256_file

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SNAPSHOT_MAGIC = "embedscope-snapshot"
SNAPSHOT_VERSION = 1


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise CorpusIndexError(
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
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

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
                )
            )
        return out

    async def open(self, name: str, model: str | None = None) -> CorpusIndex:
        async with self._lock:
            index = self._open.get(name)
            if index is None:
                index = await CorpusIndex.open(
                    name, self.folder(name), self.config, self.service, model
                )
                self._open[name] = index
            elif model and model != index.model_name:
                await CorpusIndex.open(name, self.folder(name), self.config, self.service, model)
            return index

    async def create(
        self, name: str, model: str | None = None, index_type: str | None = None
    ) -> CorpusIndex:
        async with self._lock:
            folder = self.folder(name)
            if (folder / MANIFEST).is_file():
                raise CorpusIndexError(
                    f"index '{name}' already exists; open it, or `embedscope rm-index {name}`"
                )
            index = await CorpusIndex.create(
                name, folder, self.config, self.service, model, index_type
            )
            self._open[name] = index
            return index

    async def open_or_create(
        self, name: str, model: str | None = None, index_type: str | None = None
    ) -> CorpusIndex:
        if (self.folder(name) / MANIFEST).is_file():
            return await self.open(name, model)
        return await self.create(name, model, index_type)

    def close(self) -> None:
        for index in self._open.values():
            index.close()
        self._open.clear()

    async def remove(self, name: str) -> None:
        folder = self.folder(name)
        if not folder.is_dir():
            raise IndexNotFoundError(
                f"no index named '{name}' (indexes: {', '.join(self.names())})"
            )
        async with self._lock:
            index = self._open.pop(name, None)
            if index is not None:
                index.close()
            trash = folder.with_name(f".{name}.removing-{time.time_ns()}")
            folder.rename(trash)
            await asyncio.to_thread(shutil.rmtree, trash, True)

    async def repair(self, name: str) -> dict[str, object]:
        """Make a broken index usable again, keeping whatever the data allows.

        The vectors are always rebuilt from SQLite (texts) and the embedding cache; a damaged
        database is set aside and rebuilt by re-indexing the recorded source folder.
        """
        folder = self.folder(name)
        if not folder.is_dir():
            raise IndexNotFoundError(f"no index named '{name}' to repair")
        async with self._lock:
            index = self._open.pop(name, None)
            if index is not None:
                index.close()
        actions: list[str] = []
        manifest = _recover_manifest(folder, name, actions)
        db = folder / DATABASE
        if not _database_ok(db):
            for suffix in ("", "-wal", "-shm"):
                part = db.with_name(db.name + suffix)
                if part.exists():
                    part.rename(part.with_name(part.name + f".damaged-{time.time_ns()}"))
            actions.append("database was damaged: set aside, rebuilt from the source files")
        (folder / VECTORS).unlink(missing_ok=True)
        actions.append("vectors rebuilt from the database and the embedding cache")
        source = manifest.get("source")
        manifest.update(source=None, documents=0, chunks=0)
        manifest["fingerprint"] = (
            await self.service.model(manifest["model"])
        ).fingerprint.to_dict()
        write_manifest(folder, manifest)
        report: IndexReport | None = None
        if not db.exists():
            index = await CorpusIndex.create(
                name, folder, self.config, self.service, manifest["model"], manifest["index_type"]
            )
            if source and Path(source).exists():
                report = await index.index_path([Path(source)])
            elif source:
                actions.append(f"source {source} is gone: the index is empty; re-index it")
        else:
            index = await CorpusIndex.open(name, folder, self.config, self.service)
            if source:
                index.manifest["source"] = source
            index._save(Path(source) if source else None)
        self._open[name] = index
        stats = index.stats()
        return {
            "index": name,
            "actions": actions,
            "documents": stats.documents,
            "chunks": stats.chunks,
            "reindex": report.to_dict() if report else None,
        }

    async def snapshot(self, name: str, target: Path) -> dict[str, object]:
        """One tar archive of the index folder with a sha256 per member, checked on restore."""
        index = await self.open(name)
        async with index._write_lock:
            await asyncio.to_thread(index._save)
            await asyncio.to_thread(index.store.checkpoint)
            return await asyncio.to_thread(_write_snapshot, index.folder, name, target)

    async def restore(self, archive: Path, name: str | None = None) -> dict[str, object]:
        staging, original = await asyncio.to_thread(_verify_snapshot, archive, self.root)
        target_name = check_name(name or original)
        folder = self.folder(target_name)
        if folder.exists():
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise CorpusIndexError(
                f"index '{target_name}' already exists; `embedscope rm-index {target_name}` first "
                "or restore under another name with --name"
            )
        staging.rename(folder)
        if target_name != original:
            manifest = read_manifest(folder, original)
            manifest["name"] = target_name
            write_manifest(folder, manifest)
        index = await self.open(target_name)
        stats = index.stats()
        return {"index": target_name, "documents": stats.documents, "chunks": stats.chunks}


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


def _write_snapshot(folder: Path, name: str, target: Path) -> dict[str, object]:
    members = [folder / MANIFEST, folder / DATABASE, folder / VECTORS]
    checks = {p.name: sha256_file(p) for p in members if p.exists()}
    header = json.dumps(
        {"magic": SNAPSHOT_MAGIC, "version": SNAPSHOT_VERSION, "index": name, "sha256": checks},
        indent=1,
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("SNAPSHOT.json")
        info.size = len(header)
        tar.addfile(info, io.BytesIO(header))
        for p in members:
            if p.exists():
                tar.add(p, arcname=p.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return {"index": name, "archive": str(target), "bytes": target.stat().st_size, "sha256": checks}


def _verify_snapshot(archive: Path, root: Path) -> tuple[Path, str]:
    """Unpack into a staging folder and check every member's sha256 before anything is used."""

    def refuse(reason: str) -> CorpusIndexError:
        return CorpusIndexError(f"snapshot {archive} refused: {reason}")

    if not archive.is_file():
        raise refuse("file not found")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".restore-{time.time_ns()}"
    staging.mkdir()
    try:
        try:
            with tarfile.open(archive, mode="r:gz") as tar:
                names = tar.getnames()
                allowed = {"SNAPSHOT.json", MANIFEST, DATABASE, VECTORS}
                if not set(names) <= allowed or "SNAPSHOT.json" not in names:
                    raise refuse(f"unexpected members {sorted(set(names) - allowed)}")
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise refuse(f"not a readable snapshot archive ({exc})") from exc
        try:
            header = json.loads((staging / "SNAPSHOT.json").read_text())
        except ValueError as exc:
            raise refuse("damaged header") from exc
        if header.get("magic") != SNAPSHOT_MAGIC:
            raise refuse("not an embedscope snapshot")
        if header.get("version", 0) > SNAPSHOT_VERSION:
            raise refuse(f"made by a newer embedscope (version {header.get('version')})")
        expected: dict[str, str] = header.get("sha256", {})
        for member in (MANIFEST, DATABASE):
            if member not in expected:
                raise refuse(f"{member} missing")
        for member, digest in expected.items():
            path = staging / member
            if not path.is_file() or sha256_file(path) != digest:
                raise refuse(f"checksum mismatch for {member} (the archive was altered or damaged)")
        (staging / "SNAPSHOT.json").unlink()
        return staging, str(header.get("index"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
