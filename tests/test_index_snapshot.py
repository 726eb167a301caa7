"""snapshot → rm-index → restore gives identical results; a tampered archive is refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from test_index_errors import NAME, QUERIES, write_notes
from test_index_support import assert_agrees

from engine.config import Config
from engine.engine import Engine
from engine.index import MODES, CorpusIndexError


def rewrite_archive(src: Path, dst: Path, change: str) -> Path:
    """Copy a snapshot with one member altered (`flip`) or renamed (`rename`)."""
    out = io.BytesIO()
    with tarfile.open(src, "r:gz") as tar_in, tarfile.open(fileobj=out, mode="w:gz") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "meta.sqlite" and change == "flip":
                data = data[:100] + bytes([data[100] ^ 0x01]) + data[101:]
            if member.name == "vectors.esvs" and change == "rename":
                member.name = "../vectors.esvs"
            member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data))
    dst.write_bytes(out.getvalue())
    return dst


async def test_snapshot_rm_restore_round_trip(config: Config, tmp_path: Path) -> None:
    archive = tmp_path / "snap" / "notes.tar.gz"
    async with Engine(config) as engine:
        index = await engine.indexes.create(NAME)
        await index.index_path([write_notes(tmp_path / "notes")])
        before = {
            f"{q}|{m}": [(h.chunk_id, h.score) for h in await index.search(q, 4, mode=m)]
            for q in QUERIES
            for m in MODES
        }
        info = await engine.indexes.snapshot(NAME, archive)
        assert info["bytes"] == archive.stat().st_size > 0
        await engine.indexes.remove(NAME)
        assert engine.indexes.names() == []

        flipped = rewrite_archive(archive, tmp_path / "flipped.tar.gz", "flip")
        with pytest.raises(CorpusIndexError, match=r"checksum mismatch for meta\.sqlite"):
            await engine.indexes.restore(flipped)
        renamed = rewrite_archive(archive, tmp_path / "renamed.tar.gz", "rename")
        with pytest.raises(CorpusIndexError, match=r"refused: unexpected members \['../vectors"):
            await engine.indexes.restore(renamed)
        raw = bytearray(archive.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (tmp_path / "raw.tar.gz").write_bytes(bytes(raw))
        with pytest.raises(CorpusIndexError, match="refused"):
            await engine.indexes.restore(tmp_path / "raw.tar.gz")
        assert engine.indexes.names() == [], "a refused archive leaves nothing behind"
        assert [p.name for p in engine.indexes.root.iterdir()] == []

        restored = await engine.indexes.restore(archive)
        assert restored["index"] == NAME
        copy = await engine.indexes.restore(archive, "notes-copy")
        assert copy["documents"] == restored["documents"]
        for name in (NAME, "notes-copy"):
            index = await engine.indexes.open(name)
            assert_agrees(index)
            after = {
                f"{q}|{m}": [(h.chunk_id, h.score) for h in await index.search(q, 4, mode=m)]
                for q in QUERIES
                for m in MODES
            }
            assert after == before
        with pytest.raises(CorpusIndexError, match=f"index '{NAME}' already exists"):
            await engine.indexes.restore(archive)
