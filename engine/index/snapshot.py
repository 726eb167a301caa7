"""Snapshot archives: one gzipped tar of an index, with a sha256 and a size per member.

Restoring treats the archive as hostile. Nothing is unpacked before its header is checked; every
member must be declared in it, checksummed, a plain file, of the size it declares and starting as
its kind of file must; the total must fit under `index.max_restore_gb` and on the disk; and the
unpacked index must open and agree with itself before it takes a name (`IndexManager.restore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from engine.embedding import EmbeddingService
from engine.fsutil import atomic_write, fsync_dir
from engine.index.corpus import (
    DATABASE,
    FORMAT_VERSION,
    MANIFEST,
    VECTORS,
    backend_of,
    write_manifest,
)
from engine.index.errors import CorpusIndexError
from engine.models import ModelError
from engine.models.sources import sha256_file
from engine.store import MetadataStore, StoreCorruptError, StoreError, StoreVersionError

SNAPSHOT_MAGIC = "embedscope-snapshot"
SNAPSHOT_VERSION = 1
HEADER = "SNAPSHOT.json"
MEMBERS = (MANIFEST, DATABASE, VECTORS)
GB = 1024**3
_HEADER_MAX = 64 * 1024
_MANIFEST_MAX = 1024 * 1024
# How each member must start: a member that does not is refused after its first block, so a
# member full of zeros is never written out.
_MAGIC = {MANIFEST: b"{", DATABASE: b"SQLite format 3\x00", VECTORS: b"ESVS"}
_KIND = {
    MANIFEST: "a JSON manifest",
    DATABASE: "an SQLite database",
    VECTORS: "an embedscope vector file",
}
_BLOCK = 1 << 20
# Left free on the disk after unpacking, for the restored index's own later writes.
_FREE_MARGIN = 64 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")

Refuse = Callable[[str], CorpusIndexError]


def refuser(archive: Path) -> Refuse:
    def refuse(reason: str) -> CorpusIndexError:
        return CorpusIndexError(f"snapshot {archive} refused: {reason}")

    return refuse


# -- writing --------------------------------------------------------------------------------


def write_snapshot(folder: Path, name: str, target: Path) -> dict[str, Any]:
    """Archive the index in `folder`; call it under the index's writer lock, so the files are
    one consistent state. The database goes through SQLite's backup API, so what is still in
    its write-ahead log is included too."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            files = {
                MANIFEST: folder / MANIFEST,
                DATABASE: Path(tmp) / DATABASE,
                VECTORS: folder / VECTORS,
            }
            _copy_database(folder / DATABASE, files[DATABASE])
            checks = {member: sha256_file(path) for member, path in files.items()}
            sizes = {member: path.stat().st_size for member, path in files.items()}
            header = {
                "magic": SNAPSHOT_MAGIC,
                "version": SNAPSHOT_VERSION,
                "index": name,
                "sha256": checks,
                "bytes": sizes,
            }
            raw = json.dumps(header, indent=1).encode()
            with atomic_write(target) as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
                info = tarfile.TarInfo(HEADER)
                info.size = len(raw)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(raw))
                for member, path in files.items():
                    tar.add(path, arcname=member, recursive=False)
    except OSError as exc:
        raise CorpusIndexError(f"cannot write snapshot {target}: {exc.strerror or exc}") from exc
    except sqlite3.Error as exc:
        raise CorpusIndexError(
            f"cannot read the database of index '{name}' ({exc}); run `embedscope repair {name}`"
        ) from exc
    return {"index": name, "archive": str(target), "bytes": target.stat().st_size, "sha256": checks}


def _copy_database(source: Path, copy: Path) -> None:
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
            # One self-contained file: no write-ahead log to go with it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


# -- unpacking ------------------------------------------------------------------------------


def unpack_snapshot(archive: Path, staging: Path, cap: int) -> dict[str, Any]:
    """Unpack into the empty folder `staging` and return the header. A first pass checks
    everything (header, members, sizes, checksums) and writes nothing; only then a second pass,
    repeating every check, writes the members out."""
    refuse = refuser(archive)
    if not archive.is_file():
        raise refuse("no such file" if not archive.exists() else "it is not a file")
    header = _walk(archive, staging, cap, refuse, write=False)
    if _walk(archive, staging, cap, refuse, write=True) != header:
        raise refuse("it changed while it was being restored")
    fsync_dir(staging)
    return header


