"""Loaders and discovery on real files written to tmp_path (and the real SciFact corpus)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pypdf
import pytest
from conftest import DATASETS, REPO

from engine.documents import (
    SUPPORTED_SUFFIXES,
    DocumentError,
    LoadedDocument,
    discover,
    file_fingerprint,
    load_file,
    page_for_offset,
)


def pdf_bytes(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text line per string, one content stream per page."""
    objects: list[str] = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids: list[str] = []
    for lines in pages:
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops)
        objects.append(
            f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream"
        )
        content = len(objects)
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    if title is not None:
        objects.append(f"<< /Title ({title}) >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    info = f" /Info {len(objects)} 0 R" if title is not None else ""
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def load_one(path: Path, root: Path, **kwargs: object) -> LoadedDocument:
    docs = load_file(path, root, **kwargs)  # type: ignore[arg-type]
    assert len(docs) == 1
    return docs[0]


def reason(path: Path, root: Path, **kwargs: object) -> str:
    with pytest.raises(DocumentError) as info:
        load_file(path, root, **kwargs)  # type: ignore[arg-type]
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    return info.value.reason


def test_plain_text_document_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "notes" / "todo.txt", "Buy milk.\r\nCall Ann.\n")
    doc = load_one(path, tmp_path)
    assert doc.key == doc.path == "notes/todo.txt"
    assert (doc.title, doc.doc_type, doc.text) == ("todo", "text", "Buy milk.\nCall Ann.")
    assert doc.size == path.stat().st_size and doc.mtime == path.stat().st_mtime
    assert doc.pages is None
    meta = doc.metadata
    assert (meta["path"], meta["type"], meta["size"]) == ("notes/todo.txt", "text", doc.size)
    assert meta["mtime"] == doc.mtime and meta["modified"].startswith("20")
    json.dumps(meta)
    assert len(doc.content_hash) == 64
    again = load_one(path, tmp_path)
    assert again.content_hash == doc.content_hash
    write(path, "Buy oat milk.\n")
    assert load_one(path, tmp_path).content_hash != doc.content_hash


def test_markdown_front_matter_and_titles(tmp_path: Path) -> None:
    path = write(
        tmp_path / "post.md",
        "---\ntitle: Release notes\ndate: 2024-03-05\ntags: [a, b]\ntype: blog\n---\n"
        "# Heading one\n\nBody text.\n",
    )
    doc = load_one(path, tmp_path)
    assert doc.title == "Release notes" and doc.doc_type == "markdown"
    assert doc.text == "# Heading one\n\nBody text."
    assert doc.metadata["date"] == "2024-03-05"
    assert doc.metadata["tags"] == ["a", "b"]
    assert doc.metadata["type"] == "markdown"
    json.dumps(doc.metadata)

    fenced = write(tmp_path / "b.markdown", "```sh\n# not a title\n```\n\n# Real Title #\n\nText")
    assert load_one(fenced, tmp_path).title == "Real Title"
    plain = write(tmp_path / "plain-notes.md", "Just text, no heading.")
    assert load_one(plain, tmp_path).title == "plain-notes"


