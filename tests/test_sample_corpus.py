"""Guards the demo corpus: the app's demos, filters and evaluation screens all rely on its shape."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from bs4 import BeautifulSoup
from pypdf import PdfReader
from reference_eval import embed, ndcg_at_10

CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus"
EVAL = CORPUS / "eval"
TYPES = {".md", ".txt", ".rst", ".html", ".pdf", ".jsonl", ".csv"}
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.S)
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def _corpus_files(suffix: str = "") -> list[Path]:
    """Files the app would index (everything except eval/ and dotfiles), optionally one type."""
    return sorted(
        p
        for p in CORPUS.rglob(f"*{suffix}")
        if p.is_file() and not p.name.startswith(".") and not p.is_relative_to(EVAL)
    )


def _split_front_matter(path: Path) -> tuple[dict[str, object], str]:
    match = FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    assert match, f"{path.relative_to(CORPUS)}: no '---' fenced YAML front matter at the top"
    meta = yaml.safe_load(match.group(1))
    assert isinstance(meta, dict), f"{path.relative_to(CORPUS)}: front matter is not a mapping"
    return meta, match.group(2)


def _html_text(path: Path) -> str:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    for tag in soup(["script", "style", "nav", "footer", "aside", "head"]):
        tag.decompose()
    return soup.get_text(" ")


def _extract(path: Path) -> dict[str, str]:
    """Map corpus-id to plain text for one file (one entry per row for .jsonl/.csv)."""
    rel = path.relative_to(CORPUS).as_posix()
    suffix = path.suffix
    if suffix == ".md":
        return {rel: _split_front_matter(path)[1]}
    if suffix in {".txt", ".rst"}:
        return {rel: path.read_text(encoding="utf-8")}
    if suffix == ".html":
        return {rel: _html_text(path)}
    if suffix == ".pdf":
        return {rel: "\n".join(page.extract_text() for page in PdfReader(path).pages)}
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return {f"{rel}#{row['_id']}": row["text"] for row in rows}
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return {f"{rel}#{row['id']}": row["text"] for row in csv.DictReader(fh)}
    raise AssertionError(f"{rel}: unsupported file type {suffix!r} in the sample corpus")


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    docs: dict[str, str] = {}
    for path in _corpus_files():
        for doc_id, text in _extract(path).items():
            assert doc_id not in docs, f"duplicate corpus-id {doc_id}"
            docs[doc_id] = text
    return docs


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    rows = [json.loads(line) for line in (EVAL / "queries.jsonl").read_text().splitlines()]
    ids = [row["_id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate query ids in eval/queries.jsonl"
    return {row["_id"]: row["text"] for row in rows}


@pytest.fixture(scope="module")
def qrels() -> list[tuple[str, str, int]]:
    lines = (EVAL / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    out = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        assert len(fields) == 3, f"qrels line {n}: expected 3 tab-separated fields: {line!r}"
        out.append((fields[0], fields[1], int(fields[2])))
    return out


def test_document_count_in_range(documents: dict[str, str]) -> None:
    assert 150 <= len(documents) <= 300


def test_every_file_type_present_and_nothing_else() -> None:
    suffixes = Counter(p.suffix for p in _corpus_files())
    assert set(suffixes) == TYPES
    assert suffixes[".pdf"] >= 1


def test_markdown_is_the_majority(documents: dict[str, str]) -> None:
    markdown = [d for d in documents if d.endswith(".md")]
    assert len(markdown) > len(documents) / 2


def test_every_document_has_80_to_400_words(documents: dict[str, str]) -> None:
    counts = {doc_id: len(WORD.findall(text)) for doc_id, text in documents.items()}
    bad = {doc_id: n for doc_id, n in counts.items() if not 80 <= n <= 400}
    assert not bad


def test_markdown_front_matter() -> None:
    authors: set[str] = set()
    years: set[int] = set()
    for path in _corpus_files(".md"):
        rel = path.relative_to(CORPUS).as_posix()
        meta, body = _split_front_matter(path)
        missing = {"title", "category", "author", "date"} - set(meta)
        assert not missing, f"{rel}: front matter lacks {sorted(missing)}"
        assert isinstance(meta["title"], str) and meta["title"].strip(), rel
        assert meta["category"] == rel.split("/")[0], f"{rel}: category differs from its folder"
        assert isinstance(meta["author"], str) and meta["author"].strip(), rel
        date = meta["date"]
        if isinstance(date, str):
            date = dt.date.fromisoformat(date)
        assert isinstance(date, dt.date), f"{rel}: date must be YYYY-MM-DD, got {date!r}"
        assert dt.date(2019, 1, 1) <= date <= dt.date(2026, 12, 31), rel
        if "tags" in meta:
            tags = meta["tags"]
            assert isinstance(tags, list) and all(isinstance(t, str) and t for t in tags), rel
        assert body.strip(), f"{rel}: empty body"
        authors.add(meta["author"])
        years.add(date.year)
    assert len(authors) >= 3
    assert len(years) >= 6


def test_topics_are_distinct_folders(documents: dict[str, str]) -> None:
    per_topic = Counter(d.split("/")[0] for d in documents if not d.startswith("misc/"))
    assert len(per_topic) >= 6
    assert min(per_topic.values()) >= 10


def test_pdf_text_extracts_on_every_page() -> None:
    pdfs = _corpus_files(".pdf")
    assert pdfs
    for path in pdfs:
        reader = PdfReader(path)
        assert len(reader.pages) >= 2, f"{path.name}: expected a multi-page PDF"
        for number, page in enumerate(reader.pages, start=1):
            words = WORD.findall(page.extract_text())
            assert len(words) >= 40, f"{path.name} page {number}: only {len(words)} words"
        assert reader.metadata is not None and reader.metadata.title


def test_html_has_title_and_noise_to_drop() -> None:
    for path in _corpus_files(".html"):
        soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        assert soup.title is not None and soup.title.get_text(strip=True), path.name
        assert soup.find("script") and soup.find("style") and soup.find("nav"), path.name
        assert "dataLayer" not in _html_text(path), path.name


def test_row_files_have_required_fields() -> None:
    for path in _corpus_files(".jsonl"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            row = json.loads(line)
            assert {"_id", "title", "text"} < set(row), f"{path.name}:{n}: {sorted(row)}"
    for path in _corpus_files(".csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            assert reader.fieldnames == ["id", "title", "text", "category"], path.name
            assert all(all(row.values()) for row in reader), f"{path.name}: empty cell"


def test_no_two_documents_share_text(documents: dict[str, str]) -> None:
    normalised = Counter(" ".join(text.lower().split()) for text in documents.values())
    assert normalised.most_common(1)[0][1] == 1
    owner: dict[str, str] = {}
    for doc_id, text in documents.items():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if len(sentence.split()) >= 8:
                first = owner.setdefault(sentence.lower(), doc_id)
                assert first == doc_id, f"sentence reused by {first} and {doc_id}: {sentence!r}"


def test_queries_are_paraphrased(queries: dict[str, str]) -> None:
    assert 20 <= len(queries) <= 40
    titles = {p.stem.replace("-", " ") for p in _corpus_files()}
    for path in _corpus_files(".md"):
        titles.add(str(_split_front_matter(path)[0]["title"]).lower())
    for qid, text in queries.items():
        assert text.strip(), qid
        assert text.lower().rstrip("?") not in titles, f"{qid} copies a document title"


def test_qrels_resolve_to_documents(
    qrels: list[tuple[str, str, int]], queries: dict[str, str], documents: dict[str, str]
) -> None:
    for qid, doc_id, score in qrels:
        assert qid in queries, f"qrels query {qid} not in queries.jsonl"
        assert doc_id in documents, f"qrels corpus-id {doc_id} does not resolve"
        assert score in {1, 2}, f"{qid} {doc_id}: grade {score}"
    assert len({(q, d) for q, d, _ in qrels}) == len(qrels), "duplicate judgments"


def test_every_query_has_a_highly_relevant_judgment(
    qrels: list[tuple[str, str, int]], queries: dict[str, str]
) -> None:
    best = {q: max(s for qq, _, s in qrels if qq == q) for q in {q for q, _, _ in qrels}}
    assert set(best) == set(queries)
    assert all(score == 2 for score in best.values())


def test_eval_folder_is_excluded_and_documented(documents: dict[str, str]) -> None:
    ignore = (CORPUS / ".embedscopeignore").read_text().split()
    assert "eval/" in ignore
    assert not (CORPUS / "README.md").exists()
    source = (EVAL / "SOURCE.md").read_text(encoding="utf-8")
    assert "MIT" in source
    assert f"{len(documents)} short documents" in source, "SOURCE.md count is out of date"


def test_corpus_stays_small() -> None:
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 1_500_000


# defaults.yaml's chunk_overlap, in tokens.
WINDOW_OVERLAP = 32


def _titles(path: Path) -> dict[str, str]:
    """Map corpus-id to the title a file declares (front matter, <title>, a row's title
    column); plain text, reStructuredText and PDF files declare none here."""
    rel = path.relative_to(CORPUS).as_posix()
    if path.suffix == ".md":
        return {rel: str(_split_front_matter(path)[0]["title"]).strip()}
    if path.suffix == ".html":
        soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        return {rel: " ".join(soup.title.get_text(" ", strip=True).split()) if soup.title else ""}
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return {f"{rel}#{row['_id']}": row["title"] for row in rows}
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return {f"{rel}#{row['id']}": row["title"] for row in csv.DictReader(fh)}
    return {}


def reference_run(
    model: object, documents: dict[str, str], queries: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Dense retrieval without project code, embedding what the index embeds: every document
    cut into windows of the model's tokens (the window less its two special tokens, less the
    title's tokens), each window behind the document's title; a document scores its best
    window; the best 100 documents per query."""
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    window = model.max_seq_length - 2  # type: ignore[attr-defined]
    titles = {k: v for p in _corpus_files() for k, v in _titles(p).items()}
    windows, owners = [], []
    for doc_id, text in documents.items():
        title = titles.get(doc_id, "")
        size = window - min(len(tokenizer(title, add_special_tokens=False)["input_ids"]), 127)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, max(len(ids) - WINDOW_OVERLAP, 1), size - WINDOW_OVERLAP):
            windows.append(f"{title} {tokenizer.decode(ids[start : start + size])}".strip())
            owners.append(doc_id)
    qids = list(queries)
    scores = embed(model, [queries[q] for q in qids]) @ embed(model, windows).T
    run = {}
    for qid, row in zip(qids, scores, strict=True):
        best: dict[str, float] = {}
        for j in np.argsort(-row, kind="stable"):
            best.setdefault(owners[j], float(row[j]))
        run[qid] = dict(list(best.items())[:100])
    return run


