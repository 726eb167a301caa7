"""User filters on Milvus: literals that cannot be escaped from, SQLite's GLOB in Python, and
the same answers as SQLite for every filter form on a real server.

SQLite (engine.store.filters) is the reference: the parity test stores the same documents in a
real metadata database and a real Milvus collection and compares, filter by filter, the chunk
ids each returns.
"""

from __future__ import annotations

import ast
import random
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.store import ChunkIn, DocumentIn, FilterError, MetadataStore, parse_filters
from engine.store.factory import create_store
from engine.store.milvus_filters import chunk_forms, glob_matcher, quote, translate
from engine.store.vector_base import ChunkFields, Where

pytest_plugins = ["milvus_server"]

HOSTILE = (
    'say "hi"',
    "back\\slash\\",
    '" or 1==1 or "',
    '\\" or id >= 0 or \\"',
    "' or ''='",
    "ünïcødé 😀 ✓ 中文",
    "line1\nline2\r\t\x00\x7f",
    "x" * 5000,
    "]) or (1 == 1",
)


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_is_one_closed_literal_of_the_value(value: str) -> None:
    literal = quote(value)
    assert literal.isascii() and literal.isprintable()
    # Milvus reads \", \\, \uXXXX and \UXXXXXXXX as Python does.
    assert ast.literal_eval(literal) == value
    body = literal[1:-1]
    i = 0
    while i < len(body):  # every quote inside is escaped, so the literal ends only at the end
        assert body[i] != '"'
        i += 2 if body[i] == "\\" else 1


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_only_fills_the_literal(value: str) -> None:
    value = value.strip()
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in value)  # SQLite's NOCASE
    got = translate(parse_filters([f"q={value}"]))
    assert got.residual is None
    assert got.expr == f'(json_contains(forms["q"]["t"], {quote(lowered)}))'


def test_lone_surrogate_is_a_filter_error() -> None:
    with pytest.raises(FilterError, match="surrogate"):
        translate(parse_filters(["q=bad\udc80"]))


def test_translation_shapes() -> None:
    assert translate(parse_filters(["bucket=7"])).expr == (
        '(json_contains(forms["bucket"]["n"], 7.0))'
    )
    any_of = translate(parse_filters(["tags!=a,2023-01-05"])).expr
    assert any_of == (
        '(not ((json_contains(forms["tags"]["t"], "a")) or '
        '(json_contains(forms["tags"]["d"], "2023-01-05"))))'
    )
    one_sided = translate(parse_filters(["size>10", "date<=2023-02-01"]))
    assert one_sided.expr == (
        '(forms["size"]["n1"] > 10.0) and (forms["date"]["d0"] <= "2023-02-01")'
    )
    assert one_sided.residual is None
    two_sided = translate(parse_filters(["n=1..5"]))
    assert two_sided.expr == '(forms["n"]["n1"] >= 1.0 and forms["n"]["n0"] <= 5.0)'
    assert two_sided.residual is not None
    assert two_sided.residual({"n": {"n": [0.0, 9.0]}}) is False  # no one element in range
    assert two_sided.residual({"n": {"n": [0.0, 3.0]}}) is True
    glob = translate(parse_filters(["path=docs/*.md"]))
    assert glob.expr == "" and glob.residual is not None
    assert glob.residual({"path": {"g": ["root/docs/a.md"]}})  # below any folder, as SQLite
    assert not glob.residual({"path": {"g": ["docs/a.txt"]}})


GLOB_PATTERNS = (
    "*",
    "a*",
    "*.md",
    "a?c",
    "[abc]*",
    "[^abc]*",
    "[a-c]x",
    "[z-a]x",
    "[]]x",
    "[^]]x",
    "x[-a]",
    "x[a-]",
    "[a-cx-z]",
    "[a-c-e]",
    "abc[",
    "[",
    "*[*]*",
    "a*b*c",
    "Ü*",
    "?",
    "",
    "a\\*",
    "%_",
)
GLOB_TEXTS = (
    "",
    "a",
    "abc",
    "aXc",
    "b.md",
    "dir/b.md",
    "]x",
    "zx",
    "ax",
    "-",
    "x-",
    "xa",
    "e",
    "d",
    "y",
    "abc[",
    "a*b",
    "a\\*",
    "%_",
    "Über",
    "über",
    "a\nb\nc",
    "*",
)


