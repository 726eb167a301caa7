"""Chunker invariants with the real MiniLM tokenizer on real SciFact abstracts and crafted text."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import DATASETS
from tokenizers import Tokenizer

from engine.documents import Chunk, Chunker, page_for_offset


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def scifact_texts() -> list[str]:
    with (DATASETS / "scifact" / "corpus.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line, _ in zip(handle, range(200), strict=False)]


def count(tokenizer: Tokenizer, text: str) -> int:
    """Reference count, independent of the chunker's copy (which has truncation disabled)."""
    return len(_reference(tokenizer).encode(text, add_special_tokens=False).ids)


_REFERENCES: dict[int, Tokenizer] = {}


def _reference(tokenizer: Tokenizer) -> Tokenizer:
    if id(tokenizer) not in _REFERENCES:
        copy = Tokenizer.from_str(tokenizer.to_str())
        copy.no_truncation()
        copy.no_padding()
        _REFERENCES[id(tokenizer)] = copy
    return _REFERENCES[id(tokenizer)]


def check_invariants(source: str, chunks: list[Chunk], chunker: Chunker, tok: Tokenizer) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == source[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()
        assert 0 < chunk.n_tokens <= chunker.max_tokens
        assert chunk.n_tokens == count(tok, chunk.text)
    for before, after in pairwise(chunks):
        assert before.start < after.start < before.end < after.end or (
            chunker.overlap_tokens == 0 and before.end <= after.start
        )
        assert not source[before.end : after.start].strip()
    assert source[: chunks[0].start].strip() == ""
    assert source[chunks[-1].end :].strip() == ""


def test_scifact_abstracts_invariants(tokenizer: Tokenizer, scifact_texts: list[str]) -> None:
    chunker = Chunker(tokenizer, max_tokens=64, overlap_tokens=16)
    multi = 0
    overlaps: list[int] = []
    for text in scifact_texts:
        chunks = chunker.chunk(text)
        check_invariants(text, chunks, chunker, tokenizer)
        if len(chunks) > 1:
            multi += 1
            for before, after in pairwise(chunks):
                overlaps.append(count(tokenizer, text[after.start : before.end]))
    assert multi > 150
    assert max(overlaps) <= 16 + 2
    assert sum(overlaps) / len(overlaps) >= 5
    assert chunker.chunk_many(scifact_texts[:40]) == [chunker.chunk(t) for t in scifact_texts[:40]]


def test_short_and_empty_documents(tokenizer: Tokenizer) -> None:
    chunker = Chunker(tokenizer, max_tokens=128, overlap_tokens=16)
    source = "\n  A short note. Two sentences!  \n"
    chunks = chunker.chunk(source)
    assert len(chunks) == 1
    assert chunks[0].text == "A short note. Two sentences!"
    assert chunks[0].n_tokens == count(tokenizer, chunks[0].text)
    assert chunker.chunk("") == [] and chunker.chunk(" \n\t ") == []


def test_prefers_paragraph_boundaries(tokenizer: Tokenizer) -> None:
    paragraphs = [
        " ".join(f"Paragraph {p} sentence {s} talks about topic {p}." for s in range(3))
        for p in range(8)
    ]
    source = "\n\n".join(paragraphs)
    per_paragraph = count(tokenizer, paragraphs[0])
    chunker = Chunker(tokenizer, max_tokens=per_paragraph * 2 + 10, overlap_tokens=0)
    chunks = chunker.chunk(source)
    check_invariants(source, chunks, chunker, tokenizer)
    assert len(chunks) == 4
    for chunk in chunks:
        assert source[chunk.end : chunk.end + 2] in ("\n\n", "")
        assert chunk.start == 0 or source[chunk.start - 2 : chunk.start] == "\n\n"


def test_prefers_sentence_boundaries_and_whole_sentence_overlap(tokenizer: Tokenizer) -> None:
    sentences = [f"Sentence number {i} is short." for i in range(60)]
    source = " ".join(sentences)
    chunker = Chunker(tokenizer, max_tokens=50, overlap_tokens=20)
    chunks = chunker.chunk(source)
    check_invariants(source, chunks, chunker, tokenizer)
    assert len(chunks) > 5
    pattern = re.compile(r"^(Sentence number \d+ is short\.\s*)+$")
    for chunk in chunks:
        assert pattern.match(chunk.text), chunk.text
    for before, after in pairwise(chunks):
        shared = source[after.start : before.end]
        assert pattern.match(shared)
        assert 8 <= count(tokenizer, shared) <= 20


def test_long_single_sentence_splits_at_words(tokenizer: Tokenizer) -> None:
    words = [f"word{i % 37}" for i in range(3000)]
    source = " ".join(words)
    chunker = Chunker(tokenizer, max_tokens=100, overlap_tokens=10)
    chunks = chunker.chunk(source)
    check_invariants(source, chunks, chunker, tokenizer)
    assert len(chunks) > 30
    for chunk in chunks:
        assert chunk.start == 0 or source[chunk.start - 1] == " "
        assert chunk.end == len(source) or source[chunk.end] == " "
    assert min(c.n_tokens for c in chunks[:-1]) >= 90


def test_overlong_word_is_cut_inside_and_recounted(tokenizer: Tokenizer) -> None:
    word = "".join(f"q{i}z" for i in range(24))
    source = f"Intro here. {word} and a tail sentence."
    chunker = Chunker(tokenizer, max_tokens=8, overlap_tokens=2)
    chunks = chunker.chunk(source)
    check_invariants(source, chunks, chunker, tokenizer)
    word_start = source.index(word)
    word_end = word_start + len(word)
    inside = [c for c in chunks if word_start < c.start < word_end or word_start < c.end < word_end]
    assert len(inside) >= 5
    assert chunks[-1].text.endswith("a tail sentence.")


def test_unicode_text(tokenizer: Tokenizer) -> None:
    block = (
        "Größe und Übermaß — straße. 東京は日本の首都です。大阪も大きい。 Emoji 🎉 party! "
        "Ελληνικά κείμενα εδώ. Кириллица тоже работает?\n\n"
    )
    source = block * 25
    chunker = Chunker(tokenizer, max_tokens=48, overlap_tokens=12)
    chunks = chunker.chunk(source)
    check_invariants(source, chunks, chunker, tokenizer)
    assert len(chunks) > 10
    ends = {source[c.end - 1] for c in chunks[:-1]}
    assert ends <= {".", "。", "!", "?"}


def test_configuration_errors_and_tokenizer_copy(tokenizer: Tokenizer, minilm_dir: Path) -> None:
    with pytest.raises(ValueError, match="overlap_tokens must be between 0 and half"):
        Chunker(tokenizer, max_tokens=64, overlap_tokens=40)
    with pytest.raises(ValueError, match="at least 8"):
        Chunker(tokenizer, max_tokens=4, overlap_tokens=0)
    with pytest.raises(ValueError, match="does not fit the model window of 256 tokens"):
        Chunker.from_model_dir(minilm_dir, max_tokens=300)
    default = Chunker.from_model_dir(minilm_dir)
    assert default.max_tokens == 254
    with pytest.raises(ValueError, match=r"has no tokenizer\.json"):
        Chunker.from_model_dir(minilm_dir / "1_Pooling")
    before = tokenizer.truncation
    long_text = "word " * 400
    chunks = Chunker(tokenizer, max_tokens=200, overlap_tokens=0).chunk(long_text)
    assert [c.n_tokens for c in chunks] == [200, 200]
    assert tokenizer.truncation == before


def test_page_for_offset() -> None:
    pages = [(1, 0), (2, 120), (4, 300)]
    assert [page_for_offset(pages, o) for o in (0, 119, 120, 299, 300, 10_000)] == [
        1, 1, 2, 2, 4, 4,
    ]  # fmt: skip
    assert page_for_offset([(3, 10)], 5) is None
    assert page_for_offset([], 0) is None
