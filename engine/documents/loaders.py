"""Turn files on disk into `LoadedDocument`s: one per file, or one per row of jsonl/json/csv.

Every failure is a `DocumentError` naming the file and a reason a user can act on, so the indexer
can report bad files and carry on with the rest.

Metadata is normalised across file types (markdown front matter, rst docinfo, HTML `<meta>`, PDF
document info all give `author`, `date` as ISO text, `tags` as a list) so one filter covers every
type; for the same reason every document in a subfolder gets `folder` and, unless it names one
itself, `category` = its first folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from engine.safeyaml import YamlLimitError, YamlLimits
from engine.safeyaml import load as load_yaml

TYPE_BY_SUFFIX: dict[str, str] = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".json": "json",
    ".jsonl": "jsonl",
    ".csv": "csv",
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(TYPE_BY_SUFFIX)
# Bumped whenever a loader's output changes for the same bytes, so indexes re-read their files.
LOADER_VERSION = 4

_BINARY_PROBE = 8192
# One unit throughout: documents.max_file_mb is in MB of 1024 * 1024 bytes, and so is every message.
_MB = 1024 * 1024
_FILE_FIELDS = ("path", "type", "size", "mtime", "modified", "folder")


class DocumentError(ValueError):
    """A file that cannot be indexed; `reason` is written for the user, not for a traceback.

    `path` is printable even when the file name is not valid UTF-8 (see `display_path`)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = display_path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Rejected(DocumentError):
    """One document passed a metadata limit: a row is left out alone, a single document fails."""


@dataclass(frozen=True)
class MetadataLimits:
    """What one document's metadata may hold, so a small hostile file cannot take the run down.

    Depth counts nested lists and mappings (the metadata mapping itself is level 1); aliases and
    nodes bound YAML front matter while it is parsed; `max_kb` bounds the stored JSON.
    """

    max_depth: int = 32
    max_yaml_aliases: int = 100
    max_yaml_nodes: int = 10_000
    max_kb: float = 64

    @classmethod
    def from_settings(cls, documents: Mapping[str, Any]) -> MetadataLimits:
        """From the config's `documents:` section."""
        return cls(
            max_depth=documents["max_metadata_depth"],
            max_yaml_aliases=documents["max_yaml_aliases"],
            max_yaml_nodes=documents["max_yaml_nodes"],
            max_kb=documents["max_metadata_kb"],
        )

    @property
    def yaml(self) -> YamlLimits:
        return YamlLimits(self.max_depth, self.max_yaml_aliases, self.max_yaml_nodes)


_YAML_LIMIT_KEYS = {
    "max_depth": "documents.max_metadata_depth",
    "max_aliases": "documents.max_yaml_aliases",
    "max_nodes": "documents.max_yaml_nodes",
}


