"""A messy folder: the good files are indexed, each bad one is reported with its reason."""

from __future__ import annotations

from pathlib import Path

from test_documents import pdf_bytes
from test_index_support import assert_agrees

from engine.config import Config
from engine.engine import Engine


def messy_folder(root: Path) -> Path:
    root.mkdir()
    (root / "good.md").write_text("# Kelp\n\nKelp forests shelter sea otters.\n", encoding="utf-8")
    (root / "notes.txt").write_text("Glaciers carve U-shaped valleys.\n", encoding="utf-8")
    (root / "report.pdf").write_bytes(
        pdf_bytes([["Volcanic ash grounds aircraft."], ["Magma rises."]], "Volcanoes")
    )
    (root / "page.html").write_text(
        "<html><head><title>Coral</title><script>var x = 1;</script></head>"
        "<body><p>Coral reefs bleach in warm water.</p></body></html>",
        encoding="utf-8",
    )
    (root / "binary.txt").write_bytes(b"header\x00\x01\x02" * 100)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "empty.md").write_bytes(b"")
    with (root / "huge.txt").open("w", encoding="utf-8") as fh:
        fh.write("lorem ipsum dolor sit amet\n" * (20 * 1024 * 1024 // 27 + 1))
    return root


async def test_good_files_indexed_bad_files_reported(config: Config, tmp_path: Path) -> None:
    source = messy_folder(tmp_path / "messy")
    async with Engine(config) as engine:
        index = await engine.indexes.create("messy")
        report = await index.index_path([source])
        reasons = {f.path: f.reason for f in report.failed}
        assert set(reasons) == {"binary.txt", "latin1.txt", "empty.md", "huge.txt"}
        assert "binary" in reasons["binary.txt"]
        assert "UTF-8" in reasons["latin1.txt"]
        assert reasons["empty.md"] == "empty file"
        assert "MB" in reasons["huge.txt"] and "max_file_mb" in reasons["huge.txt"]
        docs = {row.key: row for row in index.store.iter_documents()}
        assert set(docs) == {"good.md", "notes.txt", "report.pdf", "page.html"}
        assert report.added == 4
        assert docs["report.pdf"].title == "Volcanoes"
        assert docs["page.html"].title == "Coral"
        assert_agrees(index)
        top = await index.search("volcanic ash", 1, mode="vector")
        assert top[0].doc_key == "report.pdf" and top[0].page == 1
        html = await index.search("reef bleaching", 1)
        assert html[0].doc_key == "page.html" and "var x" not in html[0].text

        (source / "empty.md").write_text("Now it has words about deserts.\n", encoding="utf-8")
        (source / "huge.txt").unlink()
        again = await index.index_path([source])
        assert again.added == 1 and again.unchanged == 4
        assert {f.path for f in again.failed} == {"binary.txt", "latin1.txt"}


async def test_folder_left_out_keeps_its_documents(config: Config, tmp_path: Path) -> None:
    """A subfolder that cannot be read this run is reported, not taken for deleted."""
    source = tmp_path / "corpus"
    (source / "sub").mkdir(parents=True)
    (source / "top.md").write_text("Tides follow the moon.", encoding="utf-8")
    (source / "sub" / "deep.md").write_text("Glaciers carve valleys.", encoding="utf-8")
    async with Engine(config) as engine:
        index = await engine.indexes.create("kept")
        await index.index_path([source])
        (source / "sub" / ".gitignore").write_text("!\n", encoding="utf-8")
        report = await index.index_path([source])
        assert [f.path for f in report.failed] == ["sub/"]
        assert "folder left out" in report.failed[0].reason
        assert report.removed == 0
        assert {row.path for row in index.store.iter_documents()} == {"top.md", "sub/deep.md"}