def test_glob_matcher_agrees_with_sqlite_glob() -> None:
    conn = sqlite3.connect(":memory:")
    for pattern in GLOB_PATTERNS:
        matcher = glob_matcher(pattern)
        for text in GLOB_TEXTS:
            expected = bool(conn.execute("SELECT ? GLOB ?", (text, pattern)).fetchone()[0])
            assert matcher(text) is expected, (pattern, text)


def test_forms_hold_what_sqlite_compares() -> None:
    forms = chunk_forms(
        ChunkFields(
            "Notes/A.md",
            "2023-05-01 Release",
            "md",
            12,
            1.7e9,
            {"tags": ["Red", 3, True, None, {"k": 1}], "n": "10", "a": {"b": "X"}, "a.b": "no"},
        )
    )
    assert forms["path"]["t"] == ["notes/a.md"] and forms["path"]["g"] == ["Notes/A.md"]
    assert forms["title"]["d"] == ["2023-05-01"]
    assert forms["tags"]["t"] == ["red", "true", '{"k":1}']
    assert forms["tags"]["n"] == [1.0, 3.0] and forms["tags"]["n1"] == 3.0
    assert forms["n"]["n"] == [10.0]
    assert forms["a.b"]["t"] == ["x"]  # the nested path, never the dotted top-level key
    assert forms["a"]["t"] == ["x"]  # json_each over an object yields its values


# --------------------------------------------------------------------------- parity

AUTHORS = ("ann", "Ann", "BOB", "carol", "Über", "über", "d'arcy", 'q"uote')
TAGS = ("red", "blue", "Green", "10", "2021-06-01", "x,y")
DATES = ("2021-03-04", "2022-12-31", "2023-01-01", "2023-05-01T10:00:00", "2023-13-01", "soon")
PATHS = ("notes/a.md", "notes/b.md", "nites/c.txt", "x/notes/b.txt", "a.md", "deep/x/y/bz.txt")
FILTERS = (
    "author=ann",
    "author=ANN",
    "author=ann,bob",
    "author!=ann",
    "author=über",
    "author=ÜBER",
    "author=d'arcy",
    'author=q"uote',
    "author~A*",
    "author~*r*",
    "tags=red",
    "tags=GREEN",
    "tags!=red",
    "tags=red,blue",
    "tags=10",
    "tags>5",
    "tags=2021-06-01",
    "tags~r*",
    "rating=4",
    "rating>=4",
    "rating<3",
    "rating=2..4",
    "rating=..3",
    "rating=4..",
    "rating!=4",
    "score=3.5",
    "score>3",
    "score=1e0..2.5",
    "date=2023-05-01",
    "date>=2023-01-01",
    "date<2023-01-01",
    "date=2022-01-01..2023-06-30",
    "date=soon",
    "flag=true",
    "flag=FALSE",
    "flag=1",
    "flag!=true",
    "nested.level=deep",
    "nested.n>1",
    "nested=deep",
    "nums=3..4",
    "nums>10",
    "nums<=-1",
    "nums=7",
    "missing=x",
    "missing!=x",
    "missing>1",
    "path=notes/*",
    "path=*.md",
    "path=a.md",
    "path=*/b*.txt",
    "path!=*.md",
    "path=notes/[ab]*.md",
    "path=n?tes/*",
    "path=notes/*,*.txt",
    "path~notes/*",
    "title~*Guide*",
    "title=the guide",
    "title=2020",
    "type=MD",
    "type!=txt",
    "size>100",
    "size=50..150",
    "mtime>=2023-01-01",
    "mtime<2022-06-01",
    "author=ann && rating>=3 && tags!=blue",
)


def _parse(text: str) -> Any:
    """One filter per item, as the CLI passes them (no shell-style splitting of quotes)."""
    return parse_filters(text.split(" && "))


