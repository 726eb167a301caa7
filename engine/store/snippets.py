"""Snippets: the stretch of a hit's text that best shows the query, with its words marked.

A search answers each hit with one, so this runs ten times per query on the query path. What a
text word matches depends only on the word and the query, so that is decided once per distinct
word and query (`QueryTerms`) and shared by the hits of a search: at 4,000 SciFact chunks it was
~70% of fetching ten hits (2.3 of 3.3 ms) when every snippet matched its words afresh.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

TOKEN_RE = re.compile(r"[^\W_]+")
_SPACE_RE = re.compile(r"\s+")
# Ignored when picking and marking snippet words (unless the query has nothing else).
_STOPWORD_TEXT = (
    "a an and are as at be but by can do does for from had has have how i if in into is it its "
    "no not of on or so such than that the their there these they this to was were what when "
    "where which who why will with"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# Words remembered per query: ten hits hold a few hundred distinct words. Past this a query
# keeps matching, uncached, so a server's clients cannot grow the memos past ~64 x 4,096 words.
_MEMO_WORDS = 4096
_MAX_SPANS = 300


def _fold(text: str) -> str:
    if text.isascii():  # most words: nothing to decompose, and casefold is lower (3x faster)
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _term_index(word: str, terms: tuple[str, ...]) -> int | None:
    """Which query term a text word matches: same word, word extends the term, or the term
    is a short inflection of the word ("flows" marks "flow"), like the stemmed FTS match."""
    for i, term in enumerate(terms):
        if word == term:
            return i
        if len(term) >= 3 and word.startswith(term):
            return i
        if len(word) >= 4 and term.startswith(word) and len(term) - len(word) <= 3:
            return i
    return None


class QueryTerms:
    """A query's snippet terms, and which term each text word seen so far matches.

    The memo is shared by threads searching the same query at once: each entry is computed
    from the word alone, so a race only computes one twice.
    """

    __slots__ = ("_firsts", "_memo", "terms")

    def __init__(self, query: str) -> None:
        terms = list(dict.fromkeys(_fold(t) for t in TOKEN_RE.findall(query)))
        self.terms = tuple(t for t in terms if t not in _STOPWORDS) or tuple(terms)
        # Every way a word can match a term starts with the term's first letter.
        self._firsts = frozenset(t[0] for t in self.terms)
        self._memo: dict[str, int | None] = {}

    def term_of(self, word: str) -> int | None:
        memo = self._memo
        if word in memo:
            return memo[word]
        if word[0].isascii() and word[0].lower() not in self._firsts:
            found = None
        else:
            found = _term_index(_fold(word), self.terms)
        if len(memo) < _MEMO_WORDS:
            memo[word] = found
        return found

    def matches(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, term) of every word of `text` that matches a term."""
        if not self.terms:
            return []
        memo, term_of = self._memo, self.term_of
        found = []
        for m in TOKEN_RE.finditer(text):
            word = m.group()
            idx = memo[word] if word in memo else term_of(word)
            if idx is not None:
                found.append((m.start(), m.end(), idx))
        return found


@lru_cache(maxsize=64)
def query_terms(query: str) -> QueryTerms:
    """One `QueryTerms` per recent query, so the hits of one search (and a repeated search)
    share what their words matched."""
    return QueryTerms(query)


def _window(text: str, matches: list[tuple[int, int, int]], width: int) -> tuple[int, int]:
    """The [start, end) window of at most ``width`` chars covering the most distinct terms,
    never cutting through a word at its edges (unless one word is wider than the window)."""
    first = last = 0
    if matches:
        best: tuple[int, int] = (-1, -1)
        capped = matches[:_MAX_SPANS]
        for i, (s, e, _) in enumerate(capped):
            inside = [m for m in capped[i:] if m[1] <= s + width] or [(s, e, 0)]
            score = (len({m[2] for m in inside}), len(inside))
            if score > best:
                best, first, last = score, s, inside[-1][1]
    # Centre the matched stretch a little left of the middle: context reads forward.
    slack = max(0, width - (last - first))
    end = min(len(text), max(0, first - slack // 3) + width)
    start = max(0, end - width)
    if start > 0 and not text[start - 1].isspace():
        gap = _SPACE_RE.search(text, start, max(start, first))
        start = gap.end() if gap else start
    if end < len(text) and not text[end].isspace():
        gaps = list(_SPACE_RE.finditer(text, max(start, last), end))
        end = gaps[-1].start() if gaps and gaps[-1].start() > start else end
    return start, end


def snippet(text: str, query: str, width: int = 160) -> tuple[str, list[tuple[int, int]]]:
    """A window of at most ``width`` characters of `text` around the best match (whitespace
    collapsed, "…" marking cuts) and the (start, end) spans of matched query words in it.

    Works for vector hits without any keyword match: the leading text and no spans.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    terms = query_terms(query)
    start, end = _window(text, terms.matches(text), width)
    body = " ".join(text[start:end].split())
    if start > 0 and text[:start].strip():
        body = "…" + body
    if end < len(text) and text[end:].strip():
        body += "…"
    return body, [(s, e) for s, e, _ in terms.matches(body)]
