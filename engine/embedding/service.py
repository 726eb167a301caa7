"""The embedding service: per-text caching in two levels, then micro-batched model calls.

The design cached whole requests, so two overlapping requests shared nothing; here every text is
its own cache entry keyed by the model fingerprint and the text the model actually sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.config import EmbeddingSettings
from engine.embedding.batcher import MicroBatcher, OverloadedError
from engine.embedding.cache import DiskCache, MemoryCache
from engine.embedding.metrics import Metrics
from engine.errors import BadRequestError
from engine.limits import RequestLimits
from engine.models import EmbeddingModel, ModelRegistry

Source = Literal["l1", "l2", "model"]
# Above this many texts, tokenising and disk look-ups move to a thread so the UI loop stays smooth.
INLINE_LIMIT = 16


def validate_texts(texts: Any) -> list[str]:
    """Reject what no model should see, naming the first offending item by index."""
    if isinstance(texts, str):
        raise BadRequestError("texts must be a list of strings, got a single str; wrap it: [text]")
    if not isinstance(texts, Sequence) or len(texts) == 0:
        raise BadRequestError("texts must be a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequestError(f"texts[{i}] is {type(text).__name__}, expected str")
        if not text.strip():
            raise BadRequestError(
                f"texts[{i}] is empty or whitespace only; drop it before embedding"
            )
    return list(texts)


def cache_key(fingerprint_digest: str, text: str) -> str:
    return hashlib.sha256(f"{fingerprint_digest}\x00{text}".encode()).hexdigest()


@dataclass
class EncodeResult:
    vectors: np.ndarray
    sources: list[Source]
    truncated: list[bool]
    token_counts: list[int]
    seconds: float
    model: str


class EmbeddingService:
    """Started and stopped once with its engine; safe to call from many coroutines at once."""

    def __init__(
        self, registry: ModelRegistry, settings: EmbeddingSettings, cache_dir: Path
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = Metrics()
        self.memory = MemoryCache(int(settings.memory_cache_mb * 1024 * 1024))
        self._cache_dir = cache_dir
        self.disk: DiskCache | None = None
        self._batchers: dict[str, MicroBatcher] = {}
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        limit = int(self.settings.disk_cache_mb * 1024 * 1024)
        self.disk = await asyncio.to_thread(
            DiskCache, self._cache_dir, limit, self.settings.disk_cache_ttl_s
        )
        self._started = True

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()
        self._batchers.clear()
        if self.disk is not None:
            await asyncio.to_thread(self.disk.close)
            self.disk = None
        await self.registry.close()
        self._started = False

    async def __aenter__(self) -> EmbeddingService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def model(self, name: str | None = None) -> EmbeddingModel:
        """The named model, created once (weights load on first use)."""
        name = name or self.registry.config.default_model
        return self.registry.created(name) or await self.registry.aget(name)

    def _batcher(self, model: EmbeddingModel) -> MicroBatcher:
        batcher = self._batchers.get(model.name)
        if batcher is None:
            s = self.settings

            def on_batch(size: int, seconds: float, ok: bool, name: str = model.name) -> None:
                self.metrics.record_batch(name, size, seconds, ok)

            self.metrics.watch(model.name, model.status)
            batcher = MicroBatcher(
                model.name,
                model.encode,
                max_batch_size=model.preferred_batch_size or s.max_batch_size,
                max_wait_ms=s.max_wait_ms,
                max_queue=s.max_queue,
                on_batch=on_batch,
            )
            batcher.start()
            self._batchers[model.name] = batcher
        return batcher

    async def encode(self, texts: Sequence[str], model: str | None = None) -> np.ndarray:
        """(n, dim) float32, L2-normalised, rows in input order."""
        return (await self.encode_detailed(texts, model, count_tokens=False)).vectors

    async def encode_request(
        self, texts: Sequence[str], model: str | None = None
    ) -> EncodeResult:
        """A caller's request (CLI, app, a server): refused over the `limits` before any text is
        tokenised. Indexing calls encode_detailed, whose batch sizes the engine chooses."""
        items = validate_texts(texts)
        RequestLimits.from_config(self.registry.config).check_texts(items)
        return await self.encode_detailed(items, model)

    async def encode_detailed(
        self,
        texts: Sequence[str],
        model: str | None = None,
        *,
        use_cache: bool = True,
        count_tokens: bool = True,
    ) -> EncodeResult:
        """Without `count_tokens`, `token_counts` may come back empty (see `truncate`)."""
        if not self._started:
            raise RuntimeError(
                "the embedding service is not started (use `async with Engine(...)`)"
            )
        items = validate_texts(texts)
        started = time.perf_counter()
        mdl = await self.model(model)
        if len(items) > INLINE_LIMIT:
            cut = await asyncio.to_thread(mdl.truncate, items, count=count_tokens)
        else:
            cut = mdl.truncate(items, count=count_tokens)
        digest = mdl.fingerprint.digest
        keys = [cache_key(digest, t) for t in cut.texts]
        dim = mdl.dimension
        found: dict[str, np.ndarray] = {}
        sources: dict[str, Source] = {}
        if use_cache:
            for key in keys:
                vec = self.memory.get(key)
                if vec is not None:
                    found[key] = vec
                    sources[key] = "l1"
            wanted = list(dict.fromkeys(k for k in keys if k not in found))
            if wanted and self.disk is not None:
                normalized = mdl.fingerprint.normalized
                if len(wanted) > INLINE_LIMIT:
                    hits = await asyncio.to_thread(
                        self.disk.get_many, wanted, dim * 4, normalized
                    )
                else:
                    hits = self.disk.get_many(wanted, dim * 4, normalized)
                for key, vec in hits.items():
                    found[key] = vec
                    sources[key] = "l2"
                    self.memory.put(key, vec)
        counts = cut.token_counts or [len(t) for t in cut.texts]
        missing = {
            k: (t, n) for k, t, n in zip(keys, cut.texts, counts, strict=True) if k not in found
        }
        if missing:
            texts_in, lengths = zip(*missing.values(), strict=True)
            try:
                futures = self._batcher(mdl).submit(list(texts_in), list(lengths))
            except OverloadedError:
                self.metrics.record_overload(mdl.name)
                raise
            rows = await asyncio.gather(*futures)
            fresh = []
            for key, row in zip(missing, rows, strict=True):
                vec = np.ascontiguousarray(row, dtype=np.float32)
                found[key] = vec
                sources[key] = "model"
                fresh.append((key, vec.tobytes()))
                if use_cache:
                    self.memory.put(key, vec)
            if use_cache and self.disk is not None:
                self.disk.put_many(fresh)
        vectors = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)
        per_text: list[Source] = [sources[k] for k in keys]
        seconds = time.perf_counter() - started
        self.metrics.record_request(
            mdl.name,
            texts=len(items),
            l1=per_text.count("l1"),
            l2=per_text.count("l2"),
            misses=len(missing),
            truncated=cut.truncated,
            seconds=seconds,
        )
        return EncodeResult(
            vectors=vectors,
            sources=per_text,
            truncated=[t != o for t, o in zip(cut.texts, items, strict=True)]
            if cut.truncated
            else [False] * len(items),
            token_counts=cut.token_counts,
            seconds=seconds,
            model=mdl.name,
        )

    async def forget(self, texts: Sequence[str], model: str | None = None) -> int:
        """Drop the cached vectors of these texts (as `encode` keys them) from both levels;
        returns how many keys were dropped. Used when chunks leave an index (see
        `engine.embedding.pruning`)."""
        if not texts:
            return 0
        mdl = await self.model(model)
        return await asyncio.to_thread(self._forget, mdl, list(texts))

    def _forget(self, mdl: EmbeddingModel, texts: list[str]) -> int:
        """On a worker thread: hashing thousands of keys would stall the loop (both levels lock
        or queue their own writes)."""
        digest = mdl.fingerprint.digest
        cut = mdl.truncate(texts, count=False)
        keys = list(dict.fromkeys(cache_key(digest, t) for t in cut.texts))
        self.memory.drop(keys)
        if self.disk is not None:
            self.disk.drop_many(keys)
        return len(keys)

    def snapshot(self) -> dict[str, Any]:
        """Metrics per model plus cache sizes, in one call."""
        return {
            "models": self.metrics.snapshot(),
            "cache": {
                "l1_entries": len(self.memory),
                "l1_bytes": self.memory.nbytes,
                "l1_max_bytes": self.memory.max_bytes,
                "l2_entries": len(self.disk) if self.disk else 0,
                "l2_bytes": self.disk.volume() if self.disk else 0,
                "l2_errors": self.disk.errors if self.disk else 0,
                "l2_read_only": self.disk.read_only if self.disk else None,
            },
        }

    def prometheus(self) -> str:
        return self.metrics.prometheus()