@pytest.mark.slow  # indexes the whole corpus, then embeds it again independently
async def test_engine_retrieval_on_the_eval_set_matches_an_independent_run(
    documents: dict[str, str],
    queries: dict[str, str],
    qrels: list[tuple[str, str, int]],
    st_minilm: object,
    isolated_home: Path,
) -> None:
    from engine.config import load_config
    from engine.engine import Engine

    judged: dict[str, dict[str, int]] = {}
    for qid, doc_id, score in qrels:
        judged.setdefault(qid, {})[doc_id] = score
    async with Engine(load_config(use_user_file=False)) as engine:
        index = await engine.indexes.create("sample", index_type="flat")
        report = await index.index_path([CORPUS])
        assert report.failed == [] and index.stats().documents == len(documents)
        for doc_id in {d for _, d, _ in qrels}:
            assert index.document(doc_id) is not None, f"the engine has no document {doc_id}"
        run: dict[str, dict[str, float]] = {}
        for qid, text in queries.items():
            best: dict[str, float] = {}
            for hit in await index.search(text, 100, mode="vector"):
                best.setdefault(hit.doc_key, hit.score)
            run[qid] = best
    engine_ndcg = ndcg_at_10(judged, run)
    reference = ndcg_at_10(judged, reference_run(st_minilm, documents, queries))
    print(f"\nsample corpus nDCG@10: engine {engine_ndcg:.4f}, reference {reference:.4f}")
    # The engine cuts at paragraph and sentence breaks, the reference at fixed token counts; on
    # this corpus (few documents past one window) they agree to 0.0002 when written, closer than
    # one swapped pair of results moves the mean over the queries (~0.005).
    assert engine_ndcg == pytest.approx(reference, abs=0.003)