def display_path(path: Path | str) -> str:
    """A path as text that can always be printed and stored: bytes of a file name that are not
    UTF-8 (kept by Python as lone surrogates) are shown as `\\xNN`."""
    text = str(path)
    if is_utf8(text):
        return text
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def describe_mode(mode: int) -> str:
    """What a non-regular file is, in words a user recognises."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


@dataclass(slots=True)
class LoadedDocument:
    """One indexable document; `key` is stable across re-indexing as long as the file stays put."""

    key: str
    path: str
    title: str
    doc_type: str
    text: str
    metadata: dict[str, Any]
    size: int
    mtime: float
    content_hash: str
    pages: list[tuple[int, int]] | None = None
    # A title from outside the body (front matter, HTML <title>, PDF info, a title field or
    # column), embedded and keyword-indexed with every chunk; "" when `title` was derived from
    # the body (already in the text) or the file name (not the author's words).
    indexed_title: str = ""


@dataclass(slots=True)
class _FileInfo:
    rel: str
    doc_type: str
    size: int
    mtime: float


@dataclass(slots=True)
class _Row:
    """A row of a multi-document file before it becomes a LoadedDocument."""

    row_id: str
    title: str
    text: str
    metadata: dict[str, Any]
    indexed_title: str = ""


def file_fingerprint(path: Path) -> str:
    """sha256 of the raw bytes, so unchanged files can be skipped without parsing them."""
    digest = hashlib.sha256()
    try:
        with _open_regular(path) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DocumentError(path, _os_reason(exc)) from exc
    return digest.hexdigest()


def _open_regular(path: Path) -> BinaryIO:
    """Open for reading only if it is a regular file: a FIFO or device swapped in after discovery
    would otherwise block the run forever (O_NONBLOCK makes opening a FIFO return at once)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DocumentError(path, f"not a regular file: {describe_mode(mode)}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_file(
    path: Path,
    root: Path,
    *,
    max_bytes: int = 10 * _MB,
    csv_text_column: str = "text",
    csv_id_column: str = "id",
    csv_title_column: str = "title",
    limits: MetadataLimits | None = None,
    skipped: list[DocumentError] | None = None,
) -> list[LoadedDocument]:
    """Load one file; unknown suffixes (picked up by include globs) are read as plain text.

    Rows of jsonl/json/csv files that are blank, pass a metadata limit or hold an unclosed CSV
    quote are left out and, when `skipped` is given, reported there with their line, so one bad
    row never costs the rest of the file.

    Every document (all types, every row) under a subfolder of `root` gets `folder` (its parent
    folder, posix) and, when its own metadata has no non-blank `category`, `category` = the first
    folder of its path (`astronomy/black-holes.md` -> `astronomy`), so a `category=` filter
    covers files that cannot carry metadata. An explicit `category` always wins.
    """
    limits = limits or MetadataLimits()
    info = _file_info(path, root)
    if info.size == 0:
        raise DocumentError(path, "empty file")
    if info.size > max_bytes:
        raise DocumentError(path, _oversize_reason(info.size, max_bytes))
    data = _read_bytes(path, max_bytes)
    if info.doc_type == "pdf":
        text, title, meta, pages = _parse_pdf(path, data)
        return [_single(path, info, title or path.stem, text, meta, pages, limits, title)]
    raw = _decode(path, data)
    if info.doc_type == "jsonl":
        return _rows_to_documents(info, _parse_jsonl(path, raw, limits, skipped))
    if info.doc_type == "json":
        return _rows_to_documents(info, _parse_json(path, raw, limits, skipped))
    if info.doc_type == "csv":
        columns = (csv_text_column, csv_id_column, csv_title_column)
        rows = _parse_csv(path, raw, columns, max_bytes, limits, skipped)
        return _rows_to_documents(info, rows)
    indexed_title = ""
    if info.doc_type == "markdown":
        text, title, meta = _parse_markdown(path, raw, limits)
        front = meta.get("title")
        indexed_title = front.strip() if isinstance(front, str) else ""
    elif info.doc_type == "html":
        text, title, meta, indexed_title = _parse_html(path, raw)
    else:
        parse: Callable[[Path, str], tuple[str, str, dict[str, Any]]] = _TEXT_PARSERS.get(
            info.doc_type, _parse_text
        )
        text, title, meta = parse(path, raw)
    return [_single(path, info, title, text, meta, None, limits, indexed_title)]


