"""A full, read-only or forbidden disk, told apart from damage and named in words.

SQLite reports all three as "disk I/O error", "unable to open database file" or "database or
disk is full", and a clean-up error raised while unwinding can hide the first one, so the whole
chain is read and, where it is vague, the file system itself is asked.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

FULL = "the disk is full"
READ_ONLY = "the file system is read-only"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# SQLite's primary codes for "could not write or open", whatever the reason.
_VAGUE_SQLITE = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY}
_VAGUE_ERRNOS = {errno.EIO, errno.EACCES, errno.EPERM}


def unwritable_reason(path: Path) -> str | None:
    """Why nothing can be written at `path` (or its nearest existing parent), or None."""
    probe = next((p for p in (path, *path.parents) if p.exists()), None)
    if probe is None:
        return None
    try:
        fs = os.statvfs(probe)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return READ_ONLY
    if fs.f_bavail == 0:
        return FULL
    if not os.access(probe, os.W_OK):
        return f"no permission to write in {probe}"
    return None


def disk_problem(exc: BaseException, path: Path) -> str | None:
    """The disk problem behind `exc` (anywhere in its chain) for files under `path`, or None
    when the error is something else, such as real corruption."""
    vague = False
    seen: BaseException | None = exc
    visited: set[int] = set()  # a client library's chain can loop back on itself
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        err = seen.errno if isinstance(seen, OSError) else None
        code = getattr(seen, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if err in _FULL_ERRNOS or primary == sqlite3.SQLITE_FULL:
            return FULL
        if err == errno.EROFS:
            return READ_ONLY
        vague = vague or err in _VAGUE_ERRNOS or primary in _VAGUE_SQLITE
        seen = seen.__cause__ or seen.__context__
    return unwritable_reason(path) if vague else None
