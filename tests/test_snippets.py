"""Snippet matching remembers, per query, what each text word matched; it must never change
what is marked, however many hits, threads or distinct words share one query."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from engine.store import snippets
from engine.store.snippets import QueryTerms, query_terms, snippet

ALPHABET = "aaabcdeeefhilmnoorsstuw\u00e9\u00fc"


def _words(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 9)))
        out.append(word.upper() if rng.random() < 0.1 else word)
    return out


def test_remembered_matches_equal_fresh_ones_across_many_texts() -> None:
    rng = random.Random(7)
    query = " ".join(_words(rng, 6))
    shared = QueryTerms(query)
    for _ in range(200):
        text = " ".join(_words(rng, rng.randint(0, 80)))
        assert shared.matches(text) == QueryTerms(query).matches(text)


def test_the_memo_stops_growing_and_matching_goes_on() -> None:
    rng = random.Random(11)
    query = "heat flows cafe"
    distinct = {f"{w}{i}" for i, w in enumerate(_words(rng, snippets._MEMO_WORDS + 5000))}
    text = " ".join(["heating", *sorted(distinct), "caf\u00e9s", "flow"])
    terms = QueryTerms(query)
    first = terms.matches(text)
    assert len(terms._memo) == snippets._MEMO_WORDS
    assert first == terms.matches(text)
    marked = {text[s:e] for s, e, _ in first}
    assert {"heating", "caf\u00e9s", "flow"} <= marked


def test_threads_sharing_one_query_mark_the_same_words() -> None:
    rng = random.Random(3)
    query = " ".join(_words(rng, 4))
    texts = [" ".join(_words(rng, 120)) for _ in range(64)]
    expected = [snippet(t, query + " ", width=80) for t in texts]  # another query's memo
    query_terms.cache_clear()
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda t: snippet(t, query, width=80), texts))
    assert got == expected
