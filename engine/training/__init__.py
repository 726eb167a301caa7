"""Fine-tuning embedding models on the user's own pairs; importing this loads no torch."""

from engine.training.finetune import (
    CancelToken,
    FinetuneCancelled,
    FinetuneError,
    FinetuneProgress,
    FinetuneResult,
    Pair,
    beir_pairs,
    finetune,
    pairs_digest,
    read_pairs,
)

__all__ = [
    "CancelToken",
    "FinetuneCancelled",
    "FinetuneError",
    "FinetuneProgress",
    "FinetuneResult",
    "Pair",
    "beir_pairs",
    "finetune",
    "pairs_digest",
    "read_pairs",
]
