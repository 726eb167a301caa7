"""Index errors: each message says what is wrong, where, and the command that fixes it."""

from __future__ import annotations

from engine.errors import BadRequestError, ConflictError, EmbedscopeError, NotFoundError


class CorpusIndexError(EmbedscopeError):
    """Base class: an index cannot be opened or used as asked."""

    code = "index_error"
    status = 400


class IndexNameError(CorpusIndexError, BadRequestError):
    code = "bad_index_name"


class IndexNotFoundError(CorpusIndexError, NotFoundError):
    """Still a KeyError, as "not found" was before the error family."""

    code = "index_not_found"
    status = 404


class IndexExistsError(CorpusIndexError, ConflictError):
    code = "index_exists"
    status = 409


class IndexCorruptError(CorpusIndexError):
    code = "index_corrupt"
    status = 503


class IndexVersionError(CorpusIndexError):
    code = "index_version"
    status = 409


class IndexModelMismatchError(CorpusIndexError):
    code = "index_model_mismatch"
    status = 409


class IndexSourceError(CorpusIndexError):
    code = "index_source"


class IndexIncompleteError(CorpusIndexError, ConflictError):
    """SQLite holds what a shared vector store does not yet: a writer died mid-run."""

    code = "index_incomplete"
    status = 409


class IndexLockedError(CorpusIndexError, ConflictError):
    """Another process (or another task of this one) is writing the index."""

    code = "index_locked"
    status = 409

    def __init__(self, name: str, pid: int | None) -> None:
        self.name = name
        self.pid = pid
        holder = f"pid {pid}" if pid else "a process that is starting up"
        super().__init__(
            f"index '{name}' is being written by another process ({holder}); wait for it to "
            "finish, or pass --wait to wait for it"
        )
