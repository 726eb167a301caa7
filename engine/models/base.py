"""What every embedding model offers the engine, whatever runs it."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelUnavailableError


class ModelError(ModelUnavailableError):
    """A model cannot be found, verified or loaded; the message says where it looked and the fix."""


@dataclass(frozen=True)
class Fingerprint:
    """Identity of a model's outputs: two models with equal fingerprints embed text identically.

    The embedding cache and every index key on `digest`, so swapping weights under the same name
    can never serve stale vectors.
    """

    name: str
    weights_digest: str
    dimension: int
    normalized: bool
    max_seq_length: int

    @cached_property
    def digest(self) -> str:
        """Cached: every cache key hashes it, so pruning thousands of texts must not redo it."""
        payload = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "digest": self.digest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass
class ModelInfo:
    name: str
    kind: str
    dimension: int
    max_seq_length: int
    device: str
    loaded: bool
    parameters: int | None = None
    parameter_bytes: int | None = None
    load_seconds: float | None = None
    source: str = ""
    # What runs small batches (queries) if not what runs the rest: "onnxruntime, 2 threads".
    small_batches: str = ""
    # Median model time of a lone text (a query), loading excluded; None until one has run.
    query_p50_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Truncated:
    """Texts cut to the model window, ready to key the cache and feed the model."""

    texts: list[str]
    truncated: int
    token_counts: list[int]


class EmbeddingModel(ABC):
    """An embedding model: L2-normalised float32 rows, one per input text, in input order."""

    name: str
    kind: str
    # The model's folder on disk, where its tokenizer lives; None for remote models.
    folder: Path | None = None

    @property
    @abstractmethod
    def fingerprint(self) -> Fingerprint:
        """Known without loading weights, so cache look-ups need no model."""

    @property
    def dimension(self) -> int:
        return self.fingerprint.dimension

    @abstractmethod
    async def load(self) -> None:
        """Load all a model may need, once, off the event loop; later calls return at once.
        `encode` does not need it: it loads what its batch needs on first use."""

    @abstractmethod
    async def encode(self, texts: list[str]) -> np.ndarray:
        """Embed already-truncated texts as one batch."""

    @abstractmethod
    def truncate(self, texts: list[str], *, count: bool = True) -> Truncated:
        """Cut each text to what the model will actually see. Without `count` the token counts
        may be left empty, sparing a tokenizer where the cut can be known without one."""

    @abstractmethod
    def info(self) -> ModelInfo: ...

    # Texts per model call when the model knows better than `embedding.max_batch_size` (a remote
    # model keeps several requests in flight); None takes the setting.
    preferred_batch_size: int | None = None

    def status(self) -> dict[str, Any] | None:
        """Health of a remote endpoint (state, breaker, usage, latency); None for local models."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, most models hold nothing
        """Release threads and memory; the default holds none."""