def _walk(
    archive: Path, staging: Path, cap: int, refuse: Refuse, *, write: bool
) -> dict[str, Any]:
    """One pass over the archive: every check, and with `write` the members into `staging`."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            header = _read_header(tar, refuse)
            _unpack_members(tar, header, staging, cap, refuse, write)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise refuse(f"not a readable snapshot archive ({exc})") from exc
    except OSError as exc:
        raise refuse(f"it could not be unpacked ({exc.strerror or exc})") from exc
    return header


def _read_header(tar: tarfile.TarFile, refuse: Refuse) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != HEADER:
        raise refuse(f"it does not start with {HEADER}, so it is not an embedscope snapshot")
    _check_plain(first, refuse)
    if first.size > _HEADER_MAX:
        raise refuse(f"its {HEADER} is {first.size} bytes, more than a header can be")
    raw = _member_file(tar, first, refuse).read()
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise refuse(f"damaged header ({exc})") from exc
    if not isinstance(header, dict):
        raise refuse(f"its header is a JSON {type(header).__name__}, not an object")
    if header.get("magic") != SNAPSHOT_MAGIC:
        raise refuse("not an embedscope snapshot")
    version = header.get("version")
    if type(version) is not int or version < 1:
        raise refuse(f"its header has version {version!r}, not a whole number from 1")
    if version > SNAPSHOT_VERSION:
        raise refuse(f"made by a newer embedscope (version {version})")
    sha = header.get("sha256")
    if not isinstance(sha, dict):
        raise refuse("its header has no checksum list")
    unknown = sorted(set(sha) - set(MEMBERS))
    if unknown:
        raise refuse(f"its checksum list names unexpected members {unknown}")
    missing = [m for m in MEMBERS if m not in sha]
    if missing:
        raise refuse(
            f"{', '.join(missing)} missing from its checksum list (every member must be "
            "checksummed)"
        )
    for member, digest in sha.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise refuse(f"its checksum for {member} is not a sha256")
    sizes = header.get("bytes")
    if sizes is not None and (
        not isinstance(sizes, dict)
        or set(sizes) != set(MEMBERS)
        or any(type(v) is not int or v < 0 for v in sizes.values())
    ):
        raise refuse("its list of member sizes is damaged")
    return header


def _unpack_members(
    tar: tarfile.TarFile,
    header: dict[str, Any],
    staging: Path,
    cap: int,
    refuse: Refuse,
    write: bool,
) -> None:
    expected: dict[str, str] = header["sha256"]
    declared: dict[str, int] | None = header.get("bytes")
    free = shutil.disk_usage(staging).free - _FREE_MARGIN
    if declared is not None:
        _check_total(sum(declared.values()), cap, free, refuse)
    total = 0
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        name = member.name
        if name not in expected:
            raise refuse(f"unexpected members {[name]} (not in its checksum list)")
        if name in seen:
            raise refuse(f"{name} is in it twice")
        _check_plain(member, refuse)
        size = member.size if declared is None else declared[name]
        if member.size != size:
            raise refuse(
                f"{name} is {member.size} bytes in the archive but its header declares {size}"
            )
        if name == MANIFEST and size > _MANIFEST_MAX:
            raise refuse(f"its manifest is {size} bytes, more than a manifest can be")
        total += size
        _check_total(total, cap, free, refuse)
        source = _member_file(tar, member, refuse)
        dest = staging / name if write else None
        _extract(source, name, size, dest, expected[name], refuse)
        seen.add(name)
    missing = [m for m in MEMBERS if m not in seen]
    if missing:
        raise refuse(f"{', '.join(missing)} missing from the archive")


def _check_total(total: int, cap: int, free: int, refuse: Refuse) -> None:
    if total > cap:
        raise refuse(
            f"it unpacks to {_size(total)}, over the {cap / GB:g} GB limit "
            "(index.max_restore_gb in the config)"
        )
    if total > free:
        raise refuse(
            f"it unpacks to {_size(total)} but the disk has {_size(max(free, 0))} to spare "
            f"(beyond {_size(_FREE_MARGIN)} kept free)"
        )


def _size(n: int) -> str:
    """GB = 1024^3 bytes and MB = 1024^2 bytes, as everywhere in embedscope."""
    return f"{n / GB:.2f} GB" if n >= GB // 10 else f"{n / 1024**2:.1f} MB"


def _check_plain(member: tarfile.TarInfo, refuse: Refuse) -> None:
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse():
        return
    if member.issym():
        kind = "a symbolic link"
    elif member.islnk():
        kind = "a hard link"
    elif member.isdir():
        kind = "a folder"
    elif member.issparse():
        kind = "a sparse file"
    else:
        kind = "a device or other special file"
    raise refuse(f"{member.name} is {kind}, not a regular file")


def _member_file(tar: tarfile.TarFile, member: tarfile.TarInfo, refuse: Refuse) -> IO[bytes]:
    source = tar.extractfile(member)
    if source is None:
        raise refuse(f"{member.name} has no content")
    return source


def _extract(
    source: IO[bytes], name: str, size: int, dest: Path | None, digest: str, refuse: Refuse
) -> None:
    """Stream one member to `dest` (None: only check it), counting bytes: it may never grow
    past its declared size."""
    sha = hashlib.sha256()
    count = 0
    block = source.read(_BLOCK)
    if not block.startswith(_MAGIC[name]):
        raise refuse(f"{name} is not {_KIND[name]}")
    with contextlib.ExitStack() as stack:
        out = None
        if dest is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = stack.enter_context(os.fdopen(os.open(dest, flags, 0o644), "wb"))
        while block:
            count += len(block)
            if count > size:
                raise refuse(f"{name} holds more than the {size} bytes it declares")
            sha.update(block)
            if out is not None:
                out.write(block)
            block = source.read(_BLOCK)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    if sha.hexdigest() != digest:
        raise refuse(f"checksum mismatch for {name} (the archive was altered or damaged)")


# -- verifying ------------------------------------------------------------------------------


async def verify_unpacked(
    archive: Path, staging: Path, target: str, service: EmbeddingService
) -> None:
    """The unpacked index must open with the model installed here, pass SQLite's integrity
    check and the vector file's checksum, and hold the same chunk ids in both."""
    refuse = refuser(archive)
    manifest = await asyncio.to_thread(_unpacked_manifest, staging, refuse)
    model_name = manifest["model"]
    try:
        model = await service.model(model_name)
    except ModelError as exc:
        raise refuse(f"it needs model '{model_name}', which is not usable here: {exc}") from exc
    if model.fingerprint.digest != manifest["fingerprint"].get("digest"):
        raise refuse(
            f"it was built with other weights or settings of model '{model_name}' than those "
            "installed here"
        )
    await asyncio.to_thread(_check_unpacked, staging, manifest, refuse)
    if manifest.get("name") != target:
        await asyncio.to_thread(_rename_unpacked, staging, manifest, target)