def test_markdown_bad_front_matter_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.md", "---\ntitle: ok\ntags: [unclosed\nother: 1\n---\nBody\n")
    message = reason(path, tmp_path)
    assert message.startswith("invalid YAML front matter on line ")
    assert int(message.split("on line ")[1].split(":")[0]) in (4, 5)
    unclosed = write(tmp_path / "open.md", "---\ntitle: x\nBody without end\n")
    assert "never closed" in reason(unclosed, tmp_path)
    listy = write(tmp_path / "list.md", "---\n- a\n- b\n---\nBody\n")
    assert "must be a YAML mapping" in reason(listy, tmp_path)


def test_rst_title_from_underlined_heading(tmp_path: Path) -> None:
    path = write(
        tmp_path / "guide.rst",
        ".. comment\n\n=========\nUser Guide\n==========\n\nIntro\n-----\n\nSome text.\n",
    )
    doc = load_one(path, tmp_path)
    assert (doc.title, doc.doc_type) == ("User Guide", "rst")
    no_title = write(tmp_path / "loose.rst", "Just a paragraph.\n")
    assert load_one(no_title, tmp_path).title == "loose"


def test_html_visible_text_only(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>Page  Title</title>
    <style>body { color: red }</style><script>var hidden = 1;</script></head>
    <body><noscript>enable js</noscript><template><p>tpl</p></template>
    <h1>Main heading</h1><p>First   paragraph with <b>bold</b> text.</p>
    <!-- a comment --><div hidden>secret div</div>
    <p>Second<br>line two</p><ul><li>item one</li><li>item two</li></ul>
    <table><tr><td>cell a</td><td>cell b</td></tr></table>
    <script>console.log("late")</script></body></html>"""
    doc = load_one(write(tmp_path / "page.html", html), tmp_path)
    assert doc.title == "Page Title" and doc.doc_type == "html"
    for noise in ("color", "hidden = 1", "enable js", "tpl", "comment", "secret", "late"):
        assert noise not in doc.text
    assert "Main heading\n\nFirst paragraph with bold text.\n\nSecond\nline two" in doc.text
    assert "item one\n\nitem two" in doc.text
    assert "cell a cell b" in doc.text
    assert "\n\n\n" not in doc.text
    no_title = write(tmp_path / "x.htm", "<body><h1>Only H1</h1><p>t</p></body>")
    assert load_one(no_title, tmp_path).title == "Only H1"


def test_pdf_pages_and_offsets(tmp_path: Path) -> None:
    data = pdf_bytes(
        [["First page line one.", "Second line (A)."], ["Page two text here."]], title="My Report"
    )
    doc = load_one(write(tmp_path / "docs" / "report.pdf", data), tmp_path)
    assert (doc.key, doc.title, doc.doc_type) == ("docs/report.pdf", "My Report", "pdf")
    assert doc.pages is not None and [n for n, _ in doc.pages] == [1, 2]
    second = doc.pages[1][1]
    assert doc.text[: doc.pages[0][1] + 10] == "First page"
    assert "Second line (A)." in doc.text[:second]
    assert doc.text[second:] == "Page two text here."
    assert doc.text[second - 2 : second] == "\n\n"
    assert doc.metadata["page_count"] == 2
    assert page_for_offset(doc.pages, 0) == 1
    assert page_for_offset(doc.pages, second - 1) == 1
    assert page_for_offset(doc.pages, second) == 2
    assert page_for_offset(doc.pages, len(doc.text) - 1) == 2
    assert page_for_offset(None, 5) is None
    untitled = load_one(write(tmp_path / "plain.pdf", pdf_bytes([["x y z"]])), tmp_path)
    assert untitled.title == "plain"


def test_pdf_failures(tmp_path: Path) -> None:
    source = write(tmp_path / "src.pdf", pdf_bytes([["Secret text."]]))
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(source))
    writer.encrypt("pw", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    locked = write(tmp_path / "locked.pdf", buffer.getvalue())
    assert reason(locked, tmp_path).startswith("encrypted PDF")

    open_writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(source))
    open_writer.encrypt("", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    open_writer.write(buffer)
    restricted = write(tmp_path / "restricted.pdf", buffer.getvalue())
    assert load_one(restricted, tmp_path).text == "Secret text."

    broken = write(tmp_path / "broken.pdf", b"%PDF-1.4\nnot really a pdf")
    assert reason(broken, tmp_path).startswith("unreadable PDF")
    scanned = write(tmp_path / "scan.pdf", pdf_bytes([[], []]))
    assert reason(scanned, tmp_path) == "no extractable text (scanned PDF?)"


def test_beir_jsonl_rows(tmp_path: Path) -> None:
    rows = [
        {"_id": "d1", "title": "Alpha", "text": "First text.", "year": 2020, "tags": ["x"]},
        {"_id": 7, "title": "", "text": "Second text, no title.\nMore."},
        {"_id": "d3", "title": "Title only", "text": "  "},
    ]
    path = write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = load_file(path, tmp_path)
    assert [d.key for d in docs] == ["corpus.jsonl#d1", "corpus.jsonl#7", "corpus.jsonl#d3"]
    assert {d.path for d in docs} == {"corpus.jsonl"}
    assert docs[0].metadata["year"] == 2020 and docs[0].metadata["tags"] == ["x"]
    assert "_id" not in docs[0].metadata and "text" not in docs[0].metadata
    assert docs[0].metadata["type"] == "jsonl"
    assert docs[1].title == "Second text, no title."
    assert docs[2].text == "Title only"

    rows[1]["text"] = "Second text, edited."
    write(path, "\n".join(json.dumps(r) for r in rows))
    edited = load_file(path, tmp_path)
    assert edited[0].content_hash == docs[0].content_hash
    assert edited[2].content_hash == docs[2].content_hash
    assert edited[1].content_hash != docs[1].content_hash


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    good = json.dumps({"_id": "a", "text": "t"})
    bad = write(tmp_path / "bad.jsonl", f"{good}\n\n{{'_id': 'b'}}\n")
    assert reason(bad, tmp_path).startswith("invalid JSON on line 3: ")
    not_object = write(tmp_path / "arr.jsonl", f"{good}\n[1, 2]\n")
    assert reason(not_object, tmp_path) == "line 2 is not a JSON object (got list)"
    no_text = write(tmp_path / "nt.jsonl", '{"_id": "x", "body": "b"}\n')
    assert reason(no_text, tmp_path) == "line 1 has no 'text' field (fields: _id, body)"
    dup = write(tmp_path / "dup.jsonl", f"{good}\n{good}\n")
    assert reason(dup, tmp_path) == "duplicate id 'a' at line 2 (first at line 1)"
    empty_row = write(tmp_path / "er.jsonl", '{"_id": "e", "title": "", "text": " "}\n')
    assert reason(empty_row, tmp_path) == "empty document (no rows)"


def test_blank_row_is_skipped_and_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "rows.jsonl",
        '{"_id": "a", "title": "A", "text": "alpha"}\n'
        '{"_id": "b", "title": "", "text": "  "}\n'
        '{"_id": "c", "title": "C", "text": "gamma"}\n',
    )
    skipped: list[DocumentError] = []
    docs = load_file(path, tmp_path, skipped=skipped)
    assert [d.key for d in docs] == ["rows.jsonl#a", "rows.jsonl#c"]
    assert [e.reason for e in skipped] == ["line 2: empty row (no title or text)"]


def test_json_list_and_single_object(tmp_path: Path) -> None:
    listed = write(
        tmp_path / "items.json",
        json.dumps([{"id": "a", "text": "one", "lang": "en"}, {"text": "two"}]),
    )
    docs = load_file(listed, tmp_path)
    assert [d.key for d in docs] == ["items.json#a", "items.json#2"]
    assert docs[0].metadata["lang"] == "en" and docs[1].text == "two"
    single = write(tmp_path / "one.json", json.dumps({"_id": "z", "title": "T", "text": "body"}))
    assert load_one(single, tmp_path).key == "one.json#z"
    bad = write(tmp_path / "bad.json", '[\n  {"text": "a"},\n  {"text": }\n]')
    assert reason(bad, tmp_path).startswith("invalid JSON on line 3: ")
    scalar = write(tmp_path / "num.json", "42")
    assert "object or a list of objects" in reason(scalar, tmp_path)


def test_csv_custom_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "faq.csv",
        'qid,question,answer,lang\nq1,What is it?,"A tool,\nwith two lines.",en\n'
        "q2,Why?,Because.,fr\n",
    )
    docs = load_file(
        path, tmp_path, csv_text_column="answer", csv_id_column="qid", csv_title_column="question"
    )
    assert [d.key for d in docs] == ["faq.csv#q1", "faq.csv#q2"]
    assert docs[0].title == "What is it?" and docs[0].text == "A tool,\nwith two lines."
    assert docs[0].metadata["lang"] == "en" and "answer" not in docs[0].metadata
    assert docs[1].metadata["type"] == "csv"
    assert reason(path, tmp_path) == (
        "CSV has no 'text' column (columns: qid, question, answer, lang); "
        "set documents.csv_text_column"
    )
    ragged = write(tmp_path / "ragged.csv", "id,text\n1,a,extra\n")
    assert reason(ragged, tmp_path) == "line 2 has more fields than the header"


def test_bad_file_reasons(tmp_path: Path) -> None:
    binary = write(tmp_path / "blob.txt", b"abc\x00def")
    assert reason(binary, tmp_path) == "binary file (NUL bytes in first 8 KiB)"
    latin = write(tmp_path / "latin.md", b"caf" + "é".encode("latin-1") + b" ok")
    assert reason(latin, tmp_path) == "not valid UTF-8 at byte 3 (re-save the file as UTF-8)"
    utf16 = write(tmp_path / "wide.txt", "hello".encode("utf-16"))
    assert "UTF-16" in reason(utf16, tmp_path)
    empty = write(tmp_path / "empty.txt", b"")
    assert reason(empty, tmp_path) == "empty file"
    blank = write(tmp_path / "blank.txt", " \n\t\n")
    assert reason(blank, tmp_path).startswith("empty document")
    big = write(tmp_path / "big.txt", "x" * (2 * 1024 * 1024 + 1))
    assert reason(big, tmp_path, max_bytes=1024 * 1024) == (
        "file is 2.0 MB, over the 1 MB limit (documents.max_file_mb)"
    )
    assert reason(tmp_path / "missing.txt", tmp_path).startswith("file not found")
    outside = write(tmp_path / "a" / "x.txt", "text")
    assert reason(outside, tmp_path / "b").startswith("not inside the indexed folder")


PERMISSION_PROBE = """
import json, sys
from pathlib import Path
from engine.documents import DocumentError, load_file
try:
    load_file(Path(sys.argv[1]), Path(sys.argv[2]))
except DocumentError as exc:
    print(json.dumps({"path": exc.path, "reason": exc.reason, "message": str(exc)}))
"""


def test_permission_denied() -> None:
    """The read runs in a subprocess as an unprivileged user: root reads any file, so a test
    run as root would otherwise never see the error."""
    # Not tmp_path: pytest's base temp dir is private to its owner, and the unprivileged user
    # must reach the folder so that only the file itself is refused.
    folder = Path(tempfile.mkdtemp(prefix="embedscope-perm-"))
    try:
        folder.chmod(0o755)
        path = write(folder / "secret.txt", "text")
        path.chmod(0)
        command = [sys.executable, "-c", PERMISSION_PROBE, str(path), str(folder)]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        proc = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(folder), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        error = json.loads(proc.stdout)
        assert error["path"] == str(path)
        assert error["reason"] == "permission denied"
        assert error["message"].startswith(f"{path}: ")
    finally:
        shutil.rmtree(folder)


def test_unknown_suffix_is_read_as_text_and_fingerprint(tmp_path: Path) -> None:
    path = write(tmp_path / "server.log", "line one\nline two\n")
    doc = load_one(path, tmp_path)
    assert (doc.doc_type, doc.text) == ("text", "line one\nline two")
    first = file_fingerprint(path)
    assert first == file_fingerprint(path) and len(first) == 64
    write(path, "line one\nline 2\n")
    assert file_fingerprint(path) != first
    with pytest.raises(DocumentError, match="file not found"):
        file_fingerprint(tmp_path / "nope.txt")


def test_real_scifact_corpus() -> None:
    corpus = DATASETS / "scifact" / "corpus.jsonl"
    docs = load_file(corpus, DATASETS)
    with corpus.open(encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert len(docs) == 5183
    assert docs[0].key == f"scifact/corpus.jsonl#{first['_id']}"
    assert docs[0].title == first["title"] and docs[0].text == first["text"].strip()
    assert len({d.key for d in docs}) == len(docs)
    assert len({d.content_hash for d in docs}) == len(docs)


def test_discover_include_exclude_and_ignore_files(tmp_path: Path) -> None:
    for rel in (
        "a.md", "b.txt", "image.png", "notes.log", "Makefile",
        "docs/guide.rst", "docs/page.html", "docs/draft.md", "docs/keep.md", "docs/build/out.txt",
        "data/rows.jsonl", "data/table.csv", "data/old/x.json",
        ".git/config.txt", ".hidden/h.md", "docs/.secret.md", "node_modules/pkg/readme.md",
    ):  # fmt: skip
        write(tmp_path / rel, "content")
    write(tmp_path / ".gitignore", "node_modules/\n*.log\n")
    write(tmp_path / "docs" / ".gitignore", "draft.md\nbuild/\n*.md\n!keep.md\n")
    write(tmp_path / "data" / ".embedscopeignore", "/old/\n")

    def rels(found: list[Path]) -> list[str]:
        return [p.relative_to(tmp_path).as_posix() for p in found]

    assert rels(discover([tmp_path])) == [
        "a.md", "b.txt", "data/rows.jsonl", "data/table.csv",
        "docs/guide.rst", "docs/keep.md", "docs/page.html",
    ]  # fmt: skip
    assert rels(discover([tmp_path], exclude=["data/", "*.txt"])) == [
        "a.md", "docs/guide.rst", "docs/keep.md", "docs/page.html",
    ]  # fmt: skip
    assert rels(discover([tmp_path], include=["docs/**", "Makefile"])) == [
        "Makefile", "docs/guide.rst", "docs/keep.md", "docs/page.html",
    ]  # fmt: skip
    assert "data/old/x.json" in rels(discover([tmp_path], ignore_files=()))
    no_git = rels(discover([tmp_path], ignore_files=(".embedscopeignore",)))
    assert "node_modules/pkg/readme.md" in no_git and "data/old/x.json" not in no_git


def test_discover_files_and_errors(tmp_path: Path) -> None:
    md = write(tmp_path / "sub" / "one.md", "x")
    txt = write(tmp_path / "two.txt", "y")
    png = write(tmp_path / "pic.png", b"\x89PNG")
    assert discover([txt, md, tmp_path / "sub", md]) == [md, txt]
    with pytest.raises(DocumentError) as info:
        discover([png])
    assert "unsupported file type '.png'" in info.value.reason
    assert ".md" in info.value.reason
    assert discover([png], include=["*.png"]) == [png]
    with pytest.raises(DocumentError, match="no such file or folder"):
        discover([tmp_path / "missing"])
    assert set(SUPPORTED_SUFFIXES) >= {".txt", ".md", ".pdf", ".jsonl", ".csv", ".html"}


def with_info(data: bytes, info: dict[str, str]) -> bytes:
    """Re-save a PDF with a document-info dictionary, as a PDF producer would write one."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.add_metadata(info)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


CHROME_PAGE = """<!DOCTYPE html><html lang="en-GB"><head><title>Tide Tables</title>
<meta name="Author" content="Ann  Lee"><meta property="article:published_time"
content="2024-03-05T08:30:00Z"><meta name="keywords" content="tides, moon ; ocean,">
<meta name="description" content="How tide tables work."><meta name="date" content="ignored">
</head><body>
<header><a href="/">Sitename home</a></header>
<nav><a href="/a">Archive link</a></nav>
<div role="navigation">Breadcrumb trail</div>
<span aria-hidden="true">Decorative icon</span>
<form><input name="q"><button>Search button</button></form>
<main><article>
<header><h1>Reading a Tide Table</h1><p>By Ann Lee</p></header>
<p>High water comes twice a day.</p>
<aside>Related posts box</aside>
<footer>Filed under tides</footer>
</article></main>
<footer>Copyright footer</footer>
<div role="contentinfo">Legal notice</div>
</body></html>"""


def test_html_drops_page_chrome_and_reads_meta(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "tides.html", CHROME_PAGE), tmp_path)
    assert doc.text.startswith("Reading a Tide Table\n\nBy Ann Lee\n\nHigh water comes twice")
    assert "Filed under tides" in doc.text
    for chrome in (
        "Sitename", "Archive", "Breadcrumb", "Decorative", "Search", "Related posts",
        "Copyright", "Legal",
    ):  # fmt: skip
        assert chrome not in doc.text
    meta = doc.metadata
    assert meta["author"] == "Ann Lee"
    assert meta["date"] == "2024-03-05T08:30:00+00:00"
    assert meta["tags"] == ["tides", "moon", "ocean"]
    assert meta["description"] == "How tide tables work."
    assert meta["lang"] == "en-GB"
    bare = load_one(write(tmp_path / "bare.html", "<p>Only text</p>"), tmp_path)
    assert set(bare.metadata) == {"path", "type", "size", "mtime", "modified"}
    wrapped = '<form id="aspnet"><nav>Menu</nav><main><p>Real content</p></main></form>'
    assert load_one(write(tmp_path / "wrapped.html", wrapped), tmp_path).text == "Real content"
    only_chrome = "<header><h1>Links page</h1></header><nav><a>One</a> <a>Two</a></nav>"
    links = load_one(write(tmp_path / "links.html", only_chrome), tmp_path)
    assert links.text == "Links page\n\nOne Two"


def test_html_dates_become_iso(tmp_path: Path) -> None:
    for written, iso in (
        ("2021-05-15", "2021-05-15"),
        ("7 October 2024", "2024-10-07"),
        ("March 5, 2024", "2024-03-05"),
        ("sometime in spring", "sometime in spring"),
    ):
        page = f'<meta name="date" content="{written}"><p>Text</p>'
        doc = load_one(write(tmp_path / "d.html", page), tmp_path)
        assert doc.metadata["date"] == iso


RST_WITH_DOCINFO = """\
==========
User Guide
==========

:Author: Ann Lee
:date: 7 October 2024
:category: guides
:tags: setup, install; cli
:abstract: A first line
   that continues here.

Intro
-----

Body text with a :ref:`role` and a later field list.

:not-docinfo: stays in the text
"""


def test_rst_docinfo_moves_into_metadata(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "docs" / "guide.rst", RST_WITH_DOCINFO), tmp_path)
    assert doc.title == "User Guide"
    meta = doc.metadata
    assert (meta["author"], meta["date"], meta["category"]) == ("Ann Lee", "2024-10-07", "guides")
    assert meta["tags"] == ["setup", "install", "cli"]
    assert meta["abstract"] == "A first line that continues here."
    assert meta["folder"] == "docs"
    assert doc.text.startswith("==========\nUser Guide\n==========\n\nIntro\n-----\n\nBody")
    assert ":not-docinfo: stays in the text" in doc.text
    assert "Ann Lee" not in doc.text and "\n\n\n" not in doc.text
    assert "not-docinfo" not in meta

    untitled = write(
        tmp_path / "notes.rst", ":author: Bo\n:keywords: a, b\n\nShort heading\n\nText.\n"
    )
    doc = load_one(untitled, tmp_path)
    assert (doc.title, doc.text) == ("Short heading", "Short heading\n\nText.")
    assert (doc.metadata["author"], doc.metadata["tags"]) == ("Bo", ["a", "b"])
    only_fields = write(tmp_path / "fields.rst", ":author: Bo\n:date: 2024-01-01\n")
    assert reason(only_fields, tmp_path).startswith("empty document")