def _documents(n: int) -> list[DocumentIn]:
    rng = random.Random(11)
    docs = []
    for i in range(n):
        metadata: dict[str, Any] = {
            "author": rng.choice(AUTHORS),
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
            "rating": rng.choice((1, 2, 3, 4, 5, "4", "n/a", None)),
            "score": rng.choice((0.5, 1.0, 2.5, 3.5, 4.25)),
            "date": rng.choice(DATES),
            "flag": rng.choice((True, False, "true", "TRUE", "yes", 1, 0)),
            "nested": {"level": rng.choice(("deep", "shallow")), "n": rng.randint(0, 3)},
            "nums": rng.sample((-3, 1, 3, 4, 7, 12, 20), rng.randint(0, 4)),
        }
        if i % 5 == 0:
            del metadata["author"]
        docs.append(
            DocumentIn(
                key=f"doc-{i}",
                path=rng.choice(PATHS).replace(".", f"{i}.", 1) if i % 3 else rng.choice(PATHS),
                title=rng.choice(("The Guide", "the guide", "A guide to it", "2020", "Notes")),
                doc_type=rng.choice(("md", "txt", "MD")),
                size=rng.randint(10, 300),
                mtime=1.64e9 + rng.randint(0, 400) * 86_400.0,
                content_hash=str(i),
                file_hash=str(i),
                metadata=metadata,
            )
        )
    return docs


@pytest.fixture(scope="module")
def parity(
    tmp_path_factory: pytest.TempPathFactory, milvus_server: Any
) -> Iterator[tuple[MetadataStore, Any, int]]:
    docs = _documents(300)
    meta = MetadataStore(tmp_path_factory.mktemp("parity") / "meta.sqlite", name="parity")
    ids, fields = [], []
    for doc in docs:
        _, chunk_ids, _ = meta.replace_document(doc, [ChunkIn(0, doc.title, 0, 1, 1)])
        ids.extend(chunk_ids)
        fields.append(ChunkFields.of(doc))
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((len(ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = {"uri": milvus_server.uri}
    store = create_store("milvus", settings, 8, name=f"parity-{uuid.uuid4().hex[:8]}")
    store.add(np.asarray(ids), vectors, fields)
    yield meta, store, len(ids)
    store.destroy()
    meta.close()


@pytest.mark.parametrize("text", FILTERS)
def test_milvus_answers_every_filter_as_sqlite_does(
    parity: tuple[MetadataStore, Any, int], text: str
) -> None:
    meta, store, n = parity
    flt = _parse(text)
    expected = meta.filter_chunk_ids(flt)
    query = np.full((1, 8), 1 / np.sqrt(8), dtype=np.float32)
    _, found = store.search(query, n, where=Where(flt))
    got = np.sort(found[0][found[0] >= 0])
    assert got.tolist() == expected.tolist(), translate(flt).expr


def test_parity_covers_matches_and_misses(parity: tuple[MetadataStore, Any, int]) -> None:
    """The battery is only meaningful if filters both keep and drop documents."""
    meta, _, n = parity
    sizes = [meta.filter_chunk_ids(_parse(t)).size for t in FILTERS]
    assert sum(0 < s < n for s in sizes) >= len(FILTERS) * 3 // 4


def test_hostile_values_on_the_server(tmp_path: Path, milvus_server: Any) -> None:
    """Every hostile value finds exactly its own document, and look-alikes find none."""
    store = create_store(
        "milvus", {"uri": milvus_server.uri}, 4, name=f"hostile-{uuid.uuid4().hex[:8]}"
    )
    try:
        values = [v.strip() for v in HOSTILE]
        fields = [ChunkFields(f"p{i}", "t", "md", 1, 1.7e9, {"q": v}) for i, v in enumerate(values)]
        vectors = np.eye(4, dtype=np.float32)[np.arange(len(values)) % 4]
        store.add(np.arange(len(values)), vectors, fields)
        for i, value in enumerate(values):
            _, found = store.search(vectors[:1], 50, where=Where(parse_filters([f"q={value}"])))
            assert found[0][found[0] >= 0].tolist() == [i], value
        for probe in ('" or 1==1 or "x', '") or (id >= 0', "\\", "' or 1=1 --"):
            _, found = store.search(vectors[:1], 50, where=Where(parse_filters([f"q={probe}"])))
            assert (found[0] == -1).all(), probe
    finally:
        store.destroy()
