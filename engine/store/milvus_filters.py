"""User filters as Milvus boolean expressions, and the per-chunk "forms" those expressions read.

SQLite evaluates a filter with ``COLLATE NOCASE`` (ASCII only), ``es_num``/``es_date`` casts and
``json_each`` over list values (see ``engine.store.filters``); Milvus 2.3 has none of these. So
each chunk row carries a JSON field ``forms`` that precomputes, for every filter key of its
document, what SQLite would compare:

* ``t``: text values, ASCII-lowercased (``=``/any-of/``!=`` on text; JSON true/false as "true"),
* ``n``: values as numbers (numeric strings included), with ``n0``/``n1`` their min and max,
* ``d``: values as ISO dates (a string's leading YYYY-MM-DD; ``mtime`` in local time), with
  ``d0``/``d1`` their min and max,
* ``g``: the raw text GLOB sees.

A list value contributes one entry per element, as ``json_each`` does. ``=`` becomes
``json_contains``, one-sided comparisons a test on the min or the max, all exact. What Milvus
2.3 cannot express (GLOB patterns: its LIKE only matches prefixes; a two-ended range, which must
hold for one element of a list) is pushed down as far as it is exact and finished by a
``residual`` predicate the store applies to the hits, over-fetching until ``k`` survive.

Every value reaches the expression through ``quote`` or ``number``: a filter value can never
change the expression's structure.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.store.filters import (
    _COLUMNS,
    _GLOB_CHARS,
    Condition,
    Filter,
    FilterError,
    _kind,
    _sql_date,
    _sql_number,
)
from engine.store.vector_base import ChunkFields

__all__ = [
    "FORMS_FIELD",
    "MilvusFilter",
    "chunk_forms",
    "glob_matcher",
    "number",
    "quote",
    "translate",
]

FORMS_FIELD = "forms"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Filter keys are already limited to these characters (engine.store.filters); checked again
# here because a key is spliced into the expression as a JSON path.
_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_SURROGATE = re.compile("[\ud800-\udfff]")

Forms = Mapping[str, Mapping[str, Any]]
Residual = Callable[[Forms], bool]


@dataclass(frozen=True, slots=True)
class MilvusFilter:
    """``expr``: a Milvus boolean expression ("" matches every row). ``residual``: a predicate
    on a hit's ``forms`` that must also hold, or None when ``expr`` is exact."""

    expr: str
    residual: Residual | None = None


# ---------------------------------------------------------------------------- literals


def quote(text: str) -> str:
    """A Milvus string literal for ``text``: printable ASCII as is, ``"`` and ``\\`` escaped,
    everything else as ``\\uXXXX`` / ``\\UXXXXXXXX``, so no character can end the literal."""
    if _SURROGATE.search(text):
        raise ValueError(f"text {text!r} holds a lone surrogate, which is not a character")
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def number(value: float) -> str:
    """A float literal (always with '.' or 'e': Milvus compares 3 and 3.0 differently in JSON)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return repr(value)


def _lower(text: str) -> str:
    """SQLite's NOCASE: ASCII letters only."""
    return text.translate(_ASCII_LOWER)


# ---------------------------------------------------------------------------- forms