def test_pdf_document_info(tmp_path: Path) -> None:
    data = with_info(
        pdf_bytes([["Tide pools at low water."]]),
        {
            "/Title": "Field Guide",
            "/Author": "Mara Lindqvist",
            "/Subject": "Rocky shores",
            "/Keywords": "tides, shore; crabs",
            "/CreationDate": "D:20220426120000+02'00'",
        },
    )
    doc = load_one(write(tmp_path / "guide.pdf", data), tmp_path)
    assert doc.title == "Field Guide"
    meta = doc.metadata
    assert (meta["author"], meta["subject"]) == ("Mara Lindqvist", "Rocky shores")
    assert meta["tags"] == ["tides", "shore", "crabs"]
    assert meta["date"] == "2022-04-26T12:00:00+02:00"
    assert meta["page_count"] == 1
    for raw, iso in (
        ("D:20260830120000Z", "2026-08-30T12:00:00+00:00"),
        ("D:20240102", "2024-01-02"),
        ("D:202401021530-05'00'", "2024-01-02T15:30:00-05:00"),
        ("D:20241399", None),
        ("yesterday", None),
    ):
        dated = with_info(pdf_bytes([["x"]]), {"/CreationDate": raw})
        loaded = load_one(write(tmp_path / "dated.pdf", dated), tmp_path)
        assert loaded.metadata.get("date") == iso, raw
        assert loaded.title == "dated" and "author" not in loaded.metadata


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("Why Cadence Matters\n\nCadence is the number of turns.", "Why Cadence Matters"),
        ("Is it safe?\n\nYes.", "Is it safe?"),
        ("Release Notes\n=============\nFixed things.", "Release Notes"),
        ("Changes\n---\nMore.", "Changes"),
        ("## Setup ##\nRun the installer.", "Setup"),
        ("Buy milk.\n\nCall Ann.", "memo"),
        ("Dear team,\n\nHello.", "memo"),
        ("Buy milk\nCall Ann", "memo"),
        ("A single line only", "memo"),
        ("x" * 121 + "\n\nBody.", "memo"),
        ("---\n\nBody.", "memo"),
        ("\n\n  Indented Heading  \n\nBody.", "Indented Heading"),
    ],
)
def test_plain_text_title_from_first_line(tmp_path: Path, content: str, title: str) -> None:
    assert load_one(write(tmp_path / "memo.txt", content), tmp_path).title == title


