"""Embedding service throughput against sentence-transformers itself, measured in the same run.

Usage: .venv/bin/python benchmarks/bench_embed.py [--quick] [--texts N] [--repeats R]

Per repeat, on distinct SciFact texts of 8-120 words: direct `SentenceTransformer.encode`
(batch 32) vs the service with an empty cache (a fresh EMBEDSCOPE_HOME each repeat; cold time
runs until the disk cache has written every vector), then the same texts again from the in-memory
cache (median of 5 runs) and, in a second engine, from the disk cache. Then
64 single-text callers at once vs the same texts awaited one by one, cache bypassed for both so
each pays the model; `direct_batched_vs_one_by_one` is the same comparison on sentence-transformers
alone, the most batching can give on this CPU. Ratios are per repeat, reported as medians; the
order of the two sides alternates between repeats so a load change does not favour one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from _common import (
    bench_config,
    bench_home,
    check_positive,
    emit,
    floor_targets,
    load_sentence_transformer,
    log,
    machine,
    median,
    parser,
    varied_texts,
)

from engine import Engine

BATCH = 32
WARM_RUNS = 5
TARGETS = {
    "service_vs_direct": 0.90,
    "warm_vs_cold": 50.0,
    "concurrent_vs_sequential": 3.0,
}


def time_direct(model: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    model.encode(
        texts,
        batch_size=BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return time.perf_counter() - started


async def time_service(home: Path, texts: list[str], warmup: list[str]) -> dict[str, float]:
    """Cold (until the disk cache has written every vector: that work is part of a cold
    encode, only deferred), then L1-warm (median of a few), then L2-warm in a second engine."""
    config = bench_config(home)
    async with Engine(config) as engine:
        service = engine.embeddings
        if service.disk is None:
            raise RuntimeError("the service started without its disk cache")
        await service.encode_detailed(warmup, use_cache=False)
        await asyncio.to_thread(service.disk.flush)
        started = time.perf_counter()
        await service.encode(texts)
        encoded = time.perf_counter()
        await asyncio.to_thread(service.disk.flush)
        cold = time.perf_counter() - started
        flush = time.perf_counter() - encoded
        warm = []
        for _ in range(WARM_RUNS):
            started = time.perf_counter()
            result = await service.encode_detailed(texts)
            warm.append(time.perf_counter() - started)
        if set(result.sources) != {"l1"}:
            raise RuntimeError(f"expected only in-memory hits on the rerun, got {result.sources}")
    async with Engine(config) as engine:
        started = time.perf_counter()
        result = await engine.embeddings.encode_detailed(texts)
        l2 = time.perf_counter() - started
        if set(result.sources) != {"l2"}:
            raise RuntimeError(
                f"expected only disk-cache hits in a new engine, got {result.sources}"
            )
    return {"cold": cold, "warm": median(warm), "l2": l2, "flush": flush}


async def time_callers(
    home: Path, texts: list[str], warmup: list[str], sequential_first: bool
) -> dict[str, float]:
    """One text per caller, cache bypassed, so both sides pay the model for every text."""
    async with Engine(bench_config(home)) as engine:
        service = engine.embeddings
        await service.encode_detailed(warmup, use_cache=False)

        async def sequential() -> float:
            started = time.perf_counter()
            for text in texts:
                await service.encode_detailed([text], use_cache=False)
            return time.perf_counter() - started

        async def concurrent() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(service.encode_detailed([t], use_cache=False) for t in texts))
            return time.perf_counter() - started

        if sequential_first:
            seq = await sequential()
            conc = await concurrent()
        else:
            conc = await concurrent()
            seq = await sequential()
    return {"sequential": seq, "concurrent": conc}


async def run(args: Any) -> dict[str, Any]:
    n = args.texts or (48 if args.smoke else 300 if args.quick else 2000)
    callers = args.callers or (16 if args.smoke else 64)
    repeats = args.repeats or (1 if args.smoke else 2 if args.quick else 3)
    pool = varied_texts(repeats * (n + callers) + BATCH)
    warmup = pool[:BATCH]
    log(f"loading sentence-transformers for the direct baseline; {n} texts x {repeats} repeats")
    direct_model = load_sentence_transformer()
    time_direct(direct_model, warmup)
    rows: list[dict[str, float]] = []
    with bench_home(args.data_dir) as root:
        run_dir = root / f"bench-embed-{time.time_ns()}"
        for r in range(repeats):
            start = BATCH + r * (n + callers)
            texts = pool[start : start + n]
            single = pool[start + n : start + n + callers]
            home = run_dir / f"repeat-{r}"
            if r % 2 == 0:
                direct = time_direct(direct_model, texts)
                service = await time_service(home, texts, warmup)
            else:
                service = await time_service(home, texts, warmup)
                direct = time_direct(direct_model, texts)
            log(f"repeat {r + 1}: direct {direct:.2f}s, service cold {service['cold']:.2f}s")
            calls = await time_callers(home / "callers", single, warmup, r % 2 == 0)
            calls["direct_one_by_one"] = sum(time_direct(direct_model, [t]) for t in single)
            calls["direct_batched"] = time_direct(direct_model, single)
            log(
                f"repeat {r + 1}: {callers} callers sequential {calls['sequential']:.2f}s, "
                f"concurrent {calls['concurrent']:.2f}s"
            )
            rows.append({"direct": direct, **service, **calls})

    def med(key: str) -> float:
        return median([row[key] for row in rows])

    def ratio(num: str, den: str) -> float:
        """Median of per-repeat ratios of times (den / num = throughput num / throughput den)."""
        return round(median([row[den] / row[num] for row in rows]), 3)

    result: dict[str, Any] = {
        "benchmark": "embed",
        "texts": n,
        "callers": callers,
        "repeats": repeats,
        "batch_size": BATCH,
        "service_vs_direct": ratio("cold", "direct"),
        "warm_vs_cold": ratio("warm", "cold"),
        "l2_vs_cold": ratio("l2", "cold"),
        "concurrent_vs_sequential": ratio("concurrent", "sequential"),
        "direct_batched_vs_one_by_one": ratio("direct_batched", "direct_one_by_one"),
        "direct_texts_per_s": round(n / med("direct"), 1),
        "service_cold_texts_per_s": round(n / med("cold"), 1),
        "service_warm_texts_per_s": round(n / med("warm"), 1),
        "service_l2_texts_per_s": round(n / med("l2"), 1),
        "direct_ms": round(med("direct") * 1000, 1),
        "service_cold_ms": round(med("cold") * 1000, 1),
        "service_warm_ms": round(med("warm") * 1000, 2),
        "service_l2_ms": round(med("l2") * 1000, 1),
        "l2_write_flush_ms": round(med("flush") * 1000, 1),
        "sequential_ms": round(med("sequential") * 1000, 1),
        "sequential_ms_per_text": round(med("sequential") * 1000 / callers, 2),
        "concurrent_ms": round(med("concurrent") * 1000, 1),
        "direct_one_by_one_ms": round(med("direct_one_by_one") * 1000, 1),
        "direct_batched_ms": round(med("direct_batched") * 1000, 1),
        "per_repeat": [{k: round(v, 6) for k, v in row.items()} for row in rows],
        "machine": machine(),
    }
    result["targets"] = floor_targets(result, TARGETS)
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=None, help="texts per repeat (default 2,000)")
    p.add_argument("--callers", type=int, default=None, help="concurrent callers (default 64)")
    args = p.parse_args()
    for name in ("repeats", "texts", "callers"):
        check_positive(p, f"--{name}", getattr(args, name))
    emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
