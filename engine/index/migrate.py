"""Move an index's vectors to another backend (FAISS <-> Milvus) without re-embedding.

The metadata database stays where it is: only the vectors move, copied from the source store's
own ``iter_vectors`` (never from the model). The run holds the index's writer lock throughout,
so the source and the target (the same index, two stores) have one writer.

Crash safety: the manifest names the backend, and writing it is the one commit point. Until
then the index reads and writes its old store as before; the new one is built beside it (a
Milvus collection, or the FAISS file ``vectors.esvs.migrating``) with a state file
``migrate.json`` that lets a run killed mid-copy resume, skipping the ids already copied.
Before the manifest changes the new store must hold exactly the database's ids (count and a
sha256 of the sorted ids), and a sample of its vectors must equal the source's. Only after the
switch is the old store dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.fsutil import atomic_write_bytes
from engine.index.corpus import (
    GENERATION,
    VECTORS,
    CorpusIndex,
    _FieldCache,
    write_manifest,
)
from engine.index.errors import CorpusIndexError
from engine.store.factory import (
    check_backend,
    create_store,
    index_type_for,
    is_shared,
    open_store,
    recorded_settings,
)
from engine.store.vector_base import VectorStore, VectorStoreError, VectorStoreMissingError

STATE = "migrate.json"
STAGED = VECTORS + ".migrating"
BATCH = 1024
# A local target is saved this often, so a killed run loses at most this much copying.
SAVE_EVERY_S = 5.0
SAMPLE = 64

ProgressFn = Callable[[int, int], None]


def checksum(ids: np.ndarray) -> str:
    """sha256 of the sorted int64 ids (little-endian): equal sets, equal checksums."""
    return hashlib.sha256(np.sort(ids).astype("<i8").tobytes()).hexdigest()


async def migrate(
    index: CorpusIndex,
    to: str,
    settings: dict[str, Any],
    *,
    batch: int = BATCH,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Copy ``index``'s vectors into a new store on backend ``to`` with ``settings`` (that
    backend's config section, a ``--uri`` already applied), verify, and switch the index to it.

    The caller holds the index's writer lock (``index.writing()``). Raises CorpusIndexError
    when the index is already there or the copy does not verify; the index then still uses
    its old store, untouched.
    """
    try:
        to = check_backend(to)
        index_type = index_type_for(to, None, settings)
        recorded = recorded_settings(to, {**settings, "type": index_type})
    except ValueError as exc:
        raise CorpusIndexError(f"cannot migrate index '{index.name}': {exc}") from exc
    source, origin = index.vectors, index.backend
    state_path = index.folder / STATE
    if to == origin:
        here = (index.manifest.get("store") or {}).get("uri")
        if not is_shared(to) or here == recorded.get("uri"):
            state_path.unlink(missing_ok=True)
            where = f" at {here}" if is_shared(to) else ""
            raise CorpusIndexError(
                f"index '{index.name}' is already on {to}{where}; nothing to migrate"
            )
    started = time.perf_counter()
    generation = int(await asyncio.to_thread(index.store.get_meta, GENERATION) or 0)
    plan = {"to": to, "store": recorded, "index_type": index_type, "generation": generation}
    resumed = _read_state(state_path) == plan
    target = await asyncio.to_thread(
        _target_store, index, to, settings, index_type, resumed
    )
    try:
        if not resumed:
            atomic_write_bytes(state_path, json.dumps(plan).encode())
        copied = await asyncio.to_thread(_copy, index, source, target, batch, progress)
        expected = await asyncio.to_thread(_verify, index, source, target)
        await asyncio.to_thread(target.set_generation, generation)
        await asyncio.to_thread(target.save, index.folder / STAGED)
        _switch(index, to, recorded, index_type, target)
    except BaseException:
        target.close()
        raise
    old, index.vectors = source, target
    await asyncio.to_thread(_drop_old, index, old)
    state_path.unlink(missing_ok=True)
    return {
        "index": index.name,
        "from": origin,
        "to": to,
        "chunks": int(expected.size),
        "copied": copied,
        "resumed": resumed,
        "checksum": checksum(expected),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _target_store(
    index: CorpusIndex, to: str, settings: dict[str, Any], index_type: str, resume: bool
) -> VectorStore:
    """The store being built: the one a killed run left when resuming, else a new empty one
    (a leftover collection or file of an abandoned run is emptied)."""
    dim = int(index.manifest["dimension"])
    path = index.folder / STAGED
    try:
        if resume:
            try:
                return open_store(to, settings, dim, name=index.name, path=path)
            except VectorStoreMissingError:
                pass
        path.unlink(missing_ok=True)
        return create_store(
            to, settings, dim, name=index.name, index_type=index_type, replace=True
        )
    except VectorStoreError as exc:
        raise CorpusIndexError(f"cannot migrate index '{index.name}': {exc}") from exc


def _copy(
    index: CorpusIndex,
    source: VectorStore,
    target: VectorStore,
    batch: int,
    progress: ProgressFn | None,
) -> int:
    """Every source vector not yet in the target, with the fields a pushdown store needs."""
    have = target.ids()
    fields = _FieldCache(index.store) if target.pushes_filters else None
    total, done, copied = source.count, int(have.size), 0
    last_save = time.monotonic()
    for ids, vectors in source.iter_vectors(batch):
        new = ~np.isin(ids, have, assume_unique=True)
        if new.any():
            ids, vectors = ids[new], vectors[new]
            target.add(ids, vectors, fields.of(ids) if fields else None)
            copied += int(ids.size)
            done += int(ids.size)
            if not is_shared(target.backend) and time.monotonic() - last_save > SAVE_EVERY_S:
                target.save(index.folder / STAGED)
                last_save = time.monotonic()
        if progress is not None:
            progress(done, total)
    target.optimize()
    return copied


def _verify(index: CorpusIndex, source: VectorStore, target: VectorStore) -> np.ndarray:
    """The target must hold exactly the database's ids, with the source's vectors."""
    expected = np.sort(index.store.chunk_ids())
    got = target.ids()
    if target.count != expected.size or checksum(got) != checksum(expected):
        raise CorpusIndexError(
            f"migrating index '{index.name}' did not verify: the new store holds {got.size} "
            f"vectors (checksum {checksum(got)[:12]}), the database {expected.size} chunks "
            f"(checksum {checksum(expected)[:12]}); the index still uses its old store. Run "
            "the same command again"
        )
    if expected.size:
        picks = np.random.default_rng(0).choice(expected, min(SAMPLE, expected.size), False)
        if not np.allclose(source.fetch(picks), target.fetch(picks), atol=1e-6):
            raise CorpusIndexError(
                f"migrating index '{index.name}' did not verify: copied vectors differ from "
                "the source's; the index still uses its old store. Run the same command again"
            )
    return expected


def _switch(
    index: CorpusIndex, to: str, recorded: dict[str, Any], index_type: str, target: VectorStore
) -> None:
    """The commit point: a local target's file takes its name, then the manifest names the
    new backend (both atomic renames; until the second, the index uses its old store)."""
    staged = index.folder / STAGED
    if staged.is_file():
        staged.replace(index.folder / VECTORS)
    manifest = {**index.manifest, "backend": to, "store": recorded, "index_type": index_type}
    index.store.set_manifest(manifest)
    write_manifest(index.folder, manifest)
    index.manifest = manifest


def _drop_old(index: CorpusIndex, old: VectorStore) -> None:
    """After the switch: the old store's data goes (a collection on its server; a local file
    was replaced or is deleted here). A failure only leaves unused data, so it is ignored."""
    try:
        if is_shared(old.backend):
            old.destroy()
        elif is_shared(index.backend):
            (index.folder / VECTORS).unlink(missing_ok=True)
    except VectorStoreError:
        pass
    finally:
        old.close()
