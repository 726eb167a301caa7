"""One folder holding a good file beside one hostile file of every kind: the run finishes, every
bad file (or row) is reported with its own reason, the good ones are searchable, nothing escapes.

Indexing runs in a child process whose address space is capped (RLIMIT_AS), so an alias bomb
that got through would fail the test with MemoryError instead of eating the machine. The cap leaves
room for torch, the model and an ONNX export (about 2.2 GB of address space measured).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from engine.documents import DocumentError, MetadataLimits, discover, load_file

MEMORY_CAP = 4 << 30
GOOD = "Kelp forests shelter sea otters, which eat the urchins that would graze the kelp away."
OUTSIDE = "Zanzibar lighthouse keepers' secret ledger."
MB = 1024 * 1024


def billion_laughs(levels: int) -> str:
    """Front matter of `levels` anchors, each a list of nine aliases of the one before."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "---\n" + "\n".join(lines) + "\n---\nLaughs.\n"


def hostile_folder(root: Path) -> dict[str, str]:
    """Write the folder; returns each bad entry's path and a phrase its reason must contain."""
    root.mkdir()
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(OUTSIDE, encoding="utf-8")
    (root / "good.md").write_text(f"# Kelp\n\n{GOOD}\n", encoding="utf-8")
    deep = "[" * 900 + "]" * 900
    (root / "deep.json").write_text(f'[{{"text":"d","m":{deep}}}]', encoding="utf-8")
    (root / "rows.jsonl").write_text(
        '{"_id": "ok", "text": "Glaciers carve U-shaped valleys.", "note": "caf\\udcff"}\n'
        f'{{"_id": "deep", "text": "d", "m": {deep}}}\n'
        f'{{"_id": "deeper", "text": "d", "m": {"[" * 50_000 + "]" * 50_000}}}\n',
        encoding="utf-8",
    )
    (root / "deep.md").write_text(
        "---\na: " + "[" * 5000 + "]" * 5000 + "\n---\nDeep.\n", encoding="utf-8"
    )
    (root / "alias-loop.md").write_text("---\na: &a [*a]\n---\nbody\n", encoding="utf-8")
    (root / "laughs7.md").write_text(billion_laughs(7), encoding="utf-8")
    (root / "laughs9.md").write_text(billion_laughs(9), encoding="utf-8")
    (root / "bad-date.md").write_text("---\ndate: 2024-13-45\n---\nbody\n", encoding="utf-8")
    (root / "fat-meta.md").write_text(f"---\nnotes: {'x' * 70_000}\n---\nbody\n", encoding="utf-8")
    (root / "table.csv").write_text(
        'id,text\n1,"Volcanic ash grounds aircraft."\n2,"never closed\n3,swallowed\n4,too\n',
        encoding="utf-8",
    )
    (root / "big.txt").write_bytes(b"lorem ipsum " * (2 * MB // 12 + 1))
    (root / "gone.md").write_text("# Gone\n\nDeleted after discovery.\n", encoding="utf-8")
    (root / "swapped.txt").write_text("Replaced by a FIFO after discovery.\n", encoding="utf-8")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "dangling.md").symlink_to(root / "nothing-here.md")
    (root / "loop.md").symlink_to(root / "loop.md")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "pipe.txt")
    fd = os.open(os.fsencode(root) + b"/caf\xe9.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"A file whose name is Latin-1.")
    os.close(fd)
    return {
        "deep.json": "no row left to index: item 1: metadata field 'm' is nested deeper than 32",
        "rows.jsonl": "line 2: metadata field 'm' is nested deeper than 32 levels",
        "deep.md": "front matter on line 2: nested deeper than 32 levels "
        "(documents.max_metadata_depth)",
        "alias-loop.md": "front matter on line 2: alias *a is inside its own anchor &a",
        "laughs7.md": "expands to more than 10000 values (aliases included) "
        "(documents.max_yaml_nodes)",
        "laughs9.md": "expands to more than 10000 values",
        "bad-date.md": "cannot read value '2024-13-45': month must be in 1..12",
        "fat-meta.md": "over the 64 KB limit (documents.max_metadata_kb)",
        "table.csv": "line 3: a quoted field opened on line 3 is never closed, so lines 3-5",
        "big.txt": "file is 2.0 MB, over the 1 MB limit (documents.max_file_mb)",
        "gone.md": "file not found (moved or deleted?)",
        "swapped.txt": "not a regular file: a named pipe (FIFO)",  # and the run did not hang
        "escape.txt": f"symlink points outside the folder (to {outside / 'secret.txt'})",
        "dangling.md": "broken symlink",
        "loop.md": "symlink loop",
        "linked": "symlink to a folder, not followed",
        "pipe.txt": "not a regular file: a named pipe (FIFO)",
        "caf\\xe9.txt": "file name is not valid UTF-8 (rename the file to index it)",
    }


def child(source: str, config_path: str) -> None:
    """In the capped child: index the folder through the real engine, print the outcome."""
    import asyncio

    from engine.config import load_config
    from engine.engine import Engine

    async def run() -> dict[str, Any]:
        def remove_after_discovery(event: Any) -> None:
            if event.phase == "scanning":
                Path(source, "gone.md").unlink()
                Path(source, "swapped.txt").unlink()
                os.mkfifo(Path(source, "swapped.txt"))

        async with Engine(load_config(Path(config_path))) as engine:
            index = await engine.indexes.create("hostile")
            report = await index.index_path([Path(source)], progress=remove_after_discovery)
            hits = {
                query: [h.doc_key for h in await index.search(query, 3, mode=mode)]
                for query, mode in (
                    ("sea otters eat urchins", "vector"),
                    ("glaciers valleys", "hybrid"),
                    ("volcanic ash", "keyword"),
                    ("Zanzibar lighthouse ledger", "keyword"),
                )
            }
            docs = sorted(row.key for row in index.store.iter_documents())
            notes = [r.metadata.get("note") for r in index.store.iter_documents()]
            return {"report": report.to_dict(), "hits": hits, "docs": docs, "notes": notes}

    print(json.dumps(asyncio.run(run())))


def capped(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter whose address space is capped at MEMORY_CAP."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO / "tests"),
            "MALLOC_ARENA_MAX": "2",  # per-thread malloc arenas reserve address space, not memory
        },
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit,
    )


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    expected = hostile_folder(tmp_path / "hostile")
    config = tmp_path / "config.yaml"
    config.write_text("documents:\n  max_file_mb: 1\n", encoding="utf-8")
    return tmp_path / "hostile", config, expected


