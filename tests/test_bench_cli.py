"""benchmarks/bench_cli.py runs end to end at its smallest size and prints one JSON object.

Timings are never asserted (the machine is shared); only that every figure exists, is a sane
number, agrees with the runs it summarises, and that the query path left torch out.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

FIGURES = (
    "cold_search_new_query_s",
    "cold_search_cached_s",
    "cold_index_unchanged_s",
    "warm_query_p50_ms",
)


def sane(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_cli_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_cli.py"), "--quick", "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert all(sane(r[key]) for key in FIGURES), {key: r[key] for key in FIGURES}
    runs = r["per_run"]
    assert len(runs["new_query"]) == len(runs["cached_query"]) == r["repeats"] == 1
    assert r["cold_search_new_query_s"] == runs["new_query"][0]["wall_s"]
    assert r["warm_query_p50_ms"] in runs["warm_query_ms"]
    # The split each search reports fits inside the process's wall time.
    for row in runs["new_query"] + runs["cached_query"]:
        assert 0 < row["load_s"] + row["search_s"] < row["wall_s"]
    assert r["warm_query_p50_ms"] == statistics.median_low(runs["warm_query_ms"])
    assert not {"torch", "sentence_transformers"} & set(r["query_path_modules"])
    baseline = r["baseline"]
    assert all(sane(baseline[k]) for k in ("python_start_s", "import_torch_s"))
    assert sane(baseline["cold_search_torch_queries_s"])
    assert set(r["targets"]) == {"cold_search_new_query_s", "cold_search_cached_s"}
    for name, target in r["targets"].items():
        assert target["value"] == r[name] and isinstance(target["met"], bool)
    assert r["machine"]["cpu_count"] >= 1