def _file_info(path: Path, root: Path) -> _FileInfo:
    try:
        info = path.stat()
    except OSError as exc:
        raise DocumentError(path, _os_reason(exc)) from exc
    if stat.S_ISDIR(info.st_mode):
        raise DocumentError(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise DocumentError(path, f"not a regular file: {describe_mode(info.st_mode)}")
    abs_path = path.resolve()
    abs_root = root.resolve()
    if abs_root == abs_path or abs_root.is_file():
        rel = abs_path.name
    else:
        try:
            rel = abs_path.relative_to(abs_root).as_posix()
        except ValueError:
            raise DocumentError(path, f"not inside the indexed folder {root}") from None
    if not is_utf8(rel):
        raise DocumentError(path, NOT_UTF8_NAME)
    doc_type = TYPE_BY_SUFFIX.get(path.suffix.lower(), "text")
    return _FileInfo(rel, doc_type, info.st_size, info.st_mtime)


NOT_UTF8_NAME = "file name is not valid UTF-8 (rename the file to index it)"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file not found (moved or deleted?)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot read file: {exc.strerror or exc}"


def _oversize_reason(size: int, max_bytes: int) -> str:
    """Both figures in the config's unit; the size gets more decimals only where one would
    round it down to the limit itself ("10.0 MB, over the 10 MB limit")."""
    limit = f"{round(max_bytes / _MB, 3):g}"
    shown = f"{size / _MB:.1f}"
    for decimals in (3, 6):
        if float(shown) > max_bytes / _MB:
            break
        shown = f"{size / _MB:.{decimals}f}"
    return f"file is {shown} MB, over the {limit} MB limit (documents.max_file_mb)"


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        with _open_regular(path) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(path, _os_reason(exc)) from exc
    if len(data) > max_bytes:
        raise DocumentError(path, _oversize_reason(len(data), max_bytes))
    if not data:
        raise DocumentError(path, "empty file")
    return data


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError(path, "UTF-16 encoded; re-save the file as UTF-8")
    if b"\x00" in data[:_BINARY_PROBE]:
        raise DocumentError(path, "binary file (NUL bytes in first 8 KiB)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            path, f"not valid UTF-8 at byte {exc.start} (re-save the file as UTF-8)"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _require_text(path: Path, text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise DocumentError(path, "empty document (only whitespace)")
    return stripped


def _single(
    path: Path,
    info: _FileInfo,
    title: str,
    text: str,
    meta: dict[str, Any],
    pages: list[tuple[int, int]] | None,
    limits: MetadataLimits,
    indexed_title: str = "",
) -> LoadedDocument:
    _check_metadata_size(path, meta, limits)
    return LoadedDocument(
        key=info.rel,
        path=info.rel,
        title=title,
        doc_type=info.doc_type,
        text=text,
        metadata=_with_file_fields(meta, info),
        size=info.size,
        mtime=info.mtime,
        content_hash=_content_hash(title, text, meta, indexed_title),
        pages=pages,
        indexed_title=indexed_title,
    )


def _rows_to_documents(info: _FileInfo, rows: Iterable[_Row]) -> list[LoadedDocument]:
    return [
        LoadedDocument(
            key=f"{info.rel}#{row.row_id}",
            path=info.rel,
            title=row.title,
            doc_type=info.doc_type,
            text=row.text,
            metadata=_with_file_fields(row.metadata, info),
            size=info.size,
            mtime=info.mtime,
            content_hash=_content_hash(row.title, row.text, row.metadata, row.indexed_title),
            pages=None,
            indexed_title=row.indexed_title,
        )
        for row in rows
    ]


def _with_file_fields(meta: Mapping[str, Any], info: _FileInfo) -> dict[str, Any]:
    """File facts win over same-named user fields: filters on `type` or `path` must be reliable.

    `category` is the exception: the document's own value wins, the folder only fills a gap.
    """
    merged = {k: v for k, v in meta.items() if k not in _FILE_FIELDS}
    folder, _, _ = info.rel.rpartition("/")
    if folder:
        merged["folder"] = folder
        category = merged.get("category")
        if category is None or (isinstance(category, str) and not category.strip()):
            merged["category"] = folder.split("/", 1)[0]
    merged["path"] = info.rel
    merged["type"] = info.doc_type
    merged["size"] = info.size
    merged["mtime"] = info.mtime
    merged["modified"] = dt.datetime.fromtimestamp(info.mtime, tz=dt.UTC).isoformat(
        timespec="seconds"
    )
    return merged


def _content_hash(title: str, text: str, meta: Mapping[str, Any], indexed_title: str = "") -> str:
    """Hash only what belongs to this document, so editing one row leaves its siblings' hashes.

    `meta` is the document's own metadata, before file fields are added. `folder` and a
    folder-derived `category` are left out on purpose: both follow from the path, which is the
    document key, so they can only change together with the key (a new document anyway).
    `indexed_title` counts only when set: a document without one keeps the hash it had before
    titles were indexed, so upgrading an index re-embeds titled documents alone.
    """
    own = {k: v for k, v in meta.items() if k not in _FILE_FIELDS}
    fields: dict[str, Any] = {"title": title, "text": text, "metadata": own}
    if indexed_title:
        fields["indexed_title"] = indexed_title
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _metadata(
    items: Iterable[tuple[Any, Any]], path: Path, limits: MetadataLimits
) -> dict[str, Any]:
    """A document's own metadata as JSON-safe values, within `limits.max_depth`."""
    return {_clean(str(k)): _jsonable(v, path, _clean(str(k)), limits.max_depth) for k, v in items}


def _jsonable(value: Any, path: Path, field: str, max_depth: int, depth: int = 1) -> Any:
    """Make YAML/JSON values JSON-safe (dates to ISO, lone surrogates replaced) so metadata can be
    stored and hashed as JSON. `depth` counts the lists and mappings around `value`."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple | set | frozenset) and depth >= max_depth:
        raise _Rejected(
            path,
            f"metadata field '{field}' is nested deeper than {max_depth} levels "
            "(documents.max_metadata_depth)",
        )
    if isinstance(value, Mapping):
        return {
            _clean(str(k)): _jsonable(v, path, f"{field}.{k}", max_depth, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v, path, field, max_depth, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        items = (_jsonable(v, path, field, max_depth, depth + 1) for v in value)
        return sorted(items, key=str)
    raise DocumentError(path, f"field '{field}' has unsupported type {type(value).__name__}")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """JSON `\\udcff` and YAML `"\\udcff"` give lone surrogates, which neither UTF-8 nor SQLite
    can store; each becomes U+FFFD instead of failing the whole file."""
    return text if is_utf8(text) else _SURROGATE.sub("\ufffd", text)


def _check_metadata_size(path: Path, meta: Mapping[str, Any], limits: MetadataLimits) -> None:
    size = len(json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    if size > limits.max_kb * 1024:
        raise _Rejected(
            path,
            f"metadata is {size / 1024:.1f} KB, over the {limits.max_kb:g} KB limit "
            "(documents.max_metadata_kb)",
        )


_DATE_FORMATS = ("%d %B %Y", "%d %b %Y", "%B %d, %Y", "%b %d, %Y", "%Y/%m/%d")


def _iso_date(value: str) -> str:
    """ISO text so `date>=` filters compare dates; an unrecognised form is kept as written."""
    text = value.strip()
    for parse in (dt.date.fromisoformat, dt.datetime.fromisoformat):
        try:
            return parse(text).isoformat()
        except ValueError:
            continue
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    return text


def _split_list(value: str) -> list[str]:
    """Keyword fields are written `a, b` or `a; b`; both become a list of tags."""
    return [part.strip() for part in re.split(r"[,;]", value) if part.strip()]


_MAX_TITLE_LINE = 120
_SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_HASH_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


def _first_line_title(text: str) -> str | None:
    """The first line when it reads as a heading: short, standing alone or underlined.

    A line ending like a sentence (`.`, `,`, `;`, `:`) is a one-line paragraph, not a title.
    """
    lines = text.split("\n")
    first = lines[0].strip()
    if not first or len(first) > _MAX_TITLE_LINE or first.startswith(".."):
        return None
    following = lines[1] if len(lines) > 1 else None
    if match := _HASH_HEADING.match(first):
        return match.group(1)
    if following is not None and _SETEXT_UNDERLINE.match(following):
        return first
    if following is None or following.strip() or first[-1] in ".,;:":
        return None
    return first if any(ch.isalnum() for ch in first) else None


def _parse_text(path: Path, raw: str) -> tuple[str, str, dict[str, Any]]:
    text = _require_text(path, raw)
    return text, _first_line_title(text) or path.stem, {}


_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX_H1 = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$")


def _parse_markdown(
    path: Path, raw: str, limits: MetadataLimits
) -> tuple[str, str, dict[str, Any]]:
    meta, body = _split_front_matter(path, raw, limits)
    text = _require_text(path, body)
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        title = _markdown_heading(text) or path.stem
    return text, title.strip(), meta


def _split_front_matter(path: Path, raw: str, limits: MetadataLimits) -> tuple[dict[str, Any], str]:
    lines = raw.split("\n")
    if not lines or lines[0].rstrip() != "---":
        return {}, raw
    close = next(
        (i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")),
        None,
    )
    if close is None:
        raise DocumentError(path, "front matter starting on line 1 is never closed with '---'")
    block = "\n".join(lines[1:close])
    try:
        loaded, _ = load_yaml(block, limits.yaml)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" on line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, YamlLimitError):
            key = _YAML_LIMIT_KEYS.get(exc.limit)
            setting = f" ({key})" if key else ""
            raise DocumentError(path, f"front matter{line}: {problem}{setting}") from None
        raise DocumentError(path, f"invalid YAML front matter{line}: {problem}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise DocumentError(
            path,
            f"front matter must be a YAML mapping (key: value lines), got {type(loaded).__name__}",
        )
    return _metadata(loaded.items(), path, limits), "\n".join(lines[close + 1 :])


def _markdown_heading(text: str) -> str | None:
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence and (match := _ATX_H1.match(line)):
            return match.group(1)
    return None


_RST_ADORNMENT = re.compile(r"""^([=\-`:'"~^_*+#<>.])\1+\s*$""")
_RST_FIELD = re.compile(r"^:(?![:\s])([^:`]+?):(?:\s+(.*))?$")
_RST_LIST_FIELDS = frozenset({"tags", "keywords", "authors"})


def _parse_rst(path: Path, raw: str) -> tuple[str, str, dict[str, Any]]:
    lines = raw.strip("\n").split("\n")
    meta, lines = _rst_docinfo(lines)
    text = _require_text(path, "\n".join(lines))
    lines = text.split("\n")
    title = None
    for i in range(len(lines) - 1):
        candidate = lines[i].strip()
        under = lines[i + 1].rstrip()
        if (
            candidate
            and not _RST_ADORNMENT.match(candidate)
            and _RST_ADORNMENT.match(under)
            and len(under) >= len(candidate)
        ):
            title = candidate
            break
    return text, title or _first_line_title(text) or path.stem, meta


def _rst_title_end(lines: list[str], i: int) -> int:
    """Index after a title block (overlined or not) starting at `i`; `i` when there is none."""
    n = len(lines)
    if (
        i + 2 < n
        and _RST_ADORNMENT.match(lines[i].strip())
        and lines[i + 1].strip()
        and _RST_ADORNMENT.match(lines[i + 2].strip())
    ):
        return i + 3
    if i + 1 < n and lines[i].strip() and _RST_ADORNMENT.match(lines[i + 1].strip()):
        return i + 2
    return i


def _rst_docinfo(lines: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The field list right after the title (or at the very top) is docutils' docinfo.

    It is metadata, not prose, so it moves out of the text; `date` becomes ISO text and tags,
    keywords and authors become lists, matching what markdown front matter gives.
    """

    def skip_blank(i: int) -> int:
        while i < len(lines) and not lines[i].strip():
            i += 1
        return i

    start = skip_blank(_rst_title_end(lines, skip_blank(0)))
    fields: list[tuple[str, list[str]]] = []
    end = start
    while end < len(lines):
        line = lines[end]
        if match := _RST_FIELD.match(line):
            fields.append((match.group(1), [match.group(2) or ""]))
        elif fields and line[:1] in (" ", "\t") and line.strip():
            fields[-1][1].append(line.strip())
        else:
            break
        end += 1
    if not fields:
        return {}, lines
    meta: dict[str, Any] = {}
    for name, parts in fields:
        key = "_".join(name.lower().split())
        value = " ".join(part for part in parts if part)
        if not value:
            continue
        if key in _RST_LIST_FIELDS:
            key = "tags" if key == "keywords" else key
            meta[key] = [*meta.get(key, []), *_split_list(value)]
        elif key == "date":
            meta[key] = _iso_date(value)
        else:
            meta[key] = value
    return meta, lines[:start] + lines[skip_blank(end) :]


_HTML_DROP = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe"})
_HTML_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section",
        "summary", "table", "tbody", "thead", "tfoot", "tr", "ul",
    }
)  # fmt: skip
_HTML_CELL = frozenset({"td", "th"})
_HTML_CHROME = frozenset({"nav", "aside", "button"})
_HTML_PAGE_CHROME = frozenset({"header", "footer"})
_HTML_CONTENT = ("article", "main")
_HTML_CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search"})
_HTML_META: dict[str, str] = {
    "author": "author",
    "dc.creator": "author",
    "date": "date",
    "article:published_time": "date",
    "dc.date": "date",
    "dcterms.date": "date",
    "keywords": "tags",
    "description": "description",
}


def _parse_html(path: Path, raw: str) -> tuple[str, str, dict[str, Any], str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    # <head> is not part of the text, so only <title> is a title from outside the body.
    known = " ".join(title.split())
    if not title and (h1 := soup.find("h1")):
        title = h1.get_text(" ", strip=True)
    visible = _html_visible_text(soup, drop_chrome=True)
    if not visible.strip():
        visible = _html_visible_text(soup, drop_chrome=False)
    text = _require_text(path, visible)
    return text, " ".join(title.split()) or path.stem, _html_metadata(soup), known


def _html_metadata(soup: Any) -> dict[str, Any]:
    """`<meta name=...>` (or OpenGraph `property=`) and `<html lang>`; the first of each wins."""
    meta: dict[str, Any] = {}
    for tag in soup.find_all("meta"):
        name = str(tag.get("name") or tag.get("property") or "").strip().lower()
        key = _HTML_META.get(name)
        content = " ".join(str(tag.get("content") or "").split())
        if key is None or not content or key in meta:
            continue
        if key == "tags":
            meta[key] = _split_list(content)
        elif key == "date":
            meta[key] = _iso_date(content)
        else:
            meta[key] = content
    html = soup.find("html")
    lang = str(html.get("lang") or "").strip() if html is not None else ""
    if lang:
        meta["lang"] = lang
    return meta


def _is_html_chrome(node: Any) -> bool:
    """Navigation, banners, forms and hidden parts repeat on every page and drown the content.

    `<header>`/`<footer>` inside `<article>`/`<main>` hold the headline and byline, so they stay;
    a `<form>` wrapping the content (ASP.NET pages wrap the whole body) stays too.
    """
    name = node.name
    if name in _HTML_CHROME:
        return True
    if name == "form" and node.find(_HTML_CONTENT) is None:
        return True
    if name in _HTML_PAGE_CHROME and node.find_parent(_HTML_CONTENT) is None:
        return True
    if str(node.get("aria-hidden") or "").strip().lower() == "true":
        return True
    roles = node.get("role") or ""
    roles = roles.split() if isinstance(roles, str) else roles
    return any(role.lower() in _HTML_CHROME_ROLES for role in roles)


def _html_visible_text(soup: Any, *, drop_chrome: bool) -> str:
    """Iterative walk (deeply nested pages must not hit the recursion limit).

    Without `drop_chrome` it is the fallback for pages made only of chrome-like markup.
    """
    from bs4 import CData, NavigableString, Tag

    parts: list[str] = []
    stack: list[Any] = [soup]
    while stack:
        node = stack.pop()
        if isinstance(node, str) and not isinstance(node, NavigableString):
            parts.append(node)
        elif isinstance(node, NavigableString):
            if type(node) is NavigableString or isinstance(node, CData):
                raw = str(node)
                parts.append(raw if node.find_parent("pre") else re.sub(r"\s+", " ", raw))
        elif isinstance(node, Tag):
            name = node.name
            if (
                name in _HTML_DROP
                or node.has_attr("hidden")
                or (drop_chrome and _is_html_chrome(node))
            ):
                continue
            if name == "br":
                parts.append("\n")
                continue
            sep = "\n\n" if name in _HTML_BLOCK else (" " if name in _HTML_CELL else "")
            stack.append(sep)
            stack.extend(reversed(node.contents))
            stack.append(sep)
    joined = "".join(parts)
    joined = re.sub(r"[ \t\f\v]*\n[ \t\f\v]*", "\n", joined)
    joined = re.sub(r"[ \t\f\v]{2,}", " ", joined)
    return re.sub(r"\n{3,}", "\n\n", joined)


def _parse_pdf(path: Path, data: bytes) -> tuple[str, str, dict[str, Any], list[tuple[int, int]]]:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(path, "encrypted PDF (needs a password); save a decrypted copy")
        page_texts = [(page.extract_text() or "") for page in reader.pages]
        fields = _pdf_info(reader.metadata)
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises many unrelated types on malformed files
        raise DocumentError(path, f"unreadable PDF ({type(exc).__name__}: {exc})") from None
    parts: list[str] = []
    pages: list[tuple[int, int]] = []
    offset = 0
    for number, page_text in enumerate(page_texts, start=1):
        cleaned = page_text.replace("\r\n", "\n").replace("\r", "\n").strip()
        if not cleaned:
            continue
        if parts:
            offset += 2
        pages.append((number, offset))
        parts.append(cleaned)
        offset += len(cleaned)
    if not parts:
        raise DocumentError(path, "no extractable text (scanned PDF?)")
    meta: dict[str, Any] = {"page_count": len(page_texts)}
    for key in ("author", "subject"):
        if fields.get(key):
            meta[key] = fields[key]
    if tags := _split_list(fields.get("keywords", "")):
        meta["tags"] = tags
    if date := _pdf_date(fields.get("created", "")):
        meta["date"] = date
    return "\n\n".join(parts), fields.get("title", ""), meta, pages


def _pdf_info(info: Any) -> dict[str, str]:
    """The document-info strings that are set; pypdf resolves indirect objects and encodings."""
    if info is None:
        return {}
    raw = {
        "title": info.title,
        "author": info.author,
        "subject": info.subject,
        "keywords": info.keywords,
        "created": info.creation_date_raw,
    }
    return {key: " ".join(str(value).split()) for key, value in raw.items() if value}


_PDF_DATE = re.compile(
    r"^(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:(Z)|([+-])(\d{2})'?(\d{2})?'?)?"
)


def _pdf_date(raw: str) -> str | None:
    """PDF dates (`D:YYYYMMDDHHmmSS+HH'mm'`, every part after the year optional) as ISO text.

    A malformed date is dropped rather than failing the whole PDF: the text is what matters.
    """
    match = _PDF_DATE.match(raw)
    if match is None:
        return None
    year, month, day, hour, minute, second, zulu, sign, tz_h, tz_m = match.groups()
    try:
        if hour is None:
            return dt.date(int(year), int(month or 1), int(day or 1)).isoformat()
        tz = None
        if zulu:
            tz = dt.UTC
        elif sign:
            offset = dt.timedelta(hours=int(tz_h), minutes=int(tz_m or 0))
            tz = dt.timezone(-offset if sign == "-" else offset)
        stamp = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0),
            tzinfo=tz,
        )  # fmt: skip
    except ValueError:
        return None
    return stamp.isoformat()


def _row_from_mapping(
    path: Path, obj: Mapping[str, Any], where: str, fallback_id: int, limits: MetadataLimits
) -> _Row | None:
    """BEIR layout: `_id` (or `id`), `title`, `text`; every other field becomes metadata."""
    text = obj.get("text")
    if text is None:
        fields = ", ".join(map(str, obj)) or "none"
        raise DocumentError(path, f"{where} has no 'text' field (fields: {_clip(fields)})")
    if not isinstance(text, str):
        raise DocumentError(path, f"{where}: 'text' must be a string, got {type(text).__name__}")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise DocumentError(path, f"{where}: 'title' must be a string, got {type(title).__name__}")
    raw_id = obj.get("_id", obj.get("id"))
    if isinstance(raw_id, dict | list | bool) or raw_id == "":
        raise DocumentError(path, f"{where}: id must be a string or number, got {raw_id!r}")
    row_id = str(fallback_id) if raw_id is None else _clean(str(raw_id))
    fields = ((k, v) for k, v in obj.items() if k not in ("_id", "id", "title", "text"))
    meta = _metadata(fields, path, limits)
    return _make_row(path, row_id, _clean(title), _clean(text), meta, limits)


def _clip(text: str, limit: int = 200) -> str:
    """Field and column lists go into one-line messages; a broken file can make them huge."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _make_row(
    path: Path, row_id: str, title: str, text: str, meta: dict[str, Any], limits: MetadataLimits
) -> _Row | None:
    """Rows with an empty text but a title (BEIR has some) are indexed by their title; a row
    with neither is None, so one blank row skips itself instead of failing the whole file."""
    title = title.strip()
    body = text.strip() or title
    if not body:
        return None
    _check_metadata_size(path, meta, limits)
    # A title that became the body is not repeated in front of it (BEIR's `title + " "` too).
    indexed_title = title if text.strip() else ""
    if not title:
        first_line = body.split("\n", 1)[0]
        title = first_line if len(first_line) <= 80 else first_line[:79].rstrip() + "…"
    return _Row(row_id, title, body, meta, indexed_title)


# A row as parsed: the row, None for a blank one, or the reason it was left out.
_Parsed = tuple[_Row | str | None, str]


def _check_unique(
    path: Path, rows: Iterable[_Parsed], skipped: list[DocumentError] | None
) -> list[_Row]:
    seen: dict[str, str] = {}
    out: list[_Row] = []
    refused: list[str] = []
    for row, where in rows:
        if not isinstance(row, _Row):
            if row:
                refused.append(f"{where}: {row}")
            if skipped is not None:
                reason = row or "empty row (no title or text)"
                skipped.append(DocumentError(path, f"{where}: {reason}"))
            continue
        if row.row_id in seen:
            raise DocumentError(
                path, f"duplicate id {row.row_id!r} at {where} (first at {seen[row.row_id]})"
            )
        seen[row.row_id] = where
        out.append(row)
    if not out and refused:
        more = f" (and {len(refused) - 1} more rows)" if len(refused) > 1 else ""
        raise DocumentError(path, f"no row left to index: {refused[0]}{more}")
    if not out:
        raise DocumentError(path, "empty document (no rows)")
    return out


def _parse_jsonl(
    path: Path, raw: str, limits: MetadataLimits, skipped: list[DocumentError] | None
) -> list[_Row]:
    def rows() -> Iterable[_Parsed]:
        for number, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                obj = _json_value(path, line, number)
            except _Rejected as exc:
                yield exc.reason, where
                continue
            if not isinstance(obj, dict):
                raise DocumentError(
                    path, f"line {number} is not a JSON object (got {type(obj).__name__})"
                )
            yield _row_or_reason(path, obj, where, number, limits), where

    return _check_unique(path, rows(), skipped)


def _json_value(path: Path, text: str, line: int | None = None) -> Any:
    """`json.loads` with its non-JSON failures made into reasons: nesting past the interpreter's
    recursion limit (one row) and integers of more than 4,300 digits (the file). `line` is the
    line of a jsonl row; a whole JSON file's errors carry their own."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            path, f"invalid JSON on line {line or exc.lineno}: {exc.msg} (column {exc.colno})"
        ) from None
    except RecursionError:
        raise _Rejected(path, "JSON nested too deeply to parse") from None
    except ValueError as exc:
        where = f" on line {line}" if line else ""
        raise DocumentError(path, f"invalid JSON{where}: {exc}") from None


def _row_or_reason(
    path: Path, obj: Mapping[str, Any], where: str, fallback_id: int, limits: MetadataLimits
) -> _Row | str | None:
    try:
        return _row_from_mapping(path, obj, where, fallback_id, limits)
    except _Rejected as exc:
        return exc.reason


def _parse_json(
    path: Path, raw: str, limits: MetadataLimits, skipped: list[DocumentError] | None
) -> list[_Row]:
    loaded = _json_value(path, raw)
    items = [loaded] if isinstance(loaded, dict) else loaded
    if not isinstance(items, list):
        raise DocumentError(
            path, f"JSON must be an object or a list of objects, got {type(loaded).__name__}"
        )

    def rows() -> Iterable[_Parsed]:
        for number, obj in enumerate(items, start=1):
            where = f"item {number}"
            if not isinstance(obj, dict):
                raise DocumentError(
                    path, f"{where} is not a JSON object (got {type(obj).__name__})"
                )
            yield _row_or_reason(path, obj, where, number, limits), where

    return _check_unique(path, rows(), skipped)


def _parse_csv(
    path: Path,
    raw: str,
    columns: tuple[str, str, str],
    max_bytes: int,
    limits: MetadataLimits,
    skipped: list[DocumentError] | None,
) -> list[_Row]:
    text_column, id_column, title_column = columns
    csv.field_size_limit(max(csv.field_size_limit(), max_bytes))
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise DocumentError(path, f"invalid CSV header: {exc}") from None
    if text_column not in header:
        listed = _clip(", ".join(header)) or "none"
        raise DocumentError(
            path,
            f"CSV has no {text_column!r} column (columns: {listed}); set documents.csv_text_column",
        )

    def row(number: int, line: int, record: dict[str, Any]) -> _Parsed:
        where = f"line {line}"
        if None in record:
            raise DocumentError(path, f"{where} has more fields than the header")
        row_id = (record.get(id_column) or "").strip() or str(number)
        fields = ((k, v) for k, v in record.items() if k not in columns)
        try:
            meta = _metadata(fields, path, limits)
            title = record.get(title_column) or ""
            text = record.get(text_column) or ""
            return _make_row(path, row_id, title, text, meta, limits), where
        except _Rejected as exc:
            return exc.reason, where

    def rows() -> Iterable[_Parsed]:
        # Each record is yielded once the next one starts: only the last can end inside quotes.
        pending: tuple[int, int, dict[str, Any]] | None = None
        start = reader.line_num + 1
        try:
            for number, record in enumerate(reader, start=1):
                if pending is not None:
                    yield row(*pending)
                pending = (number, start, record)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DocumentError(path, f"invalid CSV on line {start}: {exc}") from None
        if pending is None:
            return
        first = pending[1]
        if _ends_inside_quotes(raw, first):
            yield (
                f"a quoted field opened on line {first} is never closed, so lines {first}-"
                f"{reader.line_num} would be one row; close the quote (a quote inside a "
                'quoted field is written twice: "")',
                f"line {first}",
            )
        else:
            yield row(*pending)

    return _check_unique(path, rows(), skipped)


def _ends_inside_quotes(raw: str, first_line: int) -> bool:
    """Whether the record starting on `first_line` (the last) runs into the end of the file
    inside a quoted field. Python's lenient CSV reader accepts that silently; the strict one
    raises "unexpected end of data", but also rejects forms the lenient one reads, so only that
    error counts."""
    tail = raw.split("\n", first_line - 1)[-1]
    try:
        for _ in csv.reader(io.StringIO(tail, newline=""), strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


_TEXT_PARSERS: dict[str, Callable[[Path, str], tuple[str, str, dict[str, Any]]]] = {
    "text": _parse_text,
    "rst": _parse_rst,
}
