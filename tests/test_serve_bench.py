"""bench_serve.py end to end at a tiny size: one JSON object with its keys, sane values.

Timings are never asserted (the machine is shared); only that the figures exist, are numbers
in range, and that the ratios agree with the throughputs reported beside them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_bench_serve_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--quick", "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    for key in (
        "serve_search_vs_inprocess",
        "serve_embed_vs_inprocess",
        "search_p50_ms",
        "search_p95_ms",
        "embed_p50_ms",
    ):
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, key
    assert r["rejected_429"] == 0 and r["requests"] == 64 and r["clients"] == 32
    assert r["search_p95_ms"] >= r["search_p50_ms"]
    ratio = r["serve_search_per_s"] / r["inprocess_search_per_s"]
    assert r["serve_search_vs_inprocess"] == pytest.approx(ratio, rel=0.05)
    assert set(r["targets"]) == {"serve_search_vs_inprocess", "serve_embed_vs_inprocess"}
