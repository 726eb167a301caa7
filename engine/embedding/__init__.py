"""Embedding service: two-level cache, micro-batching and metrics over the model registry."""

from engine.embedding.batcher import MicroBatcher, OverloadedError
from engine.embedding.service import EmbeddingService, EncodeResult, cache_key, validate_texts

__all__ = [
    "EmbeddingService",
    "EncodeResult",
    "MicroBatcher",
    "OverloadedError",
    "cache_key",
    "validate_texts",
]
