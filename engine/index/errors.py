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