def test_category_and_folder_from_path(tmp_path: Path) -> None:
    files = {
        "astronomy/black-holes.md": "# Black Holes\n\nDense.",
        "astronomy/notes.txt": "Notes\n\nSome notes.",
        "astronomy/page.html": "<title>Page</title><p>Stars.</p>",
        "astronomy/guide.rst": "Guide\n=====\n\nText.",
        "astronomy/deep/sky/survey.pdf": pdf_bytes([["Survey text."]]),
        "astronomy/rows.jsonl": '{"_id": "a", "text": "t"}\n{"_id": "b", "text": "u"}\n',
        "astronomy/rows.csv": "id,text\n1,t\n",
    }
    for rel, content in files.items():
        write(tmp_path / rel, content)
    docs = [d for path in discover([tmp_path]) for d in load_file(path, tmp_path)]
    assert len(docs) == len(files) + 1
    for doc in docs:
        assert doc.metadata["category"] == "astronomy", doc.key
    folders = {d.key: d.metadata["folder"] for d in docs}
    assert folders["astronomy/deep/sky/survey.pdf"] == "astronomy/deep/sky"
    assert folders["astronomy/rows.jsonl#b"] == "astronomy"

    top = load_one(write(tmp_path / "top.md", "Top level."), tmp_path)
    assert "category" not in top.metadata and "folder" not in top.metadata
    alone = write(tmp_path / "solo" / "file.txt", "Solo file.")
    assert "category" not in load_one(alone, alone).metadata


def test_explicit_category_wins_and_hash_ignores_derived_fields(tmp_path: Path) -> None:
    explicit = write(
        tmp_path / "astronomy" / "post.md", "---\ncategory: physics\nfolder: fake\n---\nBody."
    )
    meta = load_one(explicit, tmp_path).metadata
    assert (meta["category"], meta["folder"]) == ("physics", "astronomy")
    rows = write(
        tmp_path / "misc" / "facts.csv", "id,text,category\n1,one,cooking\n2,two,\n3,three, \n"
    )
    assert [d.metadata["category"] for d in load_file(rows, tmp_path)] == [
        "cooking", "misc", "misc",
    ]  # fmt: skip

    body = "---\nauthor: Ann\n---\nSame body."
    first = load_one(write(tmp_path / "one" / "doc.md", body), tmp_path)
    second = load_one(write(tmp_path / "two" / "sub" / "doc.md", body), tmp_path)
    assert first.metadata["category"] != second.metadata["category"]
    assert first.content_hash == second.content_hash
    named = load_one(
        write(tmp_path / "one" / "doc.md", "---\ncategory: one\n" + body[4:]), tmp_path
    )
    assert named.metadata["category"] == first.metadata["category"]
    assert named.content_hash != first.content_hash
