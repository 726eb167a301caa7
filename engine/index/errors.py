"""Index errors: each message says what is wrong, where, and the command that fixes it."""

from __future__ import annotations


class CorpusIndexError(Exception):
    """Base class: an index cannot be opened or used as asked."""


class IndexNotFoundError(CorpusIndexError):
    pass


class IndexCorruptError(CorpusIndexError):
    pass


class IndexVersionError(CorpusIndexError):
    pass


class IndexModelMismatchError(CorpusIndexError):
    pass


class IndexSourceError(CorpusIndexError):
    pass


class IndexLockedError(CorpusIndexError):
    """Another process (or another task of this one) is writing the index."""

    def __init__(self, name: str, pid: int | None) -> None:
        self.name = name
        self.pid = pid
        holder = f"pid {pid}" if pid else "a process that is starting up"
        super().__init__(
            f"index '{name}' is being written by another process ({holder}); wait for it to "
            "finish, or pass --wait to wait for it"
        )
