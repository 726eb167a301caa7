"""Query latency over a large index of real text: flat vs HNSW, through `CorpusIndex.search`.

Usage: .venv/bin/python benchmarks/bench_search.py [--quick] [--chunks N] [--int8] [--data-dir DIR]

Builds (or reuses, with --data-dir) a flat and an HNSW index over N distinct SciFact/Cranfield
chunks, then times end-to-end vector queries (embed the query, search, fetch metadata). Every
query pass opens the index with a fresh embedding service whose cache is empty, so each query
pays the model as a newly typed query would. The raw FAISS scan and the query embedding are timed
apart, so the engine's own overhead is the remainder. Baselines in the same run:
`batcher_max_wait_0` repeats the flat pass with embedding.max_wait_ms=0 (no coalescing wait for
a lone query); `torch_queries` with onnx_small_batches off (every query through torch);
`faiss_threads_2` with EMBEDSCOPE_FAISS_THREADS=2 (a lone query's scan split over both cores).
That pass runs last in each round: the engine applies the count on whichever worker thread opens
the index, so it outlives the pass on that thread. Last, the static tier (`minilm-static`,
distilled on first use) and its source model embed the same fresh queries, alternating per
query, cache bypassed: `static_query_speedup` is the ratio of their median query times.
With --int8, the same chunks are also indexed with `minilm-int8` (flat and HNSW; its own
embeddings, about 1.8x faster to make than fp32's) and its HNSW queries are timed beside fp32's:
`hnsw_int8_query_p50_ms`, with `hnsw_int8_recall_at_10` against the int8 flat index, and
`int8_model_encode_ms`: the int8 model alone on one fresh query, the floor under its searches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    bench_config,
    bench_home,
    check_positive,
    chunk_texts,
    emit,
    log,
    machine,
    median,
    model_config,
    parser,
    percentile,
    queries,
)

from engine import Engine
from engine.config import Config, load_config
from engine.embedding import EmbeddingService
from engine.index import CorpusIndex, IndexProgress
from engine.models import ModelRegistry

ROWS_PER_FILE = 1000
TOP_K = 10
STATIC = "minilm-static"
INT8 = "minilm-int8"
# Passes whose model is also timed alone on fresh queries (through the service, then directly).
PROBED = ("flat", "nowait", "torch", "hnsw_int8")
TARGETS = {
    "query_p50_ms": ("<=", 25.0),
    "query_p95_ms": ("<=", 40.0),
    "hnsw_query_p50_ms": ("<=", 10.0),
    "hnsw_recall_at_10": (">=", 0.95),
    "static_query_speedup": (">=", 10.0),
}


def write_source(folder: Path, texts: list[str]) -> Path:
    """One jsonl per 1,000 chunks (a realistic folder, and the indexer pipelines across files);
    written once, so a reused --data-dir sees unchanged files and re-embeds nothing."""
    done = folder / ".complete"
    if done.is_file():
        return folder / "corpus"
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, len(texts), ROWS_PER_FILE)):
        rows = texts[start : start + ROWS_PER_FILE]
        lines = [json.dumps({"_id": str(start + i), "text": t}) for i, t in enumerate(rows)]
        (corpus / f"part-{part:04d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done.write_text("ok\n", encoding="utf-8")
    return corpus


async def build(config: Config, name: str, index_type: str, source: Path) -> dict[str, Any]:
    """Index the folder (embeddings come from the cache where present) and report its size."""
    last = [0.0]

    def progress(p: IndexProgress) -> None:
        now = time.monotonic()
        if now - last[0] > 10 or p.phase == "done":
            last[0] = now
            log(
                f"  {name}: {p.phase} {p.files_done}/{p.files_total} files, "
                f"{p.chunks_done} chunks, {p.chunks_per_s:.0f} chunks/s"
            )

    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create(name, index_type=index_type)
        started = time.perf_counter()
        report = await index.index_path([source], progress=progress)
        seconds = time.perf_counter() - started
        stats = index.stats()
        memory = index.vectors.memory_bytes()
        active = index.vectors.active_type
    return {
        "seconds": seconds,
        "chunks": stats.chunks,
        "embedded": report.chunks_embedded,
        "model_calls": report.model_calls,
        "disk_bytes": stats.bytes_on_disk,
        "memory_bytes": memory,
        "active_type": active,
    }


async def query_pass(
    config: Config,
    name: str,
    measured: list[str],
    warmup: list[str],
    *,
    threads: int | None = None,
    embed_probe: Sequence[str] = (),
) -> dict[str, Any]:
    """Cold queries through CorpusIndex.search, then the FAISS scan alone on the same vectors.

    `threads` is applied the way a user would, through EMBEDSCOPE_FAISS_THREADS while the index
    opens, and also on this thread for the scan-only timing (OpenMP's count is per thread).
    """
    import faiss

    from engine.store.faiss_store import THREADS_ENV, configure_faiss_threads

    default_threads = faiss.omp_get_max_threads()
    previous_env = os.environ.pop(THREADS_ENV, None)
    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)
    with tempfile.TemporaryDirectory(prefix="embedscope-qcache-") as cache:
        service = EmbeddingService(ModelRegistry(config), config.embedding, Path(cache))
        await service.start()
        try:
            folder = config.data_dir / "indexes" / name
            index = await CorpusIndex.open(name, folder, config, service)
            try:
                if threads is not None:
                    configure_faiss_threads(threads)
                for q in warmup:
                    await index.search(q, TOP_K, mode="vector")
                latencies: list[float] = []
                found: list[list[int]] = []
                for q in measured:
                    started = time.perf_counter()
                    hits = await index.search(q, TOP_K, mode="vector")
                    latencies.append((time.perf_counter() - started) * 1000)
                    found.append([h.chunk_id for h in hits])
                fetches = []
                for q, ids in zip(measured, found, strict=True):
                    started = time.perf_counter()
                    index.store.chunks_by_ids(ids)
                    for chunk_id in ids:
                        index.store.snippet(chunk_id, q)
                    fetches.append((time.perf_counter() - started) * 1000)
                vectors = await service.encode(measured)
                scans = []
                for row in vectors:
                    started = time.perf_counter()
                    index.vectors.search(row[None, :], TOP_K)
                    scans.append((time.perf_counter() - started) * 1000)
                embeds, direct = [], []
                for q in embed_probe:
                    started = time.perf_counter()
                    await service.encode([q])
                    embeds.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    index.model.encode_sync([q])
                    direct.append((time.perf_counter() - started) * 1000)
                runtime = index.model.info().small_batches
            finally:
                index.close()
        finally:
            await service.stop()
            configure_faiss_threads(default_threads)
            os.environ.pop(THREADS_ENV, None)
            if previous_env is not None:
                os.environ[THREADS_ENV] = previous_env
    return {
        "latencies": latencies,
        "found": found,
        "scans": scans,
        "fetches": fetches,
        "embeds": embeds,
        "direct": direct,
        "runtime": runtime,
    }


async def static_pass(home: Path, measured: list[str], warmup: list[str]) -> dict[str, Any]:
    """Each fresh query through the service on the static tier and on its source model, in
    alternating order, cache bypassed so both pay their model."""
    base = load_config(use_user_file=False)
    source = str(base.models[STATIC]["distill_from"])
    raw = {**base.raw, "models": {source: base.models[source], STATIC: base.models[STATIC]}}
    config = dataclasses.replace(base, raw=raw, data_dir=home)
    times: dict[str, list[float]] = {source: [], STATIC: []}
    async with Engine(config) as engine:
        service = engine.embeddings
        for name in times:
            await service.model(name)
            for q in warmup:
                await service.encode_detailed([q], name, use_cache=False)
        for i, q in enumerate(measured):
            for name in (source, STATIC) if i % 2 == 0 else (STATIC, source):
                started = time.perf_counter()
                await service.encode_detailed([q], name, use_cache=False)
                times[name].append((time.perf_counter() - started) * 1000)
    return {"source": source, "source_ms": times[source], "static_ms": times[STATIC]}


def recall(truth: list[list[int]], approx: list[list[int]]) -> float:
    shares = [len(set(t) & set(a)) / len(t) for t, a in zip(truth, approx, strict=True) if t]
    return sum(shares) / len(shares)


def ms(values: list[float]) -> float:
    return round(median(values), 3)


async def run(args: Any) -> dict[str, Any]:
    import faiss

    n = args.chunks or (300 if args.smoke else 4000 if args.quick else 100_000)
    n_queries = args.queries or (8 if args.smoke else 50 if args.quick else 200)
    rounds = args.repeats or (1 if args.quick else 2)
    pool = queries()
    warmup, measured = pool[:5], pool[5 : 5 + n_queries]
    probe = pool[5 + n_queries : 5 + n_queries + (4 if args.smoke else 30)]
    if len(measured) < n_queries:
        raise SystemExit(f"only {len(pool) - 5} queries are available, {n_queries} asked")
    with bench_home(args.data_dir) as home:
        config = bench_config(home)
        log(f"preparing {n} chunks of real text under {home}")
        source = write_source(home / f"bench-search-source-{n}", chunk_texts(n))
        builds = {}
        for kind in ("flat", "hnsw"):
            log(f"building the {kind} index")
            builds[kind] = await build(config, f"bench-{kind}-{n}", kind, source)
        int8 = model_config(home, INT8) if args.int8 else None
        if int8 is not None:
            for kind in ("flat", "hnsw"):
                log(f"building the {kind} index with {INT8}")
                builds[f"{kind}_int8"] = await build(int8, f"bench-{kind}-int8-{n}", kind, source)
        default_threads = faiss.omp_get_max_threads()
        passes: dict[str, list[dict[str, Any]]] = {
            "flat": [],
            "flat2": [],
            "nowait": [],
            "torch": [],
            "hnsw": [],
            "flat_int8": [],
            "hnsw_int8": [],
        }
        no_wait = bench_config(home, max_wait_ms=0)
        torch_only = bench_config(home)
        default = torch_only.default_model
        torch_only.raw["models"] = {
            default: {**torch_only.models[default], "onnx_small_batches": False}
        }
        int8_passes = []
        if int8 is not None:
            int8_passes = [
                ("flat_int8", f"bench-flat-int8-{n}", None, int8),
                ("hnsw_int8", f"bench-hnsw-int8-{n}", None, int8),
            ]
        for r in range(rounds):
            for label, name, threads, cfg in (
                ("flat", f"bench-flat-{n}", None, config),
                ("nowait", f"bench-flat-{n}", None, no_wait),
                ("torch", f"bench-flat-{n}", None, torch_only),
                ("hnsw", f"bench-hnsw-{n}", None, config),
                *int8_passes,
                ("flat2", f"bench-flat-{n}", 2, config),
            ):
                log(f"round {r + 1}/{rounds}: {len(measured)} queries, {label}")
                passes[label].append(
                    await query_pass(
                        cfg,
                        name,
                        measured,
                        warmup,
                        threads=threads,
                        embed_probe=probe if label in PROBED else [],
                    )
                )
        log(f"{STATIC} vs its source model: {len(measured)} fresh queries each")
        static = await static_pass(home, measured, warmup)

    def pooled(label: str, key: str) -> list[float]:
        return [v for p in passes[label] for v in p[key]]

    flat_lat, flat2_lat, hnsw_lat = (pooled(k, "latencies") for k in ("flat", "flat2", "hnsw"))
    embeds = pooled("flat", "embeds")
    flat, hnsw = builds["flat"], builds["hnsw"]
    result: dict[str, Any] = {
        "benchmark": "search",
        "chunks": flat["chunks"],
        "queries": len(measured),
        "rounds": rounds,
        "top_k": TOP_K,
        "query_p50_ms": ms(flat_lat),
        "query_p95_ms": round(percentile(flat_lat, 95), 3),
        "faiss_scan_ms": ms(pooled("flat", "scans")),
        "query_embed_ms": ms(embeds),
        "model_encode_ms": ms(pooled("flat", "direct")),
        "fetch_ms": ms(pooled("flat", "fetches")),
        "overhead_p50_ms": round(
            median(flat_lat)
            - median(pooled("flat", "scans"))
            - median(embeds)
            - median(pooled("flat", "fetches")),
            3,
        ),
        "batcher_max_wait_0": {
            "query_p50_ms": ms(pooled("nowait", "latencies")),
            "query_p95_ms": round(percentile(pooled("nowait", "latencies"), 95), 3),
            "query_embed_ms": ms(pooled("nowait", "embeds")),
        },
        "torch_queries": {
            "query_p50_ms": ms(pooled("torch", "latencies")),
            "query_p95_ms": round(percentile(pooled("torch", "latencies"), 95), 3),
            "query_embed_ms": ms(pooled("torch", "embeds")),
            "flat_p50_ratio_vs_torch": round(
                median(flat_lat) / median(pooled("torch", "latencies")), 3
            ),
        },
        "small_batches": passes["flat"][0]["runtime"],
        "hnsw_query_p50_ms": ms(hnsw_lat),
        "hnsw_query_p95_ms": round(percentile(hnsw_lat, 95), 3),
        "hnsw_scan_ms": ms(pooled("hnsw", "scans")),
        "hnsw_recall_at_10": round(
            recall(
                [ids for p in passes["flat"] for ids in p["found"]],
                [ids for p in passes["hnsw"] for ids in p["found"]],
            ),
            4,
        ),
        **(int8_figures(passes) if args.int8 else {}),
        "static_query_speedup": round(
            median(static["source_ms"]) / median(static["static_ms"]), 1
        ),
        "static_query_embed_ms": ms(static["static_ms"]),
        "static_source_query_embed_ms": ms(static["source_ms"]),
        "static_source_model": static["source"],
        "faiss_threads_default": default_threads,
        "faiss_threads_2": {
            "query_p50_ms": ms(flat2_lat),
            "query_p95_ms": round(percentile(flat2_lat, 95), 3),
            "faiss_scan_ms": ms(pooled("flat2", "scans")),
            "p50_delta_ms_vs_default": round(median(flat2_lat) - median(flat_lat), 3),
        },
        "bytes_per_chunk": {
            "flat_disk": round(flat["disk_bytes"] / flat["chunks"], 1),
            "flat_memory": round(flat["memory_bytes"] / flat["chunks"], 1),
            "hnsw_disk": round(hnsw["disk_bytes"] / hnsw["chunks"], 1),
            "hnsw_memory": round(hnsw["memory_bytes"] / hnsw["chunks"], 1),
        },
        "build": {
            kind: {
                "seconds": round(b["seconds"], 2),
                "chunks_indexed_now": b["embedded"],
                "model_batches": b["model_calls"],
                "active_type": b["active_type"],
            }
            for kind, b in builds.items()
        },
        "machine": machine(),
    }
    result["targets"] = {
        key: {
            "value": result[key],
            "target": f"{op} {bound}",
            "met": _meets(result[key], op, bound),
        }
        for key, (op, bound) in TARGETS.items()
    }
    return result


def int8_figures(passes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """int8 queries on HNSW, beside fp32's `hnsw_query_p50_ms` (issue 10 asks <= 4 ms at 100k)."""
    latencies = [v for p in passes["hnsw_int8"] for v in p["latencies"]]
    return {
        "hnsw_int8_query_p50_ms": ms(latencies),
        "hnsw_int8_query_embed_ms": ms([v for p in passes["hnsw_int8"] for v in p["embeds"]]),
        "int8_model_encode_ms": ms([v for p in passes["hnsw_int8"] for v in p["direct"]]),
        "hnsw_int8_query_p95_ms": round(percentile(latencies, 95), 3),
        "hnsw_int8_scan_ms": ms([v for p in passes["hnsw_int8"] for v in p["scans"]]),
        "hnsw_int8_recall_at_10": round(
            recall(
                [ids for p in passes["flat_int8"] for ids in p["found"]],
                [ids for p in passes["hnsw_int8"] for ids in p["found"]],
            ),
            4,
        ),
    }


def _meets(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=None, help="index size (default 100,000)")
    p.add_argument("--queries", type=int, default=None, help="measured queries per pass")
    p.add_argument(
        "--int8", action="store_true", help=f"also index with {INT8} and time its HNSW queries"
    )
    args = p.parse_args()
    for name in ("repeats", "chunks", "queries"):
        check_positive(p, f"--{name}", getattr(args, name))
    emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
