"""The first frame paints before torch, sentence_transformers or faiss are imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, python_json

HEAVY = ("torch", "sentence_transformers", "faiss")

PROBE = """
import asyncio, json, sys
from tui.app import EmbedscopeApp
from tui.messages import FirstPaint

HEAVY = {heavy!r}
seen = {{}}

def hook(message):
    if isinstance(message, FirstPaint) and "modules" not in seen:
        seen["modules"] = [m for m in HEAVY if m in sys.modules]
        seen["at_import"] = AT_IMPORT

AT_IMPORT = [m for m in HEAVY if m in sys.modules]

async def main():
    app = EmbedscopeApp()
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        while "modules" not in seen:
            await pilot.pause(0.01)
        seen["painted"] = app.first_paint_at is not None
        seen["status"] = str(app.query_one("#status").render())

asyncio.run(main())
print(json.dumps(seen))
"""


def test_first_frame_paints_before_heavy_imports(isolated_home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = python_json(PROBE.format(heavy=HEAVY), env=env, timeout=120)
    assert seen["at_import"] == []
    assert seen["painted"] is True
    assert seen["modules"] == [], f"imported before the first frame: {seen['modules']}"
    assert "Loading" in seen["status"]


def test_importing_the_app_module_stays_light() -> None:
    code = (
        "import sys, json, tui.app, tui.cli;"
        f"print(json.dumps([m for m in {HEAVY!r} + ('engine.store.faiss_store',)"
        " if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
