"""`restore` treats an archive as hostile: every tampered snapshot is refused with a clear reason
before anything takes its name, nothing is left under the data dir, a small archive that would
unpack to gigabytes is refused without writing them, and the genuine archive still restores."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO
from test_index_errors import NAME, write_notes
from test_index_support import assert_agrees, config_for, run_blocking

from engine.config import Config, load_config
from engine.engine import Engine
from engine.index import CorpusIndexError

GIB = 1024**3
HEADER = "SNAPSHOT.json"
Entry = tuple[tarfile.TarInfo, bytes | None]


@dataclass(frozen=True)
class Snapshots:
    good: Path  # the index as first built
    later: Path  # the same index after two more files were indexed
    documents: int


_BUILT: dict[str, Snapshots] = {}


def snapshots(factory: pytest.TempPathFactory) -> Snapshots:
    """A real index of a few generated notes, snapshotted twice; built once per process."""
    if "notes" not in _BUILT:
        root = factory.mktemp("restore-source")
        source = write_notes(root / "notes")

        async def build() -> int:
            async with Engine(config_for(root / "data")) as engine:
                index = await engine.indexes.create(NAME, index_type="flat")
                await index.index_path([source])
                await engine.indexes.snapshot(NAME, root / "good.tar.gz")
                documents = index.stats().documents
                (source / "volcano.md").write_text("# Volcano\n\nMagma rises through vents.\n")
                (source / "chess.md").write_text("# Chess\n\nA gambit sacrifices a pawn.\n")
                await index.index_path([source])
                await engine.indexes.snapshot(NAME, root / "later.tar.gz")
                return documents

        documents = run_blocking(build())
        _BUILT["notes"] = Snapshots(root / "good.tar.gz", root / "later.tar.gz", documents)
    return _BUILT["notes"]


def entries(archive: Path) -> list[Entry]:
    with tarfile.open(archive, "r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def header_of(items: list[Entry]) -> dict:
    return json.loads(dict((i.name, d) for i, d in items)[HEADER])


def write_tar(path: Path, items: list[Entry]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


def with_header(items: list[Entry], header: object) -> list[Entry]:
    raw = json.dumps(header).encode()
    return [(i, raw if i.name == HEADER else d) for i, d in items]


def replaced(items: list[Entry], name: str, info: tarfile.TarInfo, data: bytes | None) -> list:
    return [(info, data) if i.name == name else (i, d) for i, d in items]


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def pad(n: int) -> bytes:
    return b"\0" * (-n % 512)


def raw_member(name: str, declared: int, data: bytes) -> bytes:
    """A tar member whose header may declare another size than the data that follows."""
    info = tarfile.TarInfo(name)
    info.size = declared
    return info.tobuf(tarfile.GNU_FORMAT) + data + pad(len(data))


# -- the tampered archives: each builds one from the genuine snapshot ----------------------------


def version_string(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    return write_tar(tmp / "a.tar.gz", with_header(items, {**header_of(items), "version": "2"}))


def list_header(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    return write_tar(tmp / "a.tar.gz", with_header(items, [header_of(items)]))


def index_null(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    return write_tar(tmp / "a.tar.gz", with_header(items, {**header_of(items), "index": None}))


def index_traversal(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    header = {**header_of(items), "index": "../../x"}
    return write_tar(tmp / "a.tar.gz", with_header(items, header))


def unlisted_member(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    header = header_of(items)
    del header["sha256"]["vectors.esvs"], header["bytes"]["vectors.esvs"]
    return write_tar(tmp / "a.tar.gz", with_header(items, header))


def extra_member(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    return write_tar(tmp / "a.tar.gz", [*items, (tarfile.TarInfo("evil.sh"), b"rm -rf ~\n")])


def symlink_member(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    evil = link("vectors.esvs", tarfile.SYMTYPE, "meta.sqlite")
    return write_tar(tmp / "a.tar.gz", replaced(items, "vectors.esvs", evil, None))


def hardlink_member(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    evil = link("vectors.esvs", tarfile.LNKTYPE, "meta.sqlite")
    return write_tar(tmp / "a.tar.gz", replaced(items, "vectors.esvs", evil, None))


def folder_member(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    evil = tarfile.TarInfo("vectors.esvs")
    evil.type = tarfile.DIRTYPE
    return write_tar(tmp / "a.tar.gz", replaced(items, "vectors.esvs", evil, None))


def duplicate_member(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    db = next(e for e in items if e[0].name == "meta.sqlite")
    return write_tar(tmp / "a.tar.gz", [*items, db])


def altered_content(s: Snapshots, tmp: Path) -> Path:
    items = entries(s.good)
    info, data = next(e for e in items if e[0].name == "vectors.esvs")
    assert data is not None
    flipped = data[:-100] + bytes([data[-100] ^ 0x01]) + data[-99:]
    return write_tar(tmp / "a.tar.gz", replaced(items, "vectors.esvs", info, flipped))


def declared_smaller(s: Snapshots, tmp: Path) -> Path:
    """The header says meta.sqlite is 4 KiB smaller than the member the archive holds."""
    items = entries(s.good)
    header = header_of(items)
    header["bytes"]["meta.sqlite"] -= 4096
    return write_tar(tmp / "a.tar.gz", with_header(items, header))


def tar_size_smaller(s: Snapshots, tmp: Path) -> Path:
    """The tar header of meta.sqlite declares 1 KiB less than the data that follows it, and the
    snapshot header agrees with the tar header: the bytes past it must not slip through."""
    items = entries(s.good)
    header = header_of(items)
    data = dict((i.name, d) for i, d in items)
    short = len(data["meta.sqlite"]) - 1024
    header["bytes"]["meta.sqlite"] = short
    raw = raw_member(HEADER, len(json.dumps(header)), json.dumps(header).encode())
    raw += raw_member("manifest.json", len(data["manifest.json"]), data["manifest.json"])
    raw += raw_member("meta.sqlite", short, data["meta.sqlite"])
    raw += raw_member("vectors.esvs", len(data["vectors.esvs"]), data["vectors.esvs"])
    path = tmp / "a.tar.gz"
    path.write_bytes(gzip.compress(raw + b"\0" * 1024))
    return path


def inconsistent(s: Snapshots, tmp: Path) -> Path:
    """Every checksum right, but the vectors of a later state beside the first database."""
    items = entries(s.good)
    later = dict((i.name, (i, d)) for i, d in entries(s.later))
    items = replaced(items, "vectors.esvs", *later["vectors.esvs"])
    header = header_of(items)
    vectors = later["vectors.esvs"][1]
    assert vectors is not None
    header["sha256"]["vectors.esvs"] = hashlib.sha256(vectors).hexdigest()
    header["bytes"]["vectors.esvs"] = len(vectors)
    return write_tar(tmp / "a.tar.gz", with_header(items, header))


def not_gzip(s: Snapshots, tmp: Path) -> Path:
    path = tmp / "a.tar.gz"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a snapshot")
    return path


CASES: dict[str, tuple[Callable[[Snapshots, Path], Path], str]] = {
    "version-string": (version_string, r"version '2', not a whole number"),
    "list-header": (list_header, r"its header is a JSON list, not an object"),
    "index-null": (index_null, r"names the index None, which is not an index name.*--name"),
    "index-traversal": (index_traversal, r"names the index '\.\./\.\./x', which is not"),
    "unlisted-member": (unlisted_member, r"vectors\.esvs missing from its checksum list"),
    "extra-member": (extra_member, r"unexpected members \['evil\.sh'\]"),
    "symlink": (symlink_member, r"vectors\.esvs is a symbolic link, not a regular file"),
    "hardlink": (hardlink_member, r"vectors\.esvs is a hard link, not a regular file"),
    "folder": (folder_member, r"vectors\.esvs is a folder, not a regular file"),
    "duplicate": (duplicate_member, r"meta\.sqlite is in it twice"),
    "altered": (altered_content, r"checksum mismatch for vectors\.esvs"),
    "declared-smaller": (
        declared_smaller,
        r"meta\.sqlite is \d+ bytes in the archive but its header declares \d+",
    ),
    "tar-size-smaller": (tar_size_smaller, r"checksum mismatch for meta\.sqlite"),
    "inconsistent": (
        inconsistent,
        r"its database \(\d+ chunks\) and its vector file \(\d+ vectors\) do not hold the same",
    ),
    "not-gzip": (not_gzip, r"not a readable snapshot archive"),
}


def leftovers(data_dir: Path) -> list[str]:
    root = data_dir / "indexes"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bytes_written() -> int:
    """Bytes this process has handed to write() so far (all threads)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


