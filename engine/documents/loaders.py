"""Turn files on disk into `LoadedDocument`s: one per file, or one per row of jsonl/json/csv.

Every failure is a `DocumentError` naming the file and a reason a user can act on, so the indexer
can report bad files and carry on with the rest.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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

_BINARY_PROBE = 8192
_MB = 1_000_000
_FILE_FIELDS = ("path", "type", "size", "mtime", "modified")


class DocumentError(ValueError):
    """A file that cannot be indexed; `reason` is written for the user, not for a traceback."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


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


def file_fingerprint(path: Path) -> str:
    """sha256 of the raw bytes, so unchanged files can be skipped without parsing them."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DocumentError(path, _os_reason(exc)) from exc
    return digest.hexdigest()


def load_file(
    path: Path,
    root: Path,
    *,
    max_bytes: int = 10_000_000,
    csv_text_column: str = "text",
    csv_id_column: str = "id",
    csv_title_column: str = "title",
) -> list[LoadedDocument]:
    """Load one file; unknown suffixes (picked up by include globs) are read as plain text."""
    info = _file_info(path, root)
    if info.size == 0:
        raise DocumentError(path, "empty file")
    if info.size > max_bytes:
        raise DocumentError(path, _oversize_reason(info.size, max_bytes))
    data = _read_bytes(path, max_bytes)
    if info.doc_type == "pdf":
        text, title, meta, pages = _parse_pdf(path, data)
        return [_single(info, title, text, meta, pages)]
    raw = _decode(path, data)
    if info.doc_type == "jsonl":
        return _rows_to_documents(info, _parse_jsonl(path, raw))
    if info.doc_type == "json":
        return _rows_to_documents(info, _parse_json(path, raw))
    if info.doc_type == "csv":
        rows = _parse_csv(path, raw, csv_text_column, csv_id_column, csv_title_column, max_bytes)
        return _rows_to_documents(info, rows)
    parse: Callable[[Path, str], tuple[str, str, dict[str, Any]]] = _TEXT_PARSERS.get(
        info.doc_type, _parse_text
    )
    text, title, meta = parse(path, raw)
    return [_single(info, title, text, meta, None)]


def _file_info(path: Path, root: Path) -> _FileInfo:
    try:
        stat = path.stat()
    except OSError as exc:
        raise DocumentError(path, _os_reason(exc)) from exc
    if path.is_dir():
        raise DocumentError(path, "is a directory, not a file")
    abs_path = path.resolve()
    abs_root = root.resolve()
    if abs_root == abs_path or abs_root.is_file():
        rel = abs_path.name
    else:
        try:
            rel = abs_path.relative_to(abs_root).as_posix()
        except ValueError:
            raise DocumentError(path, f"not inside the indexed folder {root}") from None
    doc_type = TYPE_BY_SUFFIX.get(path.suffix.lower(), "text")
    return _FileInfo(rel, doc_type, stat.st_size, stat.st_mtime)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file not found (moved or deleted?)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot read file: {exc.strerror or exc}"


def _oversize_reason(size: int, max_bytes: int) -> str:
    return (
        f"file is {size / _MB:.1f} MB, over the {max_bytes / _MB:.1f} MB limit "
        "(documents.max_file_mb)"
    )


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as handle:
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
    info: _FileInfo,
    title: str,
    text: str,
    meta: dict[str, Any],
    pages: list[tuple[int, int]] | None,
) -> LoadedDocument:
    return LoadedDocument(
        key=info.rel,
        path=info.rel,
        title=title,
        doc_type=info.doc_type,
        text=text,
        metadata=_with_file_fields(meta, info),
        size=info.size,
        mtime=info.mtime,
        content_hash=_content_hash(title, text, meta),
        pages=pages,
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
            content_hash=_content_hash(row.title, row.text, row.metadata),
            pages=None,
        )
        for row in rows
    ]


def _with_file_fields(meta: Mapping[str, Any], info: _FileInfo) -> dict[str, Any]:
    """File facts win over same-named user fields: filters on `type` or `path` must be reliable."""
    merged = {k: v for k, v in meta.items() if k not in _FILE_FIELDS}
    merged["path"] = info.rel
    merged["type"] = info.doc_type
    merged["size"] = info.size
    merged["mtime"] = info.mtime
    merged["modified"] = dt.datetime.fromtimestamp(info.mtime, tz=dt.UTC).isoformat(
        timespec="seconds"
    )
    return merged


def _content_hash(title: str, text: str, meta: Mapping[str, Any]) -> str:
    """Hash only what belongs to this document, so editing one row leaves its siblings' hashes."""
    own = {k: v for k, v in meta.items() if k not in _FILE_FIELDS}
    payload = json.dumps(
        {"title": title, "text": text, "metadata": own}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _jsonable(value: Any, path: Path, field: str) -> Any:
    """Make YAML values JSON-safe (dates to ISO) so metadata can be stored and hashed as JSON."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, path, f"{field}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, path, field) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v, path, field) for v in value), key=str)
    raise DocumentError(path, f"field '{field}' has unsupported type {type(value).__name__}")


def _parse_text(path: Path, raw: str) -> tuple[str, str, dict[str, Any]]:
    return _require_text(path, raw), path.stem, {}


_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX_H1 = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$")


def _parse_markdown(path: Path, raw: str) -> tuple[str, str, dict[str, Any]]:
    meta, body = _split_front_matter(path, raw)
    text = _require_text(path, body)
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        title = _markdown_heading(text) or path.stem
    return text, title.strip(), meta


def _split_front_matter(path: Path, raw: str) -> tuple[dict[str, Any], str]:
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
        loaded = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" on line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(path, f"invalid YAML front matter{line}: {problem}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise DocumentError(
            path,
            f"front matter must be a YAML mapping (key: value lines), got {type(loaded).__name__}",
        )
    meta = {str(k): _jsonable(v, path, str(k)) for k, v in loaded.items()}
    return meta, "\n".join(lines[close + 1 :])


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


def _parse_rst(path: Path, raw: str) -> tuple[str, str, dict[str, Any]]:
    text = _require_text(path, raw)
    lines = text.split("\n")
    title = path.stem
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
    return text, title, {}


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


def _parse_html(path: Path, raw: str) -> tuple[str, str, dict[str, Any]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and (h1 := soup.find("h1")):
        title = h1.get_text(" ", strip=True)
    text = _require_text(path, _html_visible_text(soup))
    return text, " ".join(title.split()) or path.stem, {}


def _html_visible_text(soup: Any) -> str:
    """Iterative walk (deeply nested pages must not hit the recursion limit)."""
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
            if name in _HTML_DROP or node.has_attr("hidden"):
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
        info = reader.metadata
        meta_title = (info.title or "") if info is not None else ""
        author = (info.author or "") if info is not None else ""
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
    if author.strip():
        meta["author"] = author.strip()
    return "\n\n".join(parts), meta_title.strip() or path.stem, meta, pages


def _row_from_mapping(path: Path, obj: Mapping[str, Any], where: str, fallback_id: int) -> _Row:
    """BEIR layout: `_id` (or `id`), `title`, `text`; every other field becomes metadata."""
    text = obj.get("text")
    if text is None:
        fields = ", ".join(map(str, obj)) or "none"
        raise DocumentError(path, f"{where} has no 'text' field (fields: {fields})")
    if not isinstance(text, str):
        raise DocumentError(path, f"{where}: 'text' must be a string, got {type(text).__name__}")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise DocumentError(path, f"{where}: 'title' must be a string, got {type(title).__name__}")
    raw_id = obj.get("_id", obj.get("id"))
    if isinstance(raw_id, dict | list | bool) or raw_id == "":
        raise DocumentError(path, f"{where}: id must be a string or number, got {raw_id!r}")
    row_id = str(fallback_id) if raw_id is None else str(raw_id)
    meta = {
        str(k): _jsonable(v, path, str(k))
        for k, v in obj.items()
        if k not in ("_id", "id", "title", "text")
    }
    return _make_row(path, row_id, title, text, meta, where)


def _make_row(
    path: Path, row_id: str, title: str, text: str, meta: dict[str, Any], where: str
) -> _Row:
    """Rows with an empty text but a title (BEIR has some) are indexed by their title."""
    title = title.strip()
    body = text.strip() or title
    if not body:
        raise DocumentError(path, f"empty document ({where}, id {row_id!r})")
    if not title:
        first_line = body.split("\n", 1)[0]
        title = first_line if len(first_line) <= 80 else first_line[:79].rstrip() + "…"
    return _Row(row_id, title, body, meta)


def _check_unique(path: Path, rows: Iterable[tuple[_Row, str]]) -> list[_Row]:
    seen: dict[str, str] = {}
    out: list[_Row] = []
    for row, where in rows:
        if row.row_id in seen:
            raise DocumentError(
                path, f"duplicate id {row.row_id!r} at {where} (first at {seen[row.row_id]})"
            )
        seen[row.row_id] = where
        out.append(row)
    if not out:
        raise DocumentError(path, "empty document (no rows)")
    return out


def _parse_jsonl(path: Path, raw: str) -> list[_Row]:
    def rows() -> Iterable[tuple[_Row, str]]:
        for number, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocumentError(
                    path, f"invalid JSON on line {number}: {exc.msg} (column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise DocumentError(
                    path, f"line {number} is not a JSON object (got {type(obj).__name__})"
                )
            yield _row_from_mapping(path, obj, where, number), where

    return _check_unique(path, rows())


def _parse_json(path: Path, raw: str) -> list[_Row]:
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            path, f"invalid JSON on line {exc.lineno}: {exc.msg} (column {exc.colno})"
        ) from None
    items = [loaded] if isinstance(loaded, dict) else loaded
    if not isinstance(items, list):
        raise DocumentError(
            path, f"JSON must be an object or a list of objects, got {type(loaded).__name__}"
        )

    def rows() -> Iterable[tuple[_Row, str]]:
        for number, obj in enumerate(items, start=1):
            where = f"item {number}"
            if not isinstance(obj, dict):
                raise DocumentError(
                    path, f"{where} is not a JSON object (got {type(obj).__name__})"
                )
            yield _row_from_mapping(path, obj, where, number), where

    return _check_unique(path, rows())


def _parse_csv(
    path: Path,
    raw: str,
    text_column: str,
    id_column: str,
    title_column: str,
    max_bytes: int,
) -> list[_Row]:
    csv.field_size_limit(max(csv.field_size_limit(), max_bytes))
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    try:
        columns = reader.fieldnames or []
    except csv.Error as exc:
        raise DocumentError(path, f"invalid CSV header: {exc}") from None
    if text_column not in columns:
        listed = ", ".join(columns) or "none"
        raise DocumentError(
            path,
            f"CSV has no {text_column!r} column (columns: {listed}); set documents.csv_text_column",
        )

    def rows() -> Iterable[tuple[_Row, str]]:
        try:
            for number, record in enumerate(reader, start=1):
                where = f"line {reader.line_num}"
                if None in record:
                    raise DocumentError(path, f"{where} has more fields than the header")
                row_id = (record.get(id_column) or "").strip() or str(number)
                meta = {
                    k: v
                    for k, v in record.items()
                    if k not in (text_column, id_column, title_column)
                }
                title = record.get(title_column) or ""
                text = record.get(text_column) or ""
                yield _make_row(path, row_id, title, text, meta, where), where
        except csv.Error as exc:
            raise DocumentError(path, f"invalid CSV on line {reader.line_num}: {exc}") from None

    return _check_unique(path, rows())


_TEXT_PARSERS: dict[str, Callable[[Path, str], tuple[str, str, dict[str, Any]]]] = {
    "text": _parse_text,
    "markdown": _parse_markdown,
    "rst": _parse_rst,
    "html": _parse_html,
}
