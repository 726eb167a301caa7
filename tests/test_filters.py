"""Metadata filters: parsing, error messages and evaluation against a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from engine.store import (
    FILTER_FORMS,
    ChunkIn,
    Condition,
    DocumentIn,
    FilterError,
    MetadataStore,
    parse_filter,
    parse_filters,
    split_filter_text,
)

# key -> (path, title, type, size, mtime as a local date, metadata)
DOCS: dict[str, tuple[str, str, str, int, datetime, dict[str, object]]] = {
    "holes": (
        "/corpus/astronomy/black-holes.md",
        "Black Holes",
        "md",
        1200,
        datetime(2021, 3, 1, 12, 0),
        {
            "author": "Alice",
            "date": "2021-03-05",
            "tags": ["space", "physics"],
            "rating": 4.5,
            "draft": False,
            "reading-time": 7,
            "source": {"name": "arxiv"},
        },
    ),
    "comets": (
        "astronomy/comets.md",
        "Comets",
        "md",
        800,
        datetime(2020, 6, 1, 9, 30),
        {
            "author": "Bob",
            "date": "2019-11-20T08:30:00",
            "tags": ["space"],
            "rating": "3",
            "draft": True,
        },
    ),
    "bread": (
        "cooking/bread.txt",
        "Sourdough bread",
        "txt",
        300,
        datetime(2022, 1, 10, 18, 0),
        {"author": "alice", "date": "2022-01-10", "rating": "n/a", "category": "baking"},
    ),
    "faq": (
        "misc/faq.jsonl",
        "FAQ row",
        "jsonl",
        5000,
        datetime(2023, 5, 5, 8, 0),
        {"category": "faq", "rating": 10},
    ),
    "manual": (
        "docs/manual.pdf",
        "Manual",
        "pdf",
        250_000,
        datetime(2019, 1, 1, 0, 30),
        {"author": "Carol", "date": "not a date", "pages": 12},
    ),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetadataStore, dict]]:
    s = MetadataStore(tmp_path_factory.mktemp("filters") / "index.db", name="filters")
    owner: dict[int, str] = {}
    for key, (path, title, doc_type, size, mtime, metadata) in DOCS.items():
        doc = DocumentIn(
            key, path, title, doc_type, size, mtime.timestamp(), f"c{key}", f"f{key}", metadata
        )
        chunks = [ChunkIn(i, f"{key} part {i}", 0, 1, 3) for i in range(2)]
        _, ids, _ = s.replace_document(doc, chunks)
        owner.update(dict.fromkeys(ids, key))
    yield s, owner
    s.close()


def matching(store: tuple[MetadataStore, dict], *filters: str) -> set[str]:
    s, owner = store
    ids = s.filter_chunk_ids(parse_filters(list(filters)))
    assert ids.dtype.name == "int64" and ids.tolist() == sorted(set(ids.tolist()))
    return {owner[i] for i in ids.tolist()}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        # equality: strings ignore case, numbers compare numerically, lists match any element
        ("author=alice", {"holes", "bread"}),
        ("author=ALICE", {"holes", "bread"}),
        ("rating=3", {"comets"}),
        ("rating=3.0", {"comets"}),
        ("rating=4.5", {"holes"}),
        ("tags=space", {"holes", "comets"}),
        ("tags=physics", {"holes"}),
        ("draft=true", {"comets"}),
        ("draft=false", {"holes"}),
        ("source.name=arxiv", {"holes"}),
        ("category=faq", {"faq"}),
        ("nosuchfield=x", set()),
        # IN-lists and inequality (a missing field is "not equal")
        ("author=alice,carol", {"holes", "bread", "manual"}),
        ("type=md,txt", {"holes", "comets", "bread"}),
        ("size=300,800", {"comets", "bread"}),
        ("author!=alice", {"comets", "faq", "manual"}),
        ("type!=md", {"bread", "faq", "manual"}),
        ("tags!=physics", {"comets", "bread", "faq", "manual"}),
        ("author!=alice,bob", {"faq", "manual"}),
        # numeric comparisons: numeric strings count, non-numbers never match
        ("rating>=4", {"holes", "faq"}),
        ("rating<4", {"comets"}),
        ("rating>10", set()),
        ("rating<=10", {"holes", "comets", "faq"}),
        ("size>1000", {"holes", "faq", "manual"}),
        ("size<=800", {"comets", "bread"}),
        ("reading-time>5", {"holes"}),
        ("pages>=12", {"manual"}),
        # numeric ranges, open at either end
        ("rating=4..10", {"holes", "faq"}),
        ("rating=3..", {"holes", "comets", "faq"}),
        ("rating=..4", {"comets"}),
        ("size=300..1200", {"holes", "comets", "bread"}),
        ("author=1..5", set()),
        # dates: ISO strings (also with a time part), open ranges, invalid dates never match
        ("date>=2021-01-01", {"holes", "bread"}),
        ("date<2020-01-01", {"comets"}),
        ("date=2019-11-20", {"comets"}),
        ("date=2020-01-01..2021-12-31", {"holes"}),
        ("date=..2021-03-05", {"holes", "comets"}),
        ("date=2021-03-06..", {"bread"}),
        # mtime is a timestamp column compared as a local date
        ("mtime>=2021-03-01", {"holes", "bread", "faq"}),
        ("mtime=2021-03-01", {"holes"}),
        ("mtime<2020-06-01", {"manual"}),
        ("mtime=2020-01-01..2021-12-31", {"holes", "comets"}),
        # globs on the path (relative patterns also match below absolute roots)
        ("path=astronomy/*.md", {"holes", "comets"}),
        ("path~*.jsonl", {"faq"}),
        ("path=astronomy/comets.md", {"comets"}),
        ("path=*.pdf,*.txt", {"manual", "bread"}),
        ("path=docs/manual.pdf", {"manual"}),
        ("title~*Holes*", {"holes"}),
        ("title=sourdough bread", {"bread"}),
        # values are bound parameters, never SQL
        ("author=x' OR '1'='1", set()),
        ('title=") OR 1=1 --', set()),
    ],
)
def test_each_filter_form_selects_the_right_documents(
    store: tuple[MetadataStore, dict], flt: str, expected: set[str]
) -> None:
    assert matching(store, flt) == expected


def test_conditions_are_anded(store: tuple[MetadataStore, dict]) -> None:
    assert matching(store, "author=alice", "type=md") == {"holes"}
    assert matching(store, "tags=space", "date>=2021-01-01", "rating>4") == {"holes"}
    assert matching(store, "type=md", "type=pdf") == set()


def test_empty_filter_matches_every_chunk(store: tuple[MetadataStore, dict]) -> None:
    s, owner = store
    assert s.filter_chunk_ids(parse_filters([])).tolist() == sorted(owner)
    assert s.filter_chunk_ids(parse_filters(["", "  "])).tolist() == sorted(owner)


def test_filter_input_line_splits_on_whitespace_outside_quotes(
    store: tuple[MetadataStore, dict],
) -> None:
    assert split_filter_text('author=alice title="Sourdough bread"') == [
        "author=alice",
        "title=Sourdough bread",
    ]
    assert matching(store, *split_filter_text('author=alice title="Sourdough bread"')) == {"bread"}
    assert parse_filters("type=md  rating>=4") == parse_filters(["type=md", "rating>=4"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("type=pdf", Condition("type", "=", ("pdf",), "type=pdf")),
        ("tags = a, b ,c", Condition("tags", "=", ("a", "b", "c"), "tags = a, b ,c")),
        ("size>=10", Condition("size", ">=", ("10",), "size>=10")),
        ("x!=1", Condition("x", "!=", ("1",), "x!=1")),
        ("d=2020-01-01..", Condition("d", "..", ("2020-01-01", ""), "d=2020-01-01..")),
        ("n=..-3.5", Condition("n", "..", ("", "-3.5"), "n=..-3.5")),
        ("path=../x/*.md", Condition("path", "=", ("../x/*.md",), "path=../x/*.md")),
        ("path~a?.md", Condition("path", "~", ("a?.md",), "path~a?.md")),
    ],
)
def test_parse_filter_builds_conditions(raw: str, expected: Condition) -> None:
    assert parse_filter(raw) == expected


def test_values_never_reach_the_sql_text() -> None:
    flt = parse_filters(["author=zebra'", "size>=12345", "path=q*z/*.md", "d=2031-01-02..", "t~W*"])
    sql, params = flt.to_sql()
    for value in ("zebra", "12345", "q*z", "2031", "W*"):
        assert value not in sql
    assert sql.count("?") == len(params)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("date>>2020", "'>2020' after '>' is not a number or an ISO date"),
        ("author", "no operator"),
        ("=alice", "missing key before '='"),
        ("author=", "missing value after '='"),
        ("rating>=", "missing value after '>='"),
        ("1abc=2", "key '1abc' must start with a letter"),
        ("a..b=1", "key 'a..b' must start with a letter"),
        ("a b=1", "key 'a b' must start with a letter"),
        ("size>big", "'big' after '>' is not a number or an ISO date"),
        ("date>2021-13-01", "not a real calendar date"),
        ("date<=2021-02-30", "not a real calendar date"),
        ("n=..", "a range needs at least one end"),
        ("n=5..1", "range start 5 is after its end 1"),
        ("d=2022-01-01..2021-01-01", "range start 2022-01-01 is after its end 2021-01-01"),
        ("n=1..2021-01-01", "range ends must both be numbers or both be dates"),
        ("n=1..x", "'x' (range end) is not a number"),
        ("n!=1..3", "a lo..hi range only works with '='"),
        ("tags=a,,b", "empty item in list 'a,,b'"),
        ("tags=a,", "empty item in list 'a,'"),
    ],
)
def test_bad_filters_quote_the_filter_explain_and_list_the_forms(raw: str, reason: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filters([raw])
    message = str(info.value)
    assert message.startswith(f"bad filter {raw!r}: ")
    assert reason in message
    assert message.endswith(f"Expected {FILTER_FORMS}")
    assert isinstance(info.value, ValueError) and info.value.raw == raw


def test_unbalanced_quotes_in_an_input_line_are_a_filter_error() -> None:
    with pytest.raises(FilterError, match=r"bad filter 'title=\"open': unbalanced quotes"):
        parse_filters('title="open')
