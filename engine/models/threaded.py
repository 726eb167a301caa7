"""What local models share: one long-lived thread, lazy loading, and tokenizer truncation.

One thread per model, not a pool per call: torch already uses every core for one batch, so more
threads only contend, and an executor per request (as the design had) costs a spawn per call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engine.models.base import EmbeddingModel, Fingerprint, Truncated

T = TypeVar("T")
# Texts per tokenizer call. Freeing one call's encodings holds the GIL: 5,000 abstracts at once
# measured a 120 ms stall of the event loop while a run's replaced chunks left the cache.
TOKENIZE_SLICE = 256
# Lone-text timings kept for the query median.
QUERY_WINDOW = 256


class ThreadedModel(EmbeddingModel):
    """A model whose weights live in `folder` and run on the model's own thread."""

    def __init__(self, name: str, folder: Path, fingerprint: Fingerprint, source: str) -> None:
        self.name = name
        self.folder = folder
        self._fingerprint = fingerprint
        self._source = source
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        # What small batches need, loaded on first use (`_ready`); subclasses may load more later.
        self._model: Any = None
        # Seconds spent loading, every runtime included.
        self._load_seconds: float | None = None
        self._query_ms: deque[float] = deque(maxlen=QUERY_WINDOW)
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        # Tokens the model adds around every text ([CLS], [SEP]); they count against the window.
        self._special_tokens = 0

    @property
    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        """Everything any batch may need; `encode` alone loads only what its batch needs."""
        await self._on_thread(self._load_all)

    def _load_all(self) -> None:
        self._ready()

    def _ready(self) -> Any:
        """Load what small batches need, once. Runs on the model thread, whose one worker
        serialises loads and batches, so no lock is needed."""
        if self._model is None:
            started = time.perf_counter()
            self._model = self._load_sync()
            self._add_load_time(time.perf_counter() - started)
        return self._model

    def _add_load_time(self, seconds: float) -> None:
        self._load_seconds = (self._load_seconds or 0.0) + seconds

    @abstractmethod
    def _load_sync(self) -> Any:
        """Load and return what small batches need; runs on the model thread."""

    async def encode(self, texts: list[str]) -> np.ndarray:
        return await self._on_thread(self._encode_ready, texts)

    def _encode_ready(self, texts: list[str]) -> np.ndarray:
        self._ready()
        started = time.perf_counter()
        vectors = self.encode_sync(texts)
        if len(texts) == 1:
            self._query_ms.append((time.perf_counter() - started) * 1000)
        return vectors

    def query_p50_ms(self) -> float | None:
        """Median time of a lone text (a query) on the model, loading excluded: what the model
        costs per query, apart from cache hits, indexing batches and the first load."""
        samples = sorted(self._query_ms)
        if not samples:
            return None
        # Not np.median (it imports numpy.ma, ~30 ms of a cold command) nor statistics (~10 ms
        # to import): a cold search reads this once, through `info()`.
        mid = len(samples) // 2
        return round((samples[mid] + samples[~mid]) / 2, 3)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @abstractmethod
    def encode_sync(self, texts: list[str]) -> np.ndarray:
        """One batch on the model thread: float32 rows, L2-normalised."""

    def _tokenizer_obj(self) -> Any:
        """The fast Rust tokenizer alone: truncation and cache keys need no torch."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
                tok.no_truncation()
                tok.no_padding()
                self._special_tokens = self._count_special(tok)
                self._tokenizer = tok
            return self._tokenizer

    def _count_special(self, tokenizer: Any) -> int:
        return 0

    def truncate(self, texts: list[str], *, count: bool = True) -> Truncated:
        """Cut at the start of the first token past the window, so the model sees exactly the
        tokens its own truncation would keep, and the cache key is the text it really embeds.

        Uncounted, short ASCII texts are returned untokenized: each token of one covers at least
        a character (one more for a leading word marker), so a text half the window long always
        fits. A cold search for a cached query then never loads the tokenizer (~60-100 ms)."""
        if not count and all(
            t.isascii() and 2 * len(t) <= self._fingerprint.max_seq_length for t in texts
        ):
            return Truncated(list(texts), 0, [])
        if not (self.folder / "tokenizer.json").is_file():
            return Truncated(list(texts), 0, [len(t.split()) for t in texts])
        tok = self._tokenizer_obj()
        limit = self._fingerprint.max_seq_length - self._special_tokens
        out: list[str] = []
        counts: list[int] = []
        truncated = 0
        for start in range(0, len(texts), TOKENIZE_SLICE):
            part = texts[start : start + TOKENIZE_SLICE]
            encodings = tok.encode_batch(part, add_special_tokens=False)
            for text, enc in zip(part, encodings, strict=True):
                counts.append(len(enc.ids))
                if len(enc.ids) > limit:
                    out.append(text[: enc.offsets[limit][0]].rstrip())
                    truncated += 1
                else:
                    out.append(text)
        return Truncated(out, truncated, counts)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
