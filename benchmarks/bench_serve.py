"""`embedscope serve` against the same calls in-process, 32 concurrent clients each.

Usage: .venv/bin/python benchmarks/bench_serve.py [--quick] [--requests N] [--clients C]

Indexes sample_corpus/ once, then measures warm /v1/search (model loaded, query vectors
cached) and /v1/embeddings (model loaded, each request one SciFact text no one embedded before,
as an embeddings API mostly sees): first on an Engine in this process (32 coroutines), then over
HTTP against `embedscope serve` in its own process (32 httpx clients), while the other side is
idle. Both sides embed different texts drawn alike. Ratios are throughput, served over
in-process. The server runs open on loopback (no key, so no rate limit): any 429
would be a bug, reported as `rejected_429`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from _common import (
    REPO,
    bench_config,
    bench_home,
    check_positive,
    emit,
    floor_targets,
    log,
    machine,
    parser,
    percentile,
    varied_texts,
)

from engine import Engine

INDEX = "bench"
TARGETS = {"serve_search_vs_inprocess": 0.7, "serve_embed_vs_inprocess": 0.7}
START_TIMEOUT_S = 300.0
SERVE = "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"


def queries() -> list[str]:
    path = REPO / "sample_corpus" / "eval" / "queries.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(root: Path) -> Iterator[str]:
    """`embedscope serve` in its own process on the benchmark's data dir."""
    port = free_port()
    env = {**os.environ, "EMBEDSCOPE_HOME": str(root), "XDG_CONFIG_HOME": str(root / "config")}
    args = ["serve", "--port", str(port), "--index", INDEX]
    proc = subprocess.Popen([sys.executable, "-c", SERVE, *args], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"embedscope serve exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("embedscope serve did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def clients(
    n: int, callers: int, call: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """n calls spread over `callers` concurrent workers: (seconds, per-call latencies)."""
    latencies: list[float] = []

    async def worker(w: int) -> None:
        for i in range(w, n, callers):
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(callers)))
    return time.perf_counter() - started, latencies


async def in_process(config: Any, qs: list[str], texts: list[str], callers: int) -> dict[str, Any]:
    n = len(texts)
    async with Engine(config) as engine:
        index = await engine.indexes.open(INDEX)

        async def search(i: int) -> None:
            await index.search(qs[i % len(qs)], 10)

        async def embed(i: int) -> None:
            await engine.embeddings.encode_request([texts[i]])

        await clients(len(qs), callers, search)  # warm: model loaded, queries cached
        search_s, _ = await clients(n, callers, search)
        embed_s, _ = await clients(n, callers, embed)
    return {"search_s": search_s, "embed_s": embed_s}


async def over_http(url: str, qs: list[str], texts: list[str], callers: int) -> dict[str, Any]:
    n = len(texts)
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def search(i: int) -> None:
            body = {"index": INDEX, "query": qs[i % len(qs)], "k": 10}
            statuses.append((await http.post("/v1/search", json=body)).status_code)

        async def embed(i: int) -> None:
            body = {"input": [texts[i]]}
            statuses.append((await http.post("/v1/embeddings", json=body)).status_code)

        await clients(len(qs), callers, search)
        statuses.clear()
        search_s, search_lat = await clients(n, callers, search)
        embed_s, embed_lat = await clients(n, callers, embed)
    failed = [s for s in statuses if s not in (200, 429)]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed over HTTP: statuses {sorted(set(failed))}")
    return {
        "search_s": search_s,
        "embed_s": embed_s,
        "search_lat": search_lat,
        "embed_lat": embed_lat,
        "rejected_429": statuses.count(429),
    }


async def build(config: Any, folder: Path) -> int:
    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create(INDEX)
        await index.index_path([folder])
        return index.stats().documents


def run(args: Any) -> dict[str, Any]:
    n = args.requests or (64 if args.smoke else 320 if args.quick else 2000)
    callers = args.clients
    qs = queries()
    pool = varied_texts(2 * n, max_words=60)
    with bench_home(args.data_dir) as root:
        config = bench_config(root)
        # --smoke indexes one topic folder: it only proves the benchmark runs.
        folder = REPO / "sample_corpus" / ("astronomy" if args.smoke else "")
        docs = asyncio.run(build(config, folder))
        log(f"indexed {docs} documents; {n} searches and {n} embeddings in-process")
        local = asyncio.run(in_process(config, qs, pool[:n], callers))
        with serving(root) as url:
            log(f"the same over HTTP at {url}, {callers} clients")
            served = asyncio.run(over_http(url, qs, pool[n:], callers))
    ms = 1000.0
    result: dict[str, Any] = {
        "benchmark": "serve",
        "requests": n,
        "clients": callers,
        "documents": docs,
        "serve_search_vs_inprocess": round(local["search_s"] / served["search_s"], 3),
        "serve_embed_vs_inprocess": round(local["embed_s"] / served["embed_s"], 3),
        "search_p50_ms": round(percentile(served["search_lat"], 50) * ms, 2),
        "search_p95_ms": round(percentile(served["search_lat"], 95) * ms, 2),
        "embed_p50_ms": round(percentile(served["embed_lat"], 50) * ms, 2),
        "rejected_429": served["rejected_429"],
        "inprocess_search_per_s": round(n / local["search_s"], 1),
        "serve_search_per_s": round(n / served["search_s"], 1),
        "inprocess_embed_per_s": round(n / local["embed_s"], 1),
        "serve_embed_per_s": round(n / served["embed_s"], 1),
        "machine": machine(),
    }
    result["targets"] = floor_targets(result, TARGETS)
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="calls per route (default 2,000)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    args = p.parse_args()
    for name in ("repeats", "requests", "clients"):
        check_positive(p, f"--{name}", getattr(args, name))
    emit(run(args))


if __name__ == "__main__":
    main()
