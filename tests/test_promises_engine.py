"""Promises of the engine as a library and a command line: no UI imports, one JSON document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, python_json

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import engine
names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "ui": sorted(m for m in sys.modules
                                                 if m.split(".")[0] in ("textual", "tui"))}))
"""


def test_no_engine_module_imports_textual() -> None:
    result = python_json(IMPORT_ALL)
    expected = {
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "engine").rglob("*.py")
        if p.name != "__init__.py"
    }
    assert expected <= set(result["modules"]), expected - set(result["modules"])
    assert result["ui"] == []


def cli(*argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDSCOPE_HOME": str(home)},
    )


def cli_json(*argv: str, home: Path) -> dict[str, Any]:
    """Exit 0, and stdout is exactly one JSON document."""
    proc = cli(*argv, "--json", home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)
    assert isinstance(payload, dict), payload
    return payload


def indexes(home: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in cli_json("info", home=home)["indexes"]}


@pytest.mark.slow  # five command-line processes, one of which loads the model
def test_snapshot_restore_and_rm_index_print_one_json_document(
    isolated_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for i, topic in enumerate(("tides and the moon", "sourdough starters", "bicycle chains")):
        (folder / f"note{i}.md").write_text(f"# Note {i}\n\nA short note about {topic}.\n")
    built = cli_json("index", str(folder), "--name", "notes", home=isolated_home)
    assert built["report"]["added"] == 3

    archive = tmp_path / "notes.tar.gz"
    snap = cli_json("snapshot", "notes", str(archive), home=isolated_home)
    assert archive.is_file()
    assert Path(snap["archive"]).resolve() == archive.resolve()
    assert snap["bytes"] == archive.stat().st_size

    restored = cli_json("restore", str(archive), "--name", "copy", home=isolated_home)
    assert (restored["index"], restored["documents"]) == ("copy", 3)
    listed = indexes(isolated_home)
    assert listed["copy"]["documents"] == listed["notes"]["documents"] == 3
    assert restored["chunks"] == listed["notes"]["chunks"]

    removed = cli_json("rm-index", "notes", home=isolated_home)
    assert "notes" in json.dumps(removed)
    assert set(indexes(isolated_home)) == {"copy"}
    # Errors stay one clear line on stderr, with nothing on stdout.
    again = cli("rm-index", "notes", "--json", home=isolated_home)
    assert again.returncode != 0 and again.stdout == ""
    assert "no index named 'notes'" in again.stderr and "Traceback" not in again.stderr