def _unpacked_manifest(staging: Path, refuse: Refuse) -> dict[str, Any]:
    from engine.store.faiss_store import INDEX_TYPES

    try:
        manifest = json.loads((staging / MANIFEST).read_bytes())
    except (ValueError, RecursionError) as exc:
        raise refuse(f"its manifest is not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise refuse("its manifest is not a JSON object")
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise refuse(f"its manifest has format version {version!r}")
    if version > FORMAT_VERSION:
        raise refuse(
            f"its index has format version {version}, newer than this embedscope reads "
            f"({FORMAT_VERSION}); upgrade embedscope"
        )
    dimension = manifest.get("dimension")
    if (
        not isinstance(manifest.get("model"), str)
        or type(dimension) is not int
        or dimension < 1
        or not isinstance(manifest.get("fingerprint"), dict)
        or manifest.get("index_type") not in INDEX_TYPES
    ):
        raise refuse("its manifest lacks a valid model, dimension, fingerprint or index type")
    return manifest


def _check_unpacked(staging: Path, manifest: dict[str, Any], refuse: Refuse) -> None:
    from engine.store.factory import open_store
    from engine.store.vector_base import (
        VectorStoreCorruptError,
        VectorStoreError,
        VectorStoreVersionError,
    )

    db = staging / DATABASE
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check(5)")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise refuse(f"its database is damaged ({exc})") from exc
    if problems != ["ok"]:
        raise refuse(f"its database is damaged ({'; '.join(problems)})")
    try:
        with MetadataStore(db, name="restore", readonly=True) as store:
            sql_ids = np.sort(store.chunk_ids())
    except StoreCorruptError as exc:
        raise refuse(f"its database is not an embedscope index ({exc.reason})") from exc
    except StoreVersionError as exc:
        raise refuse(
            f"its database has schema version {exc.found}, newer than this embedscope reads "
            f"({exc.supported}); upgrade embedscope"
        ) from exc
    except StoreError as exc:
        raise refuse(f"its database cannot be read ({exc})") from exc
    # Archives hold a vector file, so only indexes on a local backend are ever snapshotted.
    backend = backend_of(manifest)
    if backend != "faiss":
        raise refuse(f"it names the {backend!r} backend, whose vectors no archive holds")
    try:
        vectors = open_store(
            backend, {}, manifest["dimension"], name="restore", path=staging / VECTORS
        )
    except VectorStoreCorruptError as exc:  # a wrong dimension included
        raise refuse(f"its vector file is damaged ({exc.reason})") from exc
    except VectorStoreVersionError as exc:
        raise refuse(
            f"its vector file has format version {exc.found}, newer than this embedscope reads "
            f"({exc.supported}); upgrade embedscope"
        ) from exc
    except VectorStoreError as exc:
        raise refuse(f"its vector file cannot be read ({exc})") from exc
    vec_ids = vectors.ids()
    if not np.array_equal(sql_ids, vec_ids):
        raise refuse(
            f"its database ({sql_ids.size} chunks) and its vector file ({vec_ids.size} vectors) "
            "do not hold the same chunks"
        )


def _rename_unpacked(staging: Path, manifest: dict[str, Any], target: str) -> None:
    renamed = {**manifest, "name": target}
    with MetadataStore(staging / DATABASE, name=target) as store:
        store.set_manifest(renamed)
    write_manifest(staging, renamed)
