"""`embedscope ... --json` prints exactly one JSON document on stdout, for every index command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from test_index_errors import TOPICS, write_notes

pytestmark = pytest.mark.slow  # seven CLI processes, each loading torch and the model


def embedscope(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def json_out(*args: str) -> Any:
    proc = embedscope(*args, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # the whole of stdout: one document, nothing else


def test_json_commands_print_one_document(isolated_home: Path, tmp_path: Path) -> None:
    source = write_notes(tmp_path / "notes")
    indexed = json_out("index", str(source), "--name", "cli")
    assert indexed["report"]["added"] == len(TOPICS)
    assert indexed["index"]["documents"] == len(TOPICS)
    assert indexed["index"]["path"] == str(isolated_home / "indexes" / "cli")

    found = json_out("search", "ocean tides", "--name", "cli", "-k", "2", "--mode", "vector")
    assert found["mode"] == "vector" and len(found["results"]) == 2
    assert found["results"][0]["doc_key"] == "tides.md"

    filtered = json_out("search", "sourdough", "--name", "cli", "--filter", "path=b*")
    assert {r["doc_key"] for r in filtered["results"]} <= {"bread.md", "bikes.md"}

    similar = json_out("similar", "tides.md", "--name", "cli", "-k", "3")
    assert len(similar["results"]) == 3
    assert "tides.md" not in {r["doc_key"] for r in similar["results"]}

    info = json_out("info", "--name", "cli")
    assert info["documents"] == len(TOPICS) and info["vectors"]["count"] == info["chunks"]
    listing = json_out("info")
    assert [row["name"] for row in listing["indexes"]] == ["cli"]

    bad = embedscope("search", "tides", "--name", "missing", "--json")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "no index named 'missing'" in bad.stderr