async def restore_works(engine: Engine, archive: Path, documents: int) -> None:
    """The genuine snapshot restores under the name the refused one wanted, and answers."""
    restored = await engine.indexes.restore(archive)
    assert restored == {"index": NAME, "documents": documents, "chunks": restored["chunks"]}
    index = await engine.indexes.open(NAME)
    assert_agrees(index)
    hits = await index.search("ocean tides and the moon", 1, mode="vector")
    assert hits[0].doc_key == "tides.md"


@pytest.mark.parametrize("case", sorted(CASES))
async def test_tampered_archive_is_refused_and_leaves_nothing(
    case: str, config: Config, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snaps = snapshots(tmp_path_factory)
    make, reason = CASES[case]
    archive = make(snaps, tmp_path)
    async with Engine(config) as engine:
        with pytest.raises(CorpusIndexError, match=rf"snapshot {archive} refused: .*{reason}"):
            await engine.indexes.restore(archive)
        assert leftovers(config.data_dir) == [], "a refused archive leaves no trace"
        assert engine.indexes.names() == []
        await restore_works(engine, snaps.good, snaps.documents)


async def test_archive_of_an_older_embedscope_without_sizes_restores(
    config: Config, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snaps = snapshots(tmp_path_factory)
    items = entries(snaps.good)
    header = header_of(items)
    del header["bytes"]
    archive = write_tar(tmp_path / "old.tar.gz", with_header(items, header))
    async with Engine(config) as engine:
        await restore_works(engine, archive, snaps.documents)


async def test_refused_name_leaves_nothing(
    config: Config, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snaps = snapshots(tmp_path_factory)
    async with Engine(config) as engine:
        with pytest.raises(CorpusIndexError, match=r"index name '\.\./up' is not allowed"):
            await engine.indexes.restore(snaps.good, "../up")
        await restore_works(engine, snaps.good, snaps.documents)
        with pytest.raises(CorpusIndexError, match=f"index '{NAME}' already exists"):
            await engine.indexes.restore(snaps.good)
        assert leftovers(config.data_dir) == [NAME], "the refused second copy left nothing"


# -- a small archive that unpacks to gigabytes -------------------------------------------------

_ZEROS: dict[str, bytes] = {}
_BLOCK = 64 * 1024 * 1024


def zeros_block() -> bytes:
    """64 MiB of zeros as one gzip member (~65 KB); gzip members concatenate."""
    if "z" not in _ZEROS:
        _ZEROS["z"] = gzip.compress(b"\0" * _BLOCK, compresslevel=9)
    return _ZEROS["z"]


def bomb(
    snaps: Snapshots, tmp: Path, header_change: Callable[[dict, int], None], magic: bytes
) -> Path:
    """The genuine header (changed as asked) and manifest, then a meta.sqlite of `magic` and
    2 GiB of zeros: a ~2 MB archive."""
    items = dict((i.name, d) for i, d in entries(snaps.good))
    header = json.loads(items[HEADER])
    size = 2 * GIB + len(magic)
    header_change(header, size)
    raw = json.dumps(header).encode()
    head = raw_member(HEADER, len(raw), raw)
    head += raw_member("manifest.json", len(items["manifest.json"]), items["manifest.json"])
    info = tarfile.TarInfo("meta.sqlite")
    info.size = size
    path = tmp / "bomb.tar.gz"
    with path.open("wb") as out:
        out.write(gzip.compress(head + info.tobuf(tarfile.GNU_FORMAT) + magic))
        for _ in range(2 * GIB // _BLOCK):
            out.write(zeros_block())
        out.write(gzip.compress(pad(size) + b"\0" * 1024))
    assert path.stat().st_size < 3_000_000
    return path


def declare_all(header: dict, size: int) -> None:
    header["bytes"]["meta.sqlite"] = size


def old_style(header: dict, size: int) -> None:
    del header["bytes"]


def keep(header: dict, size: int) -> None:
    """The snapshot header as it was: it declares the real size of meta.sqlite."""


SQLITE = b"SQLite format 3\0"
BOMBS = {
    # Refused on the tar header alone: it disagrees with the size the snapshot header declares.
    "size-mismatch": (keep, b"", None, r"meta\.sqlite is 2147483648 bytes in the archive"),
    # The header declares the 2 GiB too: refused on the member's first block (not SQLite).
    "declared-zeros": (declare_all, b"", None, r"meta\.sqlite is not an SQLite database"),
    # Looks like SQLite and declares it all: refused by the configured cap before unpacking.
    "over-cap": (declare_all, SQLITE, 1, r"unpacks to 2\.00 GB, over the 1 GB limit"),
    # An older header without sizes: the tar header's size meets the cap before unpacking.
    "old-header-over-cap": (old_style, SQLITE, 1, r"over the 1 GB limit"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
async def test_small_archive_of_gigabytes_is_refused_without_writing_them(
    case: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, isolated_home: Path
) -> None:
    snaps = snapshots(tmp_path_factory)
    change, magic, cap_gb, reason = BOMBS[case]
    archive = bomb(snaps, tmp_path, change, magic)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"index:\n  max_restore_gb: {cap_gb}\n" if cap_gb else "{}\n")
    config = load_config(config_file)
    async with Engine(config) as engine:
        before = bytes_written()
        with pytest.raises(CorpusIndexError, match=reason):
            await engine.indexes.restore(archive)
        written = bytes_written() - before
        assert written < 8 * 1024 * 1024, f"{written} bytes written for a refused archive"
        assert leftovers(config.data_dir) == []
        assert bytes_under(config.data_dir) < 8 * 1024 * 1024
        await restore_works(engine, snaps.good, snaps.documents)


# -- the command line ----------------------------------------------------------------------------


def embedscope(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_refuses_with_one_line_and_no_traceback(
    isolated_home: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snaps = snapshots(tmp_path_factory)
    for case in ("version-string", "list-header", "index-null", "index-traversal", "symlink"):
        make, reason = CASES[case]
        folder = tmp_path / case
        folder.mkdir()
        proc = embedscope("restore", str(make(snaps, folder)))
        assert proc.returncode == 2, (case, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, case
        assert proc.stderr.startswith("embedscope restore: snapshot "), case
        assert len(proc.stderr.strip().splitlines()) == 1, case
        assert re.search(reason, proc.stderr), (case, proc.stderr)
        assert leftovers(isolated_home) == [], case
    folder = tmp_path / "existing-folder"
    folder.mkdir()
    proc = embedscope("snapshot", NAME, str(folder))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{folder} is a folder; give the archive's file name" in proc.stderr


async def test_snapshot_to_a_folder_is_a_clear_error(
    config: Config, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snaps = snapshots(tmp_path_factory)
    async with Engine(config) as engine:
        await engine.indexes.restore(snaps.good)
        with pytest.raises(CorpusIndexError, match=f"{tmp_path} is a folder; give the archive"):
            await engine.indexes.snapshot(NAME, tmp_path)
        blocked = tmp_path / "a-file"
        blocked.write_text("not a folder")
        refused = rf"cannot write snapshot .*: {blocked} is not a folder"
        with pytest.raises(CorpusIndexError, match=refused):
            await engine.indexes.snapshot(NAME, blocked / "snap.tar.gz")
        again = await engine.indexes.snapshot(NAME, tmp_path / "again.tar.gz")
        assert again["bytes"] > 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "again.tar.gz"]
