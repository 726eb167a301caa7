"""sentence-transformers models run on one long-lived thread per model.

One thread, not a pool per call: torch already uses every core for one batch, so more threads only
contend, and creating executors per request (as the design did) costs a thread spawn per call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.base import EmbeddingModel, Fingerprint, ModelError, ModelInfo, Truncated


def pick_device(requested: str) -> str:
    """auto = CUDA, then Apple MPS, then CPU; an explicit choice is checked, not trusted."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device '{requested}' was asked for but CUDA is not available here")
    return requested


class SentenceTransformerModel(EmbeddingModel):
    kind = "sentence-transformers"

    def __init__(
        self,
        name: str,
        location: Path,
        fingerprint: Fingerprint,
        *,
        device: str = "auto",
        trust_remote_code: bool = False,
        source: str = "",
    ) -> None:
        self.name = name
        self._location = location
        self.folder = location
        self._fingerprint = fingerprint
        self._requested_device = device
        self._trust_remote_code = trust_remote_code
        self._source = source
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._model: Any = None
        self._device = "not loaded"
        self._load_seconds: float | None = None
        self._load_lock = asyncio.Lock()
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._special_tokens = 2

    @property
    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        async with self._load_lock:
            if self._model is None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        started = time.perf_counter()
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        device = pick_device(self._requested_device)
        try:
            model = SentenceTransformer(
                str(self._location),
                device=device,
                trust_remote_code=self._trust_remote_code,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(
                f"model '{self.name}': loading {self._location} failed: {exc}"
            ) from exc
        if device.startswith("cuda"):
            model.half()
        model.max_seq_length = self._fingerprint.max_seq_length
        model.eval()
        self._model = model
        self._device = device
        self._load_seconds = time.perf_counter() - started

    async def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            await self.load()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode_sync, texts)

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        """Runs on the model thread; sentence-transformers sorts by length inside the batch too."""
        vectors = self._model.encode(
            texts,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _tokenizer_obj(self) -> Any:
        """The fast Rust tokenizer alone: truncation and cache keys need no torch."""
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(self._location / "tokenizer.json"))
                tok.no_truncation()
                tok.no_padding()
                self._special_tokens = len(tok.encode("", add_special_tokens=True).ids)
                self._tokenizer = tok
            return self._tokenizer

    def truncate(self, texts: list[str]) -> Truncated:
        """Cut at the start of the first token past the window, so the model sees exactly the
        tokens its own truncation would keep, and the cache key is the text it really embeds."""
        if not (self._location / "tokenizer.json").is_file():
            return Truncated(list(texts), 0, [len(t.split()) for t in texts])
        tok = self._tokenizer_obj()
        limit = self._fingerprint.max_seq_length - self._special_tokens
        out: list[str] = []
        counts: list[int] = []
        truncated = 0
        for text, enc in zip(texts, tok.encode_batch(texts, add_special_tokens=False), strict=True):
            counts.append(len(enc.ids))
            if len(enc.ids) > limit:
                out.append(text[: enc.offsets[limit][0]].rstrip())
                truncated += 1
            else:
                out.append(text)
        return Truncated(out, truncated, counts)

    def info(self) -> ModelInfo:
        params = param_bytes = None
        if self._model is not None:
            tensors = list(self._model.parameters())
            params = sum(t.numel() for t in tensors)
            param_bytes = sum(t.numel() * t.element_size() for t in tensors)
        return ModelInfo(
            name=self.name,
            kind=self.kind,
            dimension=self._fingerprint.dimension,
            max_seq_length=self._fingerprint.max_seq_length,
            device=self._device,
            loaded=self._model is not None,
            parameters=params,
            parameter_bytes=param_bytes,
            load_seconds=self._load_seconds,
            source=self._source,
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
