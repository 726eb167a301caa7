"""One error family for the engine and every front end that uses it.

Each error carries a stable `code` (clients branch on it, never on the wording), the HTTP
`status` a server answers with, and a message that says what is wrong and how to fix it. The
CLI turns any of them into one line and exit code 2, the app into a notice, the server into a
JSON body, each in one place. Errors that replace a built-in (`KeyError` for "not found",
`ValueError` for bad input) still subclass it, so callers written before the family keep working.
"""

from __future__ import annotations


class EmbedscopeError(Exception):
    """Base of the family; `retry_after` (seconds) is set when waiting is the fix."""

    code = "error"
    status = 500

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after

    def __str__(self) -> str:
        # KeyError would quote its message; one clear line is the point of the family.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    @property
    def message(self) -> str:
        return str(self)


class BadRequestError(EmbedscopeError, ValueError):
    """The request itself is malformed (an empty query, a bad name)."""

    code = "bad_request"
    status = 400


class BadFilterError(BadRequestError):
    """A metadata filter that cannot be parsed."""

    code = "bad_filter"


class NotFoundError(EmbedscopeError, KeyError):
    """What was named does not exist (an index, a document, a chunk, a model)."""

    code = "not_found"
    status = 404


class ConflictError(EmbedscopeError):
    """The request clashes with the current state (a name taken, a writer already busy)."""

    code = "conflict"
    status = 409


class LimitError(EmbedscopeError, ValueError):
    """A size the caller controls is over a configured limit; the message names the key."""

    code = "request_limit"
    status = 422


class TooLargeError(EmbedscopeError):
    """A request body over the server's byte limit."""

    code = "body_too_large"
    status = 413


class UnauthorizedError(EmbedscopeError):
    code = "unauthorized"
    status = 401


class ForbiddenError(EmbedscopeError):
    code = "forbidden"
    status = 403


class RateLimitedError(EmbedscopeError):
    code = "rate_limited"
    status = 429


class UnavailableError(EmbedscopeError):
    """Something the request needs cannot serve now (a model, a damaged index)."""

    code = "unavailable"
    status = 503


class OverloadedError(UnavailableError, RuntimeError):
    """The embedding queue is full: retry shortly, or raise embedding.max_queue."""

    code = "overloaded"

    def __init__(self, *args: object, retry_after: float | None = 1.0) -> None:
        super().__init__(*args, retry_after=retry_after)


class ModelUnavailableError(UnavailableError, RuntimeError):
    """A model cannot be found, verified, loaded or reached."""

    code = "model_unavailable"


class DocumentNotFoundError(NotFoundError):
    """No document (or chunk) by that key or id in the index."""

    code = "document_not_found"


class ModelNotFoundError(NotFoundError):
    """No model by that name is declared in the config."""

    code = "model_not_found"
