"""Crash-safe file writes: a reader sees the old file or the new one, never a torn mix.

Temp files are named per process and per call, so two processes (or threads) writing the same
file never rename each other's half-written temp file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_files(folder: Path) -> list[Path]:
    """Temp files `atomic_write` left in `folder` when its process died mid-write."""
    return [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()]


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Write through a unique temp file in the same folder, fsync, `os.replace`, fsync the
    folder; on any error the temp file goes and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as fh:
        fh.write(data)
