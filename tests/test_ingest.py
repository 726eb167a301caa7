"""Documents given by key (the server's PUT) and documents found in a folder share one index:
indexing the folder again never removes what a client sent, and deleting a file still does."""

from __future__ import annotations

from pathlib import Path

from engine.config import Config
from engine.engine import Engine
from engine.index.ingest import DocumentInput, delete_document, put_documents


async def test_folder_indexing_keeps_documents_given_by_key(config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "bread.md").write_text("# Bread\n\nBread rises because yeast makes gas.\n")
    (folder / "tides.md").write_text("# Tides\n\nThe moon pulls the oceans into tides.\n")
    sent = DocumentInput(key="api/holes", text="Black holes form when big stars collapse.")
    async with Engine(config) as engine:
        index = await engine.indexes.create("mixed")
        await put_documents(index, [sent])
        first = await index.index_path([folder])
        assert (first.added, first.removed) == (2, 0)
        (folder / "tides.md").unlink()
        second = await index.index_path([folder])
        assert second.removed == 1
        assert index.document("api/holes") is not None, "a folder run removed a sent document"
        hits = await index.search("how do black holes form", 3, mode="vector")
        assert hits[0].doc_key == "api/holes"
        assert await delete_document(index, "api/holes")
        assert index.document("api/holes") is None
        assert index.stats().documents == 1
