"""Commands declared outside engine/cli.py run from every entry point, and the common commands
build their parser without importing what only those commands need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from engine.cli import build_parser, run

ENTRY_POINTS = {
    "python -m engine.cli": [sys.executable, "-m", "engine.cli"],
    "python -m tui.cli": [sys.executable, "-m", "tui.cli"],
}
# Each reaches its command's own handler, which refuses the arguments before loading anything.
REFUSED = {
    "eval": (["--dataset", "nowhere", "--models", "minilm,minilm"], "names a model twice"),
    "eval-sts": (["--file", "nowhere.tsv", "--models", "minilm,minilm"], "names a model twice"),
    "eval-index": (["--dataset", "nowhere", "--name", "x", "--modes", "fuzzy"], "fuzzy"),
    "finetune": (["--base", "minilm"], "give training data either as --pairs"),
}


def embedscope(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("command", REFUSED)
def test_declared_elsewhere_commands_run_their_handler(entry: str, command: str) -> None:
    """`python -m engine.cli eval` printed `embedscope eval: 'eval'`: the handler had been
    registered into a second copy of the module."""
    args, reason = REFUSED[command]
    done = embedscope(entry, command, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"embedscope {command}: ")
    assert reason in done.stderr
    assert "Traceback" not in done.stderr


def test_help_of_a_command_declared_elsewhere() -> None:
    done = embedscope("python -m engine.cli", "finetune", "--help")
    assert done.returncode == 0, done.stderr
    assert "--pairs" in done.stdout and "--loss" in done.stdout


def test_common_commands_do_not_import_eval_or_training(tmp_path: Path) -> None:
    """Every command builds the whole parser; what eval and finetune run stays unimported."""
    script = (
        "import json, sys\n"
        "from engine.cli import build_parser\n"
        "build_parser().parse_args(['search', 'a query'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    heavy = {
        "engine.evaluation.retrieval",
        "engine.evaluation.sts",
        "engine.evaluation.runs",
        "engine.training.finetune",
        "numpy.ma",
    }
    assert not modules & heavy


def test_finetune_losses_declared_as_finetune_knows_them() -> None:
    from engine.cli_parsers import FINETUNE_LOSSES
    from engine.training.finetune import LOSSES

    assert FINETUNE_LOSSES == LOSSES


def test_index_json_reports_the_size_info_reports(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Measured after the write-ahead log is folded into the database, as `info` sees it."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"note-{i}.txt").write_text(f"Note {i}: the tide table for week {i}.\n")

    def command(*argv: str) -> dict:
        capfd.readouterr()
        assert run(build_parser().parse_args([*argv, "--json"])) == 0
        return json.loads(capfd.readouterr().out)

    indexed = command("index", str(corpus), "--name", "sized")["index"]
    folder = Path(indexed["path"])
    assert not [f for f in folder.iterdir() if f.name.endswith("-wal") and f.stat().st_size]
    on_disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert indexed["bytes_on_disk"] == on_disk
    (listed,) = command("info")["indexes"]
    assert listed["bytes_on_disk"] == on_disk


async def test_a_console_exit_keeps_everything_the_command_wrote(tmp_path: Path, config) -> None:
    """The console script skips the interpreter's teardown after a command: the index, the
    queued embedding-cache writes and the whole output must all have landed first."""
    from engine import Engine

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"tide-{i}.txt").write_text(f"Tide table {i}: high water at {i % 12} o'clock.\n")
    query = "when is high water at the harbour"
    indexed = embedscope("python -m tui.cli", "index", str(corpus), "--name", "fast", "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["report"]["added"] == 40
    found = embedscope("python -m tui.cli", "search", query, "--name", "fast", "-k", "40", "--json")
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 40
    async with Engine(config) as engine:
        index = await engine.indexes.open("fast")
        assert index.stats().documents == 40
        cached = await engine.embeddings.encode_detailed([query])
    assert cached.sources == ["l2"]
    refused = embedscope("python -m tui.cli", "search", query, "--name", "absent")
    assert refused.returncode == 2 and "absent" in refused.stderr