class _FormsBuilder:
    def __init__(self) -> None:
        self.t: list[str] = []
        self.g: list[str] = []
        self.n: list[float] = []
        self.d: list[str] = []

    def text(self, value: str) -> None:
        self.t.append(_lower(value))
        self.g.append(value)
        num = _sql_number(value)
        if num is not None:
            self.n.append(num)
        day = _sql_date(value)
        if day is not None:
            self.d.append(day)

    def element(self, value: Any) -> None:
        """One ``json_each`` element: what SQLite's casts make of it."""
        if value is None:
            return
        if isinstance(value, bool):
            self.t.append("true" if value else "false")
            self.g.append("1" if value else "0")
            self.n.append(1.0 if value else 0.0)
        elif isinstance(value, int | float):
            if math.isfinite(float(value)):
                self.n.append(float(value))
                self.g.append(str(value))
        elif isinstance(value, str):
            self.text(value)
        else:
            encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            self.t.append(_lower(encoded))
            self.g.append(encoded)

    def build(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("t", "g"):
            values = list(dict.fromkeys(getattr(self, name)))
            if values:
                out[name] = values
        if self.n:
            out["n"] = sorted(set(self.n))
            out["n0"], out["n1"] = out["n"][0], out["n"][-1]
        if self.d:
            out["d"] = sorted(set(self.d))
            out["d0"], out["d1"] = out["d"][0], out["d"][-1]
        return out


def _metadata_paths(metadata: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(filter key, value) for every object path a filter key can name (``a.b`` is
    ``$."a"."b"``). Keys holding a dot cannot be named by a filter and are left out."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or "." in key:
            continue
        path = prefix + key
        if not prefix and path in _COLUMNS:
            continue
        yield path, value
        if isinstance(value, Mapping):
            yield from _metadata_paths(value, path + ".")


def chunk_forms(fields: ChunkFields) -> dict[str, dict[str, Any]]:
    """The ``forms`` JSON of a chunk: for every filter key, what SQLite compares."""
    forms: dict[str, dict[str, Any]] = {}
    for key, value in (("path", fields.path), ("title", fields.title), ("type", fields.doc_type)):
        builder = _FormsBuilder()
        builder.text(value)
        forms[key] = builder.build()
    size = _FormsBuilder()
    size.n.append(float(fields.size))
    size.g.append(str(int(fields.size)))
    forms["size"] = size.build()
    mtime = _FormsBuilder()
    mtime.n.append(float(fields.mtime))
    mtime.g.append(repr(float(fields.mtime)))
    mtime.d.append(time.strftime("%Y-%m-%d", time.localtime(fields.mtime)))
    forms["mtime"] = mtime.build()
    for key, value in _metadata_paths(fields.metadata):
        builder = _FormsBuilder()
        if isinstance(value, list):
            members: Iterable[Any] = value
        elif isinstance(value, Mapping):
            members = value.values()
        else:
            members = (value,)
        for member in members:
            builder.element(member)
        built = builder.build()
        if built:
            forms[key] = built
    return forms


# ---------------------------------------------------------------------------- globs


def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """SQLite GLOB as a Python predicate: case-sensitive ``*``, ``?`` and ``[...]`` sets
    (``^`` inverts, ``a-z`` ranges, a leading ``]`` is literal); an unclosed set never matches."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            invert = i < n and pattern[i] == "^"
            i += invert
            parts: list[str] = []
            prior: str | None = None
            if i < n and pattern[i] == "]":
                parts.append(re.escape("]"))
                prior = "]"
                i += 1
            while i < n and pattern[i] != "]":
                if pattern[i] == "-" and prior is not None and i + 1 < n and pattern[i + 1] != "]":
                    high = pattern[i + 1]
                    if prior <= high:  # a reversed range adds nothing past its first char
                        parts[-1] = f"{re.escape(prior)}-{re.escape(high)}"
                    prior = None
                    i += 2
                    continue
                parts.append(re.escape(pattern[i]))
                prior = pattern[i]
                i += 1
            if i >= n:
                out.append("(?!)")
                break
            i += 1
            body = "".join(parts)
            if body:
                out.append(f"[{'^' if invert else ''}{body}]")
            else:
                out.append(r"[\s\S]" if invert else "(?!)")
        else:
            out.append(re.escape(ch))
    regex = re.compile("".join(out), re.DOTALL)
    return lambda text: regex.fullmatch(text) is not None


# ---------------------------------------------------------------------------- translation


def _field(key: str) -> str:
    if not _SAFE_KEY.match(key):
        raise FilterError(key, "this key cannot be used in a Milvus filter")
    return f"{FORMS_FIELD}[{quote(key)}]"


def _member_expr(field: str, value: str) -> str:
    kind = _kind(value)
    if kind == "number":
        return f'json_contains({field}["n"], {number(float(value))})'
    if kind == "date":
        return f'json_contains({field}["d"], {quote(value)})'
    return f'json_contains({field}["t"], {quote(_lower(value))})'


def _member_check(cond: Condition, value: str) -> Residual:
    """The Python twin of one ``=`` member, for conditions that need a residual."""
    if cond.key == "path" and _GLOB_CHARS.intersection(value):
        return _glob_check(cond.key, value)
    kind = _kind(value)
    if kind == "number":
        target: Any = float(value)
        slot = "n"
    elif kind == "date":
        target, slot = value, "d"
    else:
        target, slot = _lower(value), "t"
    return lambda forms: target in forms.get(cond.key, {}).get(slot, ())


def _glob_check(key: str, pattern: str) -> Residual:
    patterns = [pattern, "*/" + pattern] if key == "path" else [pattern]
    matchers = [glob_matcher(p) for p in patterns]
    return lambda forms: any(
        m(text) for text in forms.get(key, {}).get("g", ()) for m in matchers
    )


def _range_check(key: str, lo: str, hi: str) -> Residual:
    kind = _kind(lo or hi)
    slot = "n" if kind == "number" else "d"

    def cast(end: str) -> Any:
        return float(end) if kind == "number" else end

    low, high = (cast(lo) if lo else None), (cast(hi) if hi else None)
    return lambda forms: any(
        (low is None or low <= x) and (high is None or x <= high)
        for x in forms.get(key, {}).get(slot, ())
    )


def _ordered(field: str, op: str, value: str) -> str:
    """One-sided comparison against some element: a test on the max (>, >=) or the min."""
    if _kind(value) == "number":
        slot, literal = "n", number(float(value))
    else:
        slot, literal = "d", quote(value)
    end = "1" if op in (">", ">=") else "0"
    return f'{field}["{slot}{end}"] {op} {literal}'


def _condition(cond: Condition) -> tuple[str, Residual | None]:
    """(exact-or-superset expression, residual or None) for one condition."""
    field = _field(cond.key)
    if cond.op in ("=", "!="):
        if cond.key == "path" and any(_GLOB_CHARS.intersection(v) for v in cond.values):
            checks = [_member_check(cond, v) for v in cond.values]
            negate = cond.op == "!="
            return "", lambda forms: any(c(forms) for c in checks) != negate
        exprs = [_member_expr(field, v) for v in cond.values]
        members = exprs[0] if len(exprs) == 1 else " or ".join(f"({e})" for e in exprs)
        return (f"not ({members})" if cond.op == "!=" else members), None
    if cond.op == "~":
        return "", _glob_check(cond.key, cond.values[0])
    if cond.op == "..":
        lo, hi = cond.values
        parts = [_ordered(field, op, end) for op, end in ((">=", lo), ("<=", hi)) if end]
        # Both ends must hold for one element of a list: min/max only bound that.
        return " and ".join(parts), (_range_check(cond.key, lo, hi) if lo and hi else None)
    return _ordered(field, cond.op, cond.values[0]), None


def translate(flt: Filter) -> MilvusFilter:
    """The Milvus form of a parsed filter (conditions AND-ed, as in SQLite).

    Raises FilterError for a value Milvus cannot carry (a lone surrogate).
    """
    exprs: list[str] = []
    residuals: list[Residual] = []
    for cond in flt.conditions:
        try:
            expr, residual = _condition(cond)
        except ValueError as exc:
            if isinstance(exc, FilterError):
                raise
            raise FilterError(cond.raw, str(exc)) from None
        if expr:
            exprs.append(f"({expr})")
        if residual is not None:
            residuals.append(residual)
    if not residuals:
        return MilvusFilter(" and ".join(exprs))
    return MilvusFilter(
        " and ".join(exprs), lambda forms: all(check(forms) for check in residuals)
    )