@pytest.mark.slow  # a child process loading torch and the model
def test_hostile_folder_indexes_the_good_and_reports_each_bad(
    folder: tuple[Path, Path, dict[str, str]],
) -> None:
    source, config, expected = folder
    proc = capped(
        "import sys, test_hostile_files as t; t.child(sys.argv[1], sys.argv[2])",
        str(source),
        str(config),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    reasons: dict[str, list[str]] = {}
    for failure in out["report"]["failed"]:
        reasons.setdefault(failure["path"], []).append(failure["reason"])
    assert set(reasons) == set(expected)
    for path, phrase in expected.items():
        assert any(phrase in reason for reason in reasons[path]), (path, reasons[path])
    assert reasons["rows.jsonl"] == [
        "line 2: metadata field 'm' is nested deeper than 32 levels (documents.max_metadata_depth)",
        "line 3: JSON nested too deeply to parse",
    ]
    assert out["docs"] == ["good.md", "rows.jsonl#ok", "table.csv#1"]
    assert out["hits"]["sea otters eat urchins"][0] == "good.md"
    assert out["hits"]["glaciers valleys"][0] == "rows.jsonl#ok"
    assert out["hits"]["volcanic ash"] == ["table.csv#1"]
    assert out["hits"]["Zanzibar lighthouse ledger"] == []  # the outside file was never read
    assert "caf\ufffd" in out["notes"]  # a lone surrogate is replaced, not fatal


@pytest.mark.slow  # two CLI processes
def test_cli_index_of_hostile_folder_prints_reasons_without_traceback(
    folder: tuple[Path, Path, dict[str, str]],
) -> None:
    source, config, expected = folder
    for name in ("gone.md", "swapped.txt"):
        (source / name).unlink()
        del expected[name]
    run_cli = "import sys; from tui.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = capped(run_cli, "--config", str(config), "index", str(source), "--name", "h")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    for path, phrase in expected.items():
        assert f"  skipped {path}: " in proc.stdout and phrase in proc.stdout, path
    proc = capped(run_cli, "--config", str(config), "index", str(source), "--name", "h", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    report = json.loads(proc.stdout)["report"]
    assert report["unchanged"] == 3 and report["added"] == 0
    # Unchanged files are not re-read, so only whole-file failures come back.
    assert {f["path"] for f in report["failed"]} == set(expected) - {"rows.jsonl", "table.csv"}


def test_rows_before_an_unclosed_quote_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('id,text\n1,"multi\nline"\n2,fine\n3,"open\n', encoding="utf-8")
    skipped: list[DocumentError] = []
    docs = load_file(path, tmp_path, skipped=skipped)
    assert [d.text for d in docs] == ["multi\nline", "fine"]
    assert [e.reason for e in skipped] == [
        "line 5: a quoted field opened on line 5 is never closed, so lines 5-5 would be one "
        'row; close the quote (a quote inside a quoted field is written twice: "")'
    ]
    path.write_text('id,text\n1,"multi\nline"\n2,"closed at the end"\n', encoding="utf-8")
    assert [d.text for d in load_file(path, tmp_path)][-1] == "closed at the end"


def test_limits_follow_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "m.md"
    path.write_text("---\nkeep: &k [1, 2]\nagain: *k\nnest: [[[1]]]\n---\nbody\n", "utf-8")
    doc = load_file(path, tmp_path)[0]
    assert doc.metadata["again"] == [1, 2] and doc.metadata["nest"] == [[[1]]]
    for limits, phrase in (
        (MetadataLimits(max_yaml_aliases=0), "more than 0 aliases (documents.max_yaml_aliases)"),
        (MetadataLimits(max_depth=3), "nested deeper than 3 levels"),
        (MetadataLimits(max_yaml_nodes=5), "expands to more than 5 values"),
        (MetadataLimits(max_kb=0.01), "over the 0.01 KB limit"),
    ):
        with pytest.raises(DocumentError, match=re.escape(phrase)):
            load_file(path, tmp_path, limits=limits)


def test_oversize_message_uses_the_configured_unit(tmp_path: Path) -> None:
    path = tmp_path / "edge.txt"
    path.write_bytes(b"x" * (10 * MB + 4096))
    with pytest.raises(DocumentError) as info:
        load_file(path, tmp_path, max_bytes=10 * MB)
    assert info.value.reason == ("file is 10.004 MB, over the 10 MB limit (documents.max_file_mb)")


def test_discovery_reports_what_it_leaves_out(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.md").write_text("x", encoding="utf-8")
    (root / "pipe.bin").symlink_to(root / "missing")  # unsupported suffix: not wanted, not told
    (root / "note.md").symlink_to(root / "sub" / "a.md")  # inside: indexed once, by its target
    skipped: list[DocumentError] = []
    assert discover([root], skipped=skipped) == [root / "note.md"]
    assert skipped == []
