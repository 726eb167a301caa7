"""User metadata filters: parse ``key<op>value`` strings, compile them to bound-parameter SQL.

Filters are evaluated by SQLite against ``documents`` (alias ``d``) so the matching chunk ids
are computed where the data lives and then handed to FAISS / FTS5 as one candidate set.
Values are always bound parameters; only validated keys and fixed operators reach the SQL text.
"""

from __future__ import annotations

import math
import re
import shlex
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from engine.errors import BadFilterError

__all__ = [
    "FILTER_FORMS",
    "Condition",
    "Filter",
    "FilterError",
    "parse_filter",
    "parse_filters",
    "register_sql_functions",
    "split_filter_text",
]

FILTER_FORMS = "key=value, key=a,b, key!=x, key>=x, key<=x, key>x, key<x, key=lo..hi or path=glob"

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_NUM_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_PREFIX_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:$|[T ])")
_COND_RE = re.compile(r"^(?P<key>[^=!<>~]*?)\s*(?P<op>!=|>=|<=|=|>|<|~)\s*(?P<value>.*)$", re.S)
_GLOB_CHARS = frozenset("*?[")
_COMPARISONS = frozenset({">=", "<=", ">", "<"})

# Document columns addressable by a filter key; anything else is a metadata (front-matter) field.
_COLUMNS = {
    "path": "d.path",
    "title": "d.title",
    "type": "d.doc_type",
    "size": "d.size",
    "mtime": "d.mtime",
}
_NUMERIC_COLUMNS = frozenset({"size", "mtime"})


class FilterError(BadFilterError):
    """A user filter that cannot be parsed; the message quotes it and lists the accepted forms."""

    def __init__(self, raw: str, reason: str) -> None:
        self.raw = raw
        self.reason = reason
        super().__init__(f"bad filter {raw!r}: {reason}. Expected {FILTER_FORMS}")


@dataclass(frozen=True, slots=True)
class Condition:
    """One parsed filter: ``op`` is one of = != >= <= > < ~ (glob) or .. (inclusive range).

    ``values`` holds the list members for = / != (IN / NOT IN), ``(lo, hi)`` for a range
    (an empty string is an open end) and a single value otherwise.
    """

    key: str
    op: str
    values: tuple[str, ...]
    raw: str


@dataclass(frozen=True, slots=True)
class Filter:
    """Conditions that must all hold (AND). An empty filter matches every document."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def __str__(self) -> str:
        return " ".join(c.raw for c in self.conditions)

    def to_sql(self) -> tuple[str, list[Any]]:
        """A WHERE expression over ``documents d`` and its bound parameters."""
        if not self.conditions:
            return "1", []
        parts: list[str] = []
        params: list[Any] = []
        for cond in self.conditions:
            sql, cond_params = _compile(cond)
            parts.append(f"({sql})")
            params.extend(cond_params)
        return " AND ".join(parts), params


def split_filter_text(text: str) -> list[str]:
    """Split a filter input line on whitespace outside quotes (``title="deep space"``)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise FilterError(text, f"unbalanced quotes ({exc})") from None


def parse_filters(items: str | Iterable[str]) -> Filter:
    """Parse CLI ``--filter`` values (or one input line, split on whitespace) into a Filter."""
    if isinstance(items, str):
        items = split_filter_text(items)
    return Filter(tuple(parse_filter(item) for item in items if item.strip()))


def parse_filter(raw: str) -> Condition:
    """Parse one ``key<op>value`` string; raises FilterError naming what is wrong."""
    text = raw.strip()
    match = _COND_RE.match(text)
    if match is None:
        raise FilterError(raw, "no operator (=, !=, >=, <=, >, <, ~) found")
    key, op, value = match["key"].strip(), match["op"], match["value"].strip()
    if not key:
        raise FilterError(raw, f"missing key before {op!r}")
    if not _KEY_RE.match(key) or any(not part for part in key.split(".")):
        raise FilterError(
            raw,
            f"key {key!r} must start with a letter or '_' and contain only letters, digits, "
            "'_', '-' and single dots",
        )
    if not value:
        raise FilterError(raw, f"missing value after {op!r}")
    if op in _COMPARISONS:
        _require_ordered(raw, value, f"after {op!r}")
        return Condition(key, op, (value,), raw)
    if op == "~":
        return Condition(key, op, (value,), raw)
    if ".." in value and key != "path":
        if op != "=":
            raise FilterError(raw, "a lo..hi range only works with '='")
        return Condition(key, "..", _parse_range(raw, value), raw)
    members = tuple(m.strip() for m in value.split(","))
    if any(not m for m in members):
        raise FilterError(raw, f"empty item in list {value!r}")
    return Condition(key, op, members, raw)


def _kind(value: str) -> str:
    """'number', 'date' (a valid YYYY-MM-DD) or 'text'."""
    if _NUM_RE.match(value) and math.isfinite(float(value)):
        return "number"
    if _DATE_RE.match(value):
        try:
            date.fromisoformat(value)
        except ValueError:
            return "text"
        return "date"
    return "text"


