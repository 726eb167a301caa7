"""Per-model figures measured on this machine, never typed in: latency, throughput, memory, cost."""

from __future__ import annotations

import asyncio
import importlib
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.engine import Engine

# Texts per encode call while embedding a corpus: big enough to fill batches, small enough for a
# smooth progress bar.
CHUNK = 256
THROUGHPUT_SAMPLE = 64
LATENCY_QUERIES = 50
WARMUP_QUERIES = 3


@dataclass(frozen=True)
class EvalProgress:
    """One step of an evaluation, for a progress bar: `done` of `total` in `phase` for `model`."""

    model: str
    phase: str
    done: int
    total: int


ProgressFn = Callable[[EvalProgress], None]


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray
    # Texts/s over the chunks the model computed in full; None when caches served them all.
    texts_per_s: float | None
    embedded: int


@dataclass(frozen=True)
class MemoryFigures:
    parameter_bytes: int | None
    # Resident growth across the weight load (libraries imported beforehand); None when the
    # model was already loaded in this process.
    rss_growth_bytes: int | None


def rss_bytes() -> int:
    """Current resident set size; falls back to the peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def ensure_available(engine: Engine, models: Sequence[str]) -> None:
    """Fail before any work when one named model cannot run, instead of after the others."""
    from engine.models import ModelError

    if not models:
        raise ValueError("name at least one model to evaluate")
    for name in models:
        availability = engine.registry.check(name)
        if not availability.available:
            raise ModelError(f"model '{name}' cannot be evaluated: {availability.reason}")


async def load_measured(engine: Engine, name: str) -> MemoryFigures:
    model = await engine.embeddings.model(name)
    already = model.info().loaded
    if model.kind == "sentence-transformers":
        await asyncio.to_thread(importlib.import_module, "sentence_transformers")
    before = rss_bytes()
    await model.load()
    growth = None if already else max(0, rss_bytes() - before)
    return MemoryFigures(model.info().parameter_bytes, growth)


async def embed_texts(
    engine: Engine,
    name: str,
    texts: Sequence[str],
    *,
    phase: str = "corpus",
    progress: ProgressFn | None = None,
) -> Embedded:
    """Embed through the cached service, longest texts first so batches share lengths.

    Empty texts (BEIR has a few empty documents) get a zero vector: they match nothing.
    """
    order = sorted(
        (i for i, t in enumerate(texts) if t.strip()), key=lambda i: len(texts[i]), reverse=True
    )
    model = await engine.embeddings.model(name)
    out = np.zeros((len(texts), model.dimension), dtype=np.float32)
    cold_texts = 0
    cold_seconds = 0.0
    embedded = 0
    for start in range(0, len(order), CHUNK):
        idx = order[start : start + CHUNK]
        result = await engine.embeddings.encode_detailed([texts[i] for i in idx], name)
        out[idx] = result.vectors
        misses = result.sources.count("model")
        embedded += misses
        if misses == len(idx):
            cold_texts += len(idx)
            cold_seconds += result.seconds
        if progress is not None:
            progress(EvalProgress(name, phase, min(start + CHUNK, len(order)), len(order)))
    rate = cold_texts / cold_seconds if cold_texts and cold_seconds > 0 else None
    return Embedded(out, rate, embedded)


async def sample_throughput(engine: Engine, name: str, texts: Sequence[str]) -> float:
    """Cold texts/s on a fixed, evenly spread sample, bypassing every cache."""
    usable = [t for t in texts if t.strip()]
    step = max(1, len(usable) // THROUGHPUT_SAMPLE)
    sample = usable[::step][:THROUGHPUT_SAMPLE]
    started = time.perf_counter()
    await engine.embeddings.encode_detailed(sample, name, use_cache=False)
    return len(sample) / (time.perf_counter() - started)


async def query_latency(
    engine: Engine,
    name: str,
    queries: Sequence[str],
    search: Callable[[np.ndarray], object] | None = None,
    *,
    progress: ProgressFn | None = None,
) -> tuple[float, float]:
    """p50 and p95 in ms of one query at a time, embed (uncached) plus `search`, after warm-up."""
    sample = list(queries[:LATENCY_QUERIES])
    for text in sample[:WARMUP_QUERIES]:
        result = await engine.embeddings.encode_detailed([text], name, use_cache=False)
        if search is not None:
            search(result.vectors[0])
    timings: list[float] = []
    for i, text in enumerate(sample):
        started = time.perf_counter()
        result = await engine.embeddings.encode_detailed([text], name, use_cache=False)
        if search is not None:
            search(result.vectors[0])
        timings.append((time.perf_counter() - started) * 1000.0)
        if progress is not None:
            progress(EvalProgress(name, "latency", i + 1, len(sample)))
    p50, p95 = np.percentile(np.asarray(timings), [50, 95])
    return float(p50), float(p95)


def price_per_1m_tokens(engine: Engine, name: str) -> float:
    """Configured price for remote (openai-kind) models; local models cost nothing per request."""
    options = engine.config.models.get(name, {})
    if options.get("kind") != "openai":
        return 0.0
    return float(options.get("price_per_1m_tokens", 0.0))


def cost_per_1k(token_counts: Sequence[int], price_per_1m: float) -> float:
    if not token_counts:
        return 0.0
    return float(np.mean(token_counts)) * 1000.0 * price_per_1m / 1e6


async def measure_model(
    engine: Engine,
    name: str,
    *,
    corpus: Sequence[str],
    embedded: Embedded,
    queries: Sequence[str],
    query_tokens: Sequence[int],
    memory: MemoryFigures,
    search: Callable[[np.ndarray], object] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, float | int | str | None]:
    """The operational figures of one model, in the units the comparison table shows."""
    model = await engine.embeddings.model(name)
    before = model.status()
    p50, p95 = await query_latency(engine, name, queries, search, progress=progress)
    after = model.status()
    if embedded.texts_per_s is not None:
        docs_per_s, basis = embedded.texts_per_s, "corpus"
    else:
        docs_per_s, basis = await sample_throughput(engine, name, corpus), "sample"
    param_mb = None if memory.parameter_bytes is None else memory.parameter_bytes / 2**20
    rss_mb = None if memory.rss_growth_bytes is None else memory.rss_growth_bytes / 2**20
    price = price_per_1m_tokens(engine, name)
    cost, cost_basis = cost_per_1k(query_tokens, price), "tokenizer"
    api_tokens = api_tokens_per_text(before, after)
    if api_tokens is not None:
        # What the endpoint billed for the timed queries, not what our tokenizer expects.
        cost, cost_basis = api_tokens * 1000.0 * price / 1e6, "api usage"
    remote = {}
    if after is not None:
        remote = {
            "api_tokens_per_query": api_tokens,
            "api_prompt_tokens": after["prompt_tokens"],
            "api_cost_usd": after["cost_usd"],
        }
    return {
        "query_p50_ms": p50,
        "query_p95_ms": p95,
        "docs_per_s": docs_per_s,
        "throughput_basis": basis,
        "memory_mb": param_mb if param_mb is not None else rss_mb,
        "parameter_mb": param_mb,
        "rss_growth_mb": rss_mb,
        "cost_per_1k": cost,
        "cost_basis": cost_basis,
        "price_per_1m_tokens": price,
        "mean_query_tokens": float(np.mean(query_tokens)) if query_tokens else 0.0,
        **remote,
    }


def api_tokens_per_text(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> float | None:
    """Mean usage.prompt_tokens per text the endpoint embedded between two status snapshots."""
    if before is None or after is None:
        return None
    texts = after["texts"] - before["texts"]
    if texts <= 0:
        return None
    return (after["prompt_tokens"] - before["prompt_tokens"]) / texts
