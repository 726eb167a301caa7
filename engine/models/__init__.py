"""Model registry and the models it serves; importing this loads no weights and no torch."""

from engine.models.base import EmbeddingModel, Fingerprint, ModelError, ModelInfo, Truncated
from engine.models.registry import Availability, ModelRegistry, ModelSpec

__all__ = [
    "Availability",
    "EmbeddingModel",
    "Fingerprint",
    "ModelError",
    "ModelInfo",
    "ModelRegistry",
    "ModelSpec",
    "Truncated",
]
