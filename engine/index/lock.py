"""One writer per index across processes: an `flock` on `<index folder>/writer.lock`.

The kernel drops an flock when its holder exits, however it exits (even SIGKILL), so a lock left
by a dead process is free again at once and never needs clearing by hand. The holder writes its
pid into the file so that a refused writer can say who holds it. Readers take no lock: they
never write.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from engine.index.errors import CorpusIndexError, IndexLockedError, IndexNotFoundError

LOCK_FILE = "writer.lock"
WAIT_POLL_S = 0.2
_PID_WIDTH = 20


class WriterLock:
    """Exclusive per open file, so two holders in one process exclude each other too."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / LOCK_FILE
        self.name = name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> int | None:
        """Take the lock if it is free: None when taken, else the holder's pid (0: unknown)."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                raise IndexNotFoundError(
                    f"index '{self.name}' is gone: {self.path.parent} was removed"
                ) from None
            except OSError as exc:
                raise CorpusIndexError(
                    f"cannot lock index '{self.name}' for writing: {self.path}: "
                    f"{exc.strerror or exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                return holder
            if _same_file(self.path, fd):
                os.pwrite(fd, f"{os.getpid():<{_PID_WIDTH}}\n".encode(), 0)
                self._fd = fd
                return None
            # rm-index or restore replaced the folder between open and flock: lock the new one.
            os.close(fd)

    async def acquire(self, wait: bool = False) -> None:
        """Fail at once naming the holder, or with `wait` poll until it is free."""
        while True:
            holder = self.try_acquire()
            if holder is None:
                return
            if not wait:
                raise IndexLockedError(self.name, holder)
            await asyncio.sleep(WAIT_POLL_S)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    @asynccontextmanager
    async def holding(self, wait: bool = False) -> AsyncIterator[WriterLock]:
        await self.acquire(wait)
        try:
            yield self
        finally:
            self.release()


def _read_pid(fd: int) -> int:
    raw = os.pread(fd, _PID_WIDTH + 1, 0).strip()
    return int(raw) if raw.isdigit() else 0


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
