"""FAISS HNSW vs a Milvus server on the same real chunks as bench_search.py, through the
vector-store interface (engine.store.factory), in one run.

Usage: .venv/bin/python benchmarks/bench_backends.py [--quick] [--chunks N] [--uri URI]
       [--model NAME] [--data-dir DIR]

Chunks and queries come from benchmarks/_common.py (SciFact and Cranfield text), embedded with
the default model (or --model) through the engine's embedding service (cached under --data-dir,
so a rerun embeds nothing). On two cores MiniLM embeds 100,000 chunks in about two hours;
`--model minilm-static` does it in minutes, with 256-dimensional vectors instead of 384.
Every chunk carries `bucket = id % 50` as metadata, so `bucket=7` selects 2%.

Steps: fill a FAISS HNSW store; time lone queries on it (the query vectors are precomputed: both
backends get the same vectors, so only the store differs); copy every vector and its fields into
a new Milvus collection through the store interface (`migrate_s`, which includes the final
flush; `milvus_insert_per_s` counts the add calls alone); wait for the server to build its HNSW
graphs; then time lone queries, unfiltered and with the 2% filter, at the configured
read-your-writes consistency, and check a write is visible to the very next search.

Without --uri a server is started on .cache/milvus (tests/milvus_server.py) and stopped after.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO,
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

from engine.embedding import EmbeddingService
from engine.models import ModelRegistry
from engine.store import parse_filters
from engine.store.factory import create_store
from engine.store.vector_base import ChunkFields, Where

TOP_K = 10
BUCKETS = 50
FILTER = "bucket=7"
COPY_BATCH = 2000
INDEX_WAIT_S = 1800.0
TARGETS = {
    "milvus_recall_at_10": (">=", 0.95),
    "milvus_filtered_hits_at_10": ("==", 10.0),
    "milvus_query_p50_ms": ("<=", 50.0),
}


async def embed(home: Path, model: str | None, texts: list[str], what: str) -> np.ndarray:
    config = model_config(home, model)
    service = EmbeddingService(ModelRegistry(config), config.embedding, home / "cache")
    await service.start()
    try:
        parts = []
        for start in range(0, len(texts), 2048):
            parts.append(await service.encode(texts[start : start + 2048]))
            log(f"  embedded {min(start + 2048, len(texts))}/{len(texts)} {what}")
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    finally:
        await service.stop()


def timed_searches(store: Any, qvecs: np.ndarray, where: Where | None) -> tuple[list, np.ndarray]:
    latencies, found = [], []
    for row in qvecs:
        started = time.perf_counter()
        _, ids = store.search(row[None, :], TOP_K, where=where)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    return latencies, np.asarray(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    shares = [len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(shares))


def exact(vectors: np.ndarray, qvecs: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray:
    ids = np.arange(vectors.shape[0]) if pool is None else pool
    scores = qvecs @ vectors[ids].T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]]


def milvus_uri(args: Any) -> tuple[str, Any]:
    if args.uri:
        return args.uri, None
    sys.path.insert(0, str(REPO / "tests"))
    from milvus_server import MilvusServer

    server = MilvusServer()
    log("starting a Milvus server on .cache/milvus")
    server.start()
    server.drop_all_collections()
    return server.uri, server


async def run(args: Any) -> dict[str, Any]:
    n = args.chunks or (600 if args.smoke else 10_000 if args.quick else 100_000)
    n_queries = args.queries or (8 if args.smoke else 50 if args.quick else 200)
    pool = queries()
    warmup, measured = pool[:5], pool[5 : 5 + n_queries]
    with bench_home(args.data_dir) as home:
        log(f"embedding {n} chunks and {n_queries + 5} queries")
        vectors = await embed(home, args.model, chunk_texts(n), "chunks")
        qvecs = await embed(home, args.model, warmup + measured, "queries")
        config = model_config(home, args.model)
    warm_q, q = qvecs[:5], qvecs[5:]
    dim = int(vectors.shape[1])
    ids = np.arange(n, dtype=np.int64)
    fields = [
        ChunkFields(f"part-{i // 1000:04d}.jsonl", f"chunk {i}", "jsonl", 0, 1.7e9, {"bucket": b})
        for i, b in enumerate((ids % BUCKETS).tolist())
    ]
    where = Where(parse_filters([FILTER]))
    allowed = ids[ids % BUCKETS == 7]
    truth, truth_filtered = exact(vectors, q), exact(vectors, q, allowed)

    opts = config.store_settings("faiss")
    faiss_settings = {k: opts[k] for k in ("hnsw_m", "hnsw_ef_search", "hnsw_ef_construction")}
    log("filling the FAISS HNSW store")
    faiss_store = create_store("faiss", {**faiss_settings, "type": "hnsw"}, dim, name="bench")
    for start in range(0, n, COPY_BATCH):
        faiss_store.add(ids[start : start + COPY_BATCH], vectors[start : start + COPY_BATCH])
    timed_searches(faiss_store, warm_q, None)
    faiss_lat, faiss_found = timed_searches(faiss_store, q, None)

    uri, server = milvus_uri(args)
    milvus = None
    try:
        settings = {"uri": uri, "consistency": args.consistency}
        log(f"copying {n} vectors into Milvus at {uri} ({args.consistency} consistency)")
        started = time.perf_counter()
        milvus = create_store("milvus", settings, dim, name=f"bench-{uuid.uuid4().hex[:8]}")
        insert_s = 0.0
        for batch_ids, batch_vecs in faiss_store.iter_vectors(COPY_BATCH):
            t0 = time.perf_counter()
            milvus.add(batch_ids, batch_vecs, [fields[i] for i in batch_ids])
            insert_s += time.perf_counter() - t0
        milvus.optimize()
        migrate_s = time.perf_counter() - started
        log(f"  copied in {migrate_s:.1f} s; waiting for the server's HNSW build")
        t0 = time.perf_counter()
        indexed = milvus.wait_indexed(INDEX_WAIT_S)
        build_s = time.perf_counter() - t0
        timed_searches(milvus, warm_q, None)
        log(f"  {len(measured)} queries, unfiltered and {FILTER}")
        m_lat, m_found = timed_searches(milvus, q, None)
        f_lat, f_found = timed_searches(milvus, q, where)
        # Read-your-writes: a vector written now is what the very next search finds.
        probe = q[:1]
        fresh = int(n + 1)
        milvus.upsert(np.array([fresh]), probe, [fields[0]])
        _, seen = milvus.search(probe, 1)
        read_your_writes = bool(seen[0][0] == fresh)
    finally:
        if milvus is not None:
            milvus.destroy()
        if server is not None:
            server.release()

    correct = [int(np.isin(row[row >= 0], allowed).sum()) for row in f_found]
    result: dict[str, Any] = {
        "benchmark": "backends",
        "chunks": n,
        "model": config.default_model,
        "dimension": dim,
        "queries": len(measured),
        "top_k": TOP_K,
        "consistency": args.consistency,
        "milvus_insert_per_s": round(n / insert_s, 1),
        "milvus_query_p50_ms": round(median(m_lat), 3),
        "milvus_query_p95_ms": round(percentile(m_lat, 95), 3),
        "milvus_filtered_p50_ms": round(median(f_lat), 3),
        "milvus_filtered_p95_ms": round(percentile(f_lat, 95), 3),
        "milvus_filtered_hits_at_10": round(float(np.mean(correct)), 3),
        "milvus_filtered_recall_at_10": round(recall(f_found, truth_filtered), 4),
        "milvus_recall_at_10": round(recall(m_found, truth), 4),
        "milvus_read_your_writes": read_your_writes,
        "milvus_index_built": indexed,
        "milvus_index_build_s": round(build_s, 1),
        "faiss_hnsw_query_p50_ms": round(median(faiss_lat), 3),
        "faiss_hnsw_query_p95_ms": round(percentile(faiss_lat, 95), 3),
        "faiss_hnsw_recall_at_10": round(recall(faiss_found, truth), 4),
        "migrate_s": round(migrate_s, 2),
        "machine": machine(),
    }
    checks = {}
    for key, (op, target) in TARGETS.items():
        value = result[key]
        met = value >= target if op == ">=" else value <= target if op == "<=" else value == target
        checks[key] = {"target": f"{op} {target}", "met": bool(met)}
    result["targets"] = checks
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=None, help="chunks (default 100,000)")
    p.add_argument("--queries", type=int, default=None, help="timed queries (default 200)")
    p.add_argument("--uri", default=None, help="a running Milvus server (default: start one)")
    p.add_argument(
        "--model", help="embed with this declared model (default minilm; e.g. minilm-static)"
    )
    p.add_argument(
        "--consistency", default="Session", choices=("Session", "Strong"), help="read level"
    )
    args = p.parse_args()
    check_positive(p, "--chunks", args.chunks)
    check_positive(p, "--queries", args.queries)
    emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
