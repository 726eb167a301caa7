"""App latency: cold start to first frame, keystroke to results, event-loop lag while indexing.

Prints one JSON object. `--quick` indexes one folder of the sample corpus and runs fewer queries.
Runs headless (Textual's test driver), in a fresh data dir unless --data-dir is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUERIES = [
    "how do tides work",
    "proofing bread dough",
    "saving for retirement",
    "planets of the solar system",
    "tuning a bicycle derailleur",
    "composting kitchen scraps",
    "baroque composers",
    "unit testing best practices",
]

FIRST_PAINT_PROBE = """
import asyncio, json, sys, time
from tui.app import EmbedscopeApp
from tui.messages import FirstPaint
seen = {}
def hook(message):
    if isinstance(message, FirstPaint) and "at" not in seen:
        seen["at"] = time.time()
async def main():
    app = EmbedscopeApp(start_engine=False)
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        while "at" not in seen:
            await pilot.pause(0.005)
asyncio.run(main())
print(json.dumps(seen))
"""


def first_paint_s(runs: int) -> float:
    """Median wall time from spawning a Python process to the app's first frame."""
    times = []
    for _ in range(runs):
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-c", FIRST_PAINT_PROBE],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        times.append(json.loads(done.stdout.strip().splitlines()[-1])["at"] - started)
    return statistics.median(times)


async def in_app(corpus: Path, queries: list[str]) -> dict[str, float]:
    from tui.app import EmbedscopeApp
    from tui.panes.search import SearchPane

    app = EmbedscopeApp(corpus=corpus, settings_path=Path(tempfile.mkdtemp()) / "app.yaml")
    lags: list[float] = []
    indexing = asyncio.Event()
    stop = asyncio.Event()

    async def watch_lag() -> None:
        """Sleep 10 ms repeatedly; any overshoot is time the UI could not react."""
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            if indexing.is_set():
                lags.append((time.perf_counter() - before - 0.01) * 1000)

    async with app.run_test(size=(120, 40)):
        watcher = asyncio.create_task(watch_lag())
        status = app.query_one("#status")
        while "ready:" not in str(status.render()):
            if "Indexing" in str(status.render()):
                indexing.set()
            if "failed" in str(status.render()):
                raise SystemExit(f"app failed: {status.render()}")
            # Polled often, so the window opens as indexing starts, not after its first stall.
            await asyncio.sleep(0.005)
        indexing.clear()
        pane = app.query_one(SearchPane)
        box = app.query_one("#query")
        box.focus()
        timings = []
        for query in queries * 2:
            box.value = query[:-1]
            while pane._shown is None or pane._shown.text != query[:-1]:
                await asyncio.sleep(0.005)
            box.cursor_position = len(box.value)
            started = time.perf_counter()
            # What a key press does in an Input; pilot.press also waits for the screen to idle,
            # which would add its own polling to the figure.
            box.insert_text_at_cursor(query[-1])
            while pane._shown is None or pane._shown.text != query:
                await asyncio.sleep(0.001)
            timings.append((time.perf_counter() - started) * 1000)
        stop.set()
        await watcher
    warm = timings[len(queries) :]
    return {
        "keystroke_to_results_p50_ms": round(statistics.median(warm), 1),
        "max_loop_lag_ms": round(max(lags), 1) if lags else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller corpus, fewer runs")
    parser.add_argument("--data-dir", type=Path, help="reuse this data dir (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-app-"))
    os.environ["EMBEDSCOPE_HOME"] = str(data_dir)
    corpus = REPO / "sample_corpus"
    if args.quick:
        corpus = corpus / "cooking"
    result = {
        "first_paint_s": round(first_paint_s(1 if args.quick else 5), 3),
        **asyncio.run(in_app(corpus, QUERIES[:4] if args.quick else QUERIES)),
        "corpus": str(corpus.relative_to(REPO)),
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