def _require_ordered(raw: str, value: str, where: str) -> str:
    kind = _kind(value)
    if kind == "text":
        hint = " (not a real calendar date)" if _DATE_RE.match(value) else ""
        raise FilterError(
            raw, f"{value!r} {where} is not a number or an ISO date (YYYY-MM-DD){hint}"
        )
    return kind


def _parse_range(raw: str, value: str) -> tuple[str, str]:
    lo, hi = (part.strip() for part in value.split("..", 1))
    if not lo and not hi:
        raise FilterError(raw, "a range needs at least one end (lo.., ..hi or lo..hi)")
    kinds = {_require_ordered(raw, end, "(range end)") for end in (lo, hi) if end}
    if len(kinds) > 1:
        raise FilterError(raw, "range ends must both be numbers or both be dates")
    if lo and hi:
        lo_key: Any = float(lo) if kinds == {"number"} else lo
        hi_key: Any = float(hi) if kinds == {"number"} else hi
        if lo_key > hi_key:
            raise FilterError(raw, f"range start {lo} is after its end {hi}")
    return lo, hi


@dataclass(frozen=True, slots=True)
class _Field:
    """SQL expressions giving a field's value as stored, as a number and as an ISO date."""

    text: str
    number: str
    day: str
    json_type: str | None
    is_path: bool


def _field(key: str) -> _Field:
    column = _COLUMNS.get(key)
    if column is None:
        value = "je.value"
        return _Field(value, f"es_num({value})", f"es_date({value})", "je.type", False)
    number = column if key in _NUMERIC_COLUMNS else f"es_num({column})"
    day = f"date({column}, 'unixepoch', 'localtime')" if key == "mtime" else f"es_date({column})"
    return _Field(column, number, day, None, key == "path")


def _json_path(key: str) -> str:
    return "$" + "".join(f'."{part}"' for part in key.split("."))


def _glob(field: _Field, pattern: str) -> tuple[str, list[Any]]:
    if field.is_path:
        # Stored paths may be absolute; a relative glob also matches below any folder.
        return f"{field.text} GLOB ? OR {field.text} GLOB ?", [pattern, "*/" + pattern]
    return f"{field.text} GLOB ?", [pattern]


def _equals(field: _Field, value: str) -> tuple[str, list[Any]]:
    if field.is_path and _GLOB_CHARS.intersection(value):
        return _glob(field, value)
    kind = _kind(value)
    if kind == "number":
        return f"{field.number} = ?", [float(value)]
    if kind == "date":
        return f"{field.day} = ?", [value]
    if field.json_type is not None and value.lower() in ("true", "false"):
        return f"{field.json_type} = ? OR {field.text} = ? COLLATE NOCASE", [value.lower(), value]
    return f"{field.text} = ? COLLATE NOCASE", [value]


def _element_predicate(cond: Condition, field: _Field) -> tuple[str, list[Any]]:
    """Predicate on one value; != is compiled as the negation of = by the caller."""
    if cond.op in ("=", "!="):
        parts = [_equals(field, v) for v in cond.values]
        return " OR ".join(f"({sql})" for sql, _ in parts), [p for _, ps in parts for p in ps]
    if cond.op == "~":
        return _glob(field, cond.values[0])
    if cond.op == "..":
        clauses: list[str] = []
        params: list[Any] = []
        for end, sql_op in zip(cond.values, (">=", "<="), strict=True):
            if end:
                expr, param = _ordered(field, end)
                clauses.append(f"{expr} {sql_op} ?")
                params.append(param)
        return " AND ".join(clauses), params
    expr, param = _ordered(field, cond.values[0])
    return f"{expr} {cond.op} ?", [param]


def _ordered(field: _Field, value: str) -> tuple[str, Any]:
    if _kind(value) == "number":
        return field.number, float(value)
    return field.day, value


def _compile(cond: Condition) -> tuple[str, list[Any]]:
    field = _field(cond.key)
    predicate, params = _element_predicate(cond, field)
    if field.json_type is None:
        if cond.op == "!=":
            return f"NOT COALESCE(({predicate}), 0)", params
        return predicate, params
    # json_each yields the scalar itself or each element of a list (tags: [a, b]).
    exists = f"EXISTS (SELECT 1 FROM json_each(d.metadata, ?) AS je WHERE {predicate})"
    sql = f"NOT {exists}" if cond.op == "!=" else exists
    return sql, [_json_path(cond.key), *params]


def _sql_number(value: object) -> float | None:
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        text = value.strip()
        if _NUM_RE.match(text):
            number = float(text)
            return number if math.isfinite(number) else None
    return None


def _sql_date(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    match = _DATE_PREFIX_RE.match(value.strip())
    if match is None:
        return None
    try:
        return date.fromisoformat(match[1]).isoformat()
    except ValueError:
        return None


def register_sql_functions(conn: sqlite3.Connection) -> None:
    """Install es_num/es_date, which turn non-numbers / non-dates into NULL (= no match)."""
    conn.create_function("es_num", 1, _sql_number, deterministic=True)
    conn.create_function("es_date", 1, _sql_date, deterministic=True)
