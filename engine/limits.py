"""Bounds on every size a caller controls: results wanted, query text, filters, texts to embed.

They are checked in the engine, before anything is allocated, so the CLI, the app and any later
front end refuse an oversized request with the same message instead of exhausting memory.
The values come from the `limits` section of the config (see engine/defaults.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from engine.config import Config
from engine.errors import LimitError
from engine.store.filters import split_filter_text


class RequestLimitError(LimitError):
    """A request outside a limit. The message says what, the value, the limit and how to fix
    it; `what`, `got` and `limit` carry the same for a front end that maps errors itself.

    A ValueError too (through LimitError), so callers that treat bad input as such keep working.
    """


    def __init__(self, message: str, *, what: str, got: object, limit: int) -> None:
        super().__init__(message)
        self.what = what
        self.got = got
        self.limit = limit


@dataclass(frozen=True)
class RequestLimits:
    max_k: int
    max_query_chars: int
    max_filters: int
    max_filter_chars: int
    max_embed_texts: int
    max_text_chars: int

    @classmethod
    def from_config(cls, config: Config) -> RequestLimits:
        """The `limits` section, whose ranges load_config has already checked."""
        section = config.raw["limits"]
        return cls(**{f.name: int(section[f.name]) for f in fields(cls)})

    def check_k(self, k: Any, name: str = "k") -> int:
        """k as an int in [1, max_k]: nothing downstream is ever sized past that."""
        if isinstance(k, bool) or not isinstance(k, int):
            raise RequestLimitError(
                f"{name} must be a whole number of results, got {k!r}",
                what=name,
                got=k,
                limit=self.max_k,
            )
        if k < 1:
            raise RequestLimitError(
                f"{name} must be at least 1, got {k}; ask for 1 or more results",
                what=name,
                got=k,
                limit=self.max_k,
            )
        if k > self.max_k:
            raise RequestLimitError(
                f"{name} is {k}, but at most {self.max_k:,} results are returned per request; "
                "ask for fewer, or raise limits.max_k in the config file",
                what=name,
                got=k,
                limit=self.max_k,
            )
        return k

    def check_query(self, query: str, what: str = "the query") -> str:
        if len(query) > self.max_query_chars:
            raise RequestLimitError(
                f"{what} is {len(query):,} characters long, over the limit of "
                f"{self.max_query_chars:,}; shorten it (the model reads only its first few "
                "hundred words), or raise limits.max_query_chars in the config file",
                what=what,
                got=len(query),
                limit=self.max_query_chars,
            )
        return query

    def check_filters(self, filters: Sequence[str] | str | None) -> None:
        """Measured before parsing, so no filter text is ever too big to parse."""
        if not filters:
            return
        items = [filters] if isinstance(filters, str) else list(filters)
        chars = sum(len(item) for item in items if isinstance(item, str))
        if chars > self.max_filter_chars:
            raise RequestLimitError(
                f"the filters are {chars:,} characters long, over the limit of "
                f"{self.max_filter_chars:,}; use fewer or shorter ones (a range key=lo..hi "
                "instead of a long list), or raise limits.max_filter_chars in the config file",
                what="filters",
                got=chars,
                limit=self.max_filter_chars,
            )
        count = len(split_filter_text(filters)) if isinstance(filters, str) else len(items)
        if count > self.max_filters:
            raise RequestLimitError(
                f"{count} filters were given, over the limit of {self.max_filters}; combine "
                "them (key=a,b matches any of a list), or raise limits.max_filters in the "
                "config file",
                what="filters",
                got=count,
                limit=self.max_filters,
            )

    def check_texts(self, texts: Sequence[Any]) -> None:
        """One embedding request: how many texts and how long each, before any is tokenised."""
        if len(texts) > self.max_embed_texts:
            raise RequestLimitError(
                f"{len(texts):,} texts were given, over the limit of {self.max_embed_texts:,} "
                "per request; send them in smaller requests, or raise limits.max_embed_texts "
                "in the config file",
                what="texts",
                got=len(texts),
                limit=self.max_embed_texts,
            )
        for i, text in enumerate(texts):
            if isinstance(text, str) and len(text) > self.max_text_chars:
                raise RequestLimitError(
                    f"texts[{i}] is {len(text):,} characters long, over the limit of "
                    f"{self.max_text_chars:,}; split it (the model reads only its first few "
                    "hundred words), or raise limits.max_text_chars in the config file",
                    what=f"texts[{i}]",
                    got=len(text),
                    limit=self.max_text_chars,
                )
