"""App latency: cold start to first frame, keystroke to results, event-loop lag while indexing.

Prints one JSON object. The app indexes the whole sample corpus in a fresh data dir (the window in
which loop lag is measured), then types the sample corpus's own queries, each one never typed
before in this process: `keystroke_to_results_p50_ms` is that fresh figure, whose query embedding
the model computes. The same queries typed again, served from the embedding cache, give
`keystroke_to_results_cached_p50_ms` beside it. `--quick` types fewer queries and starts the app
once for first paint; `--smoke` (with --quick) types three, only proving it runs.
Runs headless (Textual's test driver).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, bench_home, emit, log, machine, parser, percentile

SAMPLE = REPO / "sample_corpus"
TARGETS = {
    "first_paint_s": 1.0,
    "keystroke_to_results_p50_ms": 50.0,
    "max_loop_lag_ms": 100.0,
}

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


def sample_queries() -> list[str]:
    """The sample corpus's own evaluation queries: real questions about what it holds."""
    path = SAMPLE / "eval" / "queries.jsonl"
    with path.open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    return list(dict.fromkeys(texts))


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


def model_misses(app: Any) -> int:
    """Texts the model embedded so far: a fresh query must add one, a cached one none."""
    models = app.engine.embeddings.metrics.snapshot()
    return sum(m["misses"] for m in models.values())


async def type_last_key(app: Any, query: str) -> float:
    """Put all but the last character in the box, wait for its results, then time the last key
    press until the results for the whole query are shown."""
    from tui.panes.search import SearchPane

    pane = app.query_one(SearchPane)
    box = app.query_one("#query")
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
    return (time.perf_counter() - started) * 1000


async def in_app(corpus: Path, queries: list[str]) -> dict[str, Any]:
    from tui.app import EmbedscopeApp

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
        window_started = None
        while "ready:" not in str(status.render()):
            if "Indexing" in str(status.render()) and not indexing.is_set():
                indexing.set()
                window_started = time.perf_counter()
            if "failed" in str(status.render()):
                raise SystemExit(f"app failed: {status.render()}")
            # Polled often, so the window opens as indexing starts, not after its first stall.
            await asyncio.sleep(0.005)
        indexing.clear()
        if window_started is None or not lags:
            raise SystemExit(f"the app never reported indexing; status: {status.render()}")
        window_s = time.perf_counter() - window_started
        report = str(status.render())
        log(f"indexed in {window_s:.1f}s: {report}")
        app.query_one("#query").focus()
        fresh, cached = [], []
        for query in queries:
            misses = model_misses(app)
            fresh.append(await type_last_key(app, query))
            if model_misses(app) <= misses:
                raise SystemExit(f"query {query!r} was served from a cache: it is not fresh")
        for query in queries:
            misses = model_misses(app)
            cached.append(await type_last_key(app, query))
            if model_misses(app) != misses:
                raise SystemExit(f"query {query!r} typed again reached the model")
        documents = app.index.stats().documents if app.index else 0
        stop.set()
        await watcher
    return {
        "keystroke_to_results_p50_ms": round(statistics.median(fresh), 1),
        "keystroke_to_results_p95_ms": round(percentile(fresh, 95), 1),
        "keystroke_to_results_cached_p50_ms": round(statistics.median(cached), 1),
        "keystroke_to_results_cached_p95_ms": round(percentile(cached, 95), 1),
        "max_loop_lag_ms": round(max(lags), 1),
        "loop_lag_p99_ms": round(percentile(lags, 99), 1),
        "lag_window_s": round(window_s, 2),
        "lag_samples": len(lags),
        "documents_indexed": documents,
        "queries": len(queries),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    if args.smoke and not args.quick:
        p.error("--smoke goes with --quick")
    queries = sample_queries()
    queries = queries[:3] if args.smoke else queries[:12] if args.quick else queries
    runs = args.repeats or (1 if args.quick else 5)
    # A fresh folder for the app's data even under --data-dir: a kept embedding cache would
    # serve the "fresh" queries and the corpus, and the figures would flatter the app.
    with bench_home(args.data_dir) as home, tempfile.TemporaryDirectory(dir=home) as data:
        os.environ["EMBEDSCOPE_HOME"] = data
        log(f"first paint x{runs}")
        paint = first_paint_s(runs)
        log(f"indexing {SAMPLE.name} in the app, then {len(queries)} queries twice")
        result: dict[str, Any] = {
            "benchmark": "app",
            "first_paint_s": round(paint, 3),
            "first_paint_runs": runs,
            **asyncio.run(in_app(SAMPLE, queries)),
            "corpus": str(SAMPLE.relative_to(REPO)),
            "quick": args.quick,
            "machine": machine(),
        }
    result["targets"] = {
        key: {"value": result[key], "target": f"<= {bound}", "met": result[key] <= bound}
        for key, bound in TARGETS.items()
    }
    emit(result)


if __name__ == "__main__":
    main()
