"""Token-aware chunking: split a document into pieces the embedding model sees whole.

The document is tokenized once; every decision works on token offsets, so cost is linear in the
document length. Each token position gets a break quality (paragraph > sentence/line > word >
inside a word) and each chunk ends at the best break that keeps it within `max_tokens`.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Encoding, Tokenizer

_PARAGRAPH = 3
_SENTENCE = 2
_WORD = 1

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n\s*")
_SENTENCE_BREAK = re.compile(r"[.!?][\"'”’)\]]*\s+|[。！？]\s*|\n\s*")
_MAX_REFITS = 8
_WORD_STABLE_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})


@dataclass(frozen=True, slots=True)
class Chunk:
    """`text == source[start:end]`, so a hit can be highlighted in the original document."""

    ordinal: int
    text: str
    start: int
    end: int
    n_tokens: int


class Chunker:
    """Split texts into chunks of at most `max_tokens` tokens (special tokens not counted)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int = 254,
        overlap_tokens: int = 32,
        *,
        model_window: int | None = None,
    ) -> None:
        if max_tokens < 8:
            raise ValueError(f"chunk max_tokens must be at least 8, got {max_tokens}")
        if model_window is not None and max_tokens > model_window - 2:
            raise ValueError(
                f"chunk max_tokens {max_tokens} does not fit the model window of {model_window} "
                f"tokens (at most {model_window - 2}, leaving room for 2 special tokens)"
            )
        if not 0 <= overlap_tokens <= max_tokens // 2:
            raise ValueError(
                f"chunk overlap_tokens must be between 0 and half of max_tokens "
                f"({max_tokens // 2}), got {overlap_tokens}"
            )
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # Slicing at word breaks re-tokenizes to the same tokens with these pre-tokenizers, so
        # chunk token counts come from the one encoding instead of re-encoding every chunk.
        pre_tokenizer = type(self._tokenizer.pre_tokenizer).__name__
        self._stable = pre_tokenizer in _WORD_STABLE_PRE_TOKENIZERS
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, max_tokens: int | None = None, overlap_tokens: int = 32
    ) -> Chunker:
        """Build from a sentence-transformers folder; `max_tokens` defaults to the window - 2."""
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(
                f"{model_dir} has no tokenizer.json; chunking needs a fast (Rust) tokenizer file"
            )
        window = _model_window(model_dir)
        if max_tokens is None:
            max_tokens = (window or 256) - 2
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        return cls(tokenizer, max_tokens, overlap_tokens, model_window=window)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def head(self, text: str, max_tokens: int) -> tuple[str, int]:
        """`text` cut after its first `max_tokens` tokens, and its token count."""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= max_tokens:
            return text, len(offsets)
        if max_tokens < 1:
            return "", 0
        return text[: offsets[max_tokens - 1][1]].rstrip(), max_tokens

    def chunk(self, text: str) -> list[Chunk]:
        return self._chunk_encoded(text, self._tokenizer.encode(text, add_special_tokens=False))

    def chunk_many(
        self, texts: Sequence[str], reserve: Sequence[int] | None = None
    ) -> list[list[Chunk]]:
        """Like `chunk` for each text, tokenizing them in one parallel batch (for indexing).

        `reserve[i]` tokens of every chunk of text i are left free (a title embedded in front of
        each chunk), at most half of `max_tokens`."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        budgets = [
            self.max_tokens - min(max(r, 0), self.max_tokens // 2)
            for r in (reserve if reserve is not None else [0] * len(texts))
        ]
        return [
            self._chunk_encoded(text, encoding, budget)
            for text, encoding, budget in zip(texts, encodings, budgets, strict=True)
        ]

    def _chunk_encoded(
        self, text: str, encoding: Encoding, budget: int | None = None
    ) -> list[Chunk]:
        budget = budget or self.max_tokens
        spans = _spans(text, 0, encoding, budget, self.overlap_tokens, self._stable)
        unsure = [i for i, (_, _, n) in enumerate(spans) if n is None]
        counts = self._counts([text[spans[i][0] : spans[i][1]] for i in unsure])
        fitted: list[tuple[int, int, int]] = []
        checked = dict(zip(unsure, counts, strict=True))
        for i, (start, end, known) in enumerate(spans):
            n_tokens = checked[i] if known is None else known
            if n_tokens <= budget:
                fitted.append((start, end, n_tokens))
            else:
                fitted.extend(self._refit(text, start, end, n_tokens, budget))
        return [
            Chunk(ordinal=i, text=text[s:e], start=s, end=e, n_tokens=n)
            for i, (s, e, n) in enumerate(fitted)
        ]

    def _counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(enc.ids) for enc in encodings]

    def _refit(
        self, text: str, start: int, end: int, n_tokens: int, limit: int
    ) -> list[tuple[int, int, int]]:
        """Rare path: a cut inside a word re-tokenized longer than its slice; split it tighter."""
        encoding = self._tokenizer.encode(text[start:end], add_special_tokens=False)
        budget = limit
        for _ in range(_MAX_REFITS):
            budget = max(1, budget - (n_tokens - limit) - 1)
            spans = _spans(text[:end], start, encoding, budget, self.overlap_tokens, False)
            counts = self._counts([text[s:e] for s, e, _ in spans])
            if max(counts) <= limit:
                return [(s, e, n) for (s, e, _), n in zip(spans, counts, strict=True)]
            n_tokens = max(counts)
        raise ValueError(
            f"cannot split text at characters {start}-{end} into pieces of at most "
            f"{limit} tokens with this tokenizer"
        )


def _spans(
    text: str, lo: int, encoding: Encoding, budget: int, overlap_tokens: int, stable: bool
) -> list[tuple[int, int, int | None]]:
    """Chunk spans of text[lo:] as encoded: (start, end, tokens), tokens None when the slice
    must be re-encoded to know its count (a cut inside a word, or an unknown pre-tokenizer)."""
    offsets = encoding.offsets
    n = len(offsets)
    piece = text[lo:]
    if n == 0:
        stripped = piece.strip()
        if not stripped:
            return []
        first = lo + piece.index(stripped[0])
        return [(first, first + len(stripped), 0)]
    quality = _break_quality(piece, offsets, encoding.word_ids)
    overlap = min(overlap_tokens, budget // 2)
    spans: list[tuple[int, int, int | None]] = []
    start = end = 0
    while True:
        if n - start <= budget:
            end = n
        else:
            end = _best_end(quality, start, start + budget, max(start, end))
        clean = stable and (start == 0 or quality[start]) and (end == n or quality[end])
        spans.append(
            (lo + offsets[start][0], lo + offsets[end - 1][1], end - start if clean else None)
        )
        if end == n:
            return spans
        start = _next_start(quality, start, end, overlap)


def _model_window(model_dir: Path) -> int | None:
    config = model_dir / "sentence_bert_config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config}: cannot read max_seq_length ({exc})") from None
    return value if isinstance(value, int) and value > 2 else None


def _break_quality(
    text: str, offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None]
) -> bytearray:
    """quality[p] rates a cut just before token p (p in 1..n-1)."""
    n = len(offsets)
    quality = bytearray(n + 1)
    use_words = all(w is not None for w in word_ids)
    for p in range(1, n):
        if use_words:
            if word_ids[p] != word_ids[p - 1]:
                quality[p] = _WORD
        elif offsets[p][0] > offsets[p - 1][1]:
            quality[p] = _WORD
    starts = [s for s, _ in offsets]
    for pattern, level in ((_SENTENCE_BREAK, _SENTENCE), (_PARAGRAPH_BREAK, _PARAGRAPH)):
        for match in pattern.finditer(text):
            p = bisect_left(starts, match.end())
            if 0 < p < n:
                quality[p] = max(quality[p], level)
    return quality


def _best_end(quality: bytearray, start: int, hard_end: int, floor: int) -> int:
    """Best cut in (floor, hard_end]: a paragraph, then a sentence break if the chunk stays at
    least half full, else the last word break, else hard_end itself."""
    min_end = max(floor + 1, start + max(1, (hard_end - start) // 2))
    last_sentence = 0
    last_word = 0
    for p in range(hard_end, floor, -1):
        level = quality[p]
        if p >= min_end:
            if level == _PARAGRAPH:
                return p
            if level == _SENTENCE and not last_sentence:
                last_sentence = p
        elif last_sentence or last_word:
            break
        if level >= _WORD and not last_word:
            last_word = p
    return last_sentence or last_word or hard_end


def _next_start(quality: bytearray, start: int, end: int, overlap: int) -> int:
    """Start of the next chunk: whole trailing sentences within `overlap` tokens if any fit,
    else the word break that gives about `overlap` tokens."""
    if overlap <= 0:
        return end
    lo = max(start + 1, end - overlap)
    word = 0
    for p in range(lo, end):
        if quality[p] >= _SENTENCE:
            return p
        if quality[p] >= _WORD and not word:
            word = p
    return word or lo


def page_for_offset(pages: Sequence[tuple[int, int]] | None, offset: int) -> int | None:
    """Page number holding character `offset` of a PDF's text (pages: (number, start) sorted)."""
    if not pages:
        return None
    index = bisect_right([start for _, start in pages], offset) - 1
    return pages[index][0] if index >= 0 else None
