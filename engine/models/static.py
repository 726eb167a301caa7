"""Static (model2vec) embeddings: a token table distilled from a sentence-transformers model.

No transformer runs at query time, so a query costs microseconds instead of milliseconds; the
price is quality. Nothing is downloaded: the table is distilled once, offline, from a local model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.base import Fingerprint, ModelError, ModelInfo
from engine.models.threaded import ThreadedModel

WEIGHTS = "model.safetensors"
RECORD = "distill.json"
DEFAULT_MAX_TOKENS = 512


def distilled_record(folder: Path) -> dict[str, Any] | None:
    """The distillation parameters saved beside the table, or None if the folder is unusable."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not (folder / WEIGHTS).is_file():
        return None
    return record


def distill_static(
    name: str, source: Path, target: Path, *, pca_dims: int, record: dict[str, Any]
) -> Path:
    """Distil `source` into `target` once; a half-written folder is never visible under `target`.

    `record` (the source model's name and digest) is saved beside the weights so a later run can
    tell whether the table still matches its source.
    """
    from model2vec.distill import distill

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    started = time.perf_counter()
    try:
        try:
            static = distill(model_name=str(source), pca_dims=pca_dims)
        except Exception as exc:
            raise ModelError(
                f"model '{name}': distilling a static model from {source} failed: {exc}"
            ) from exc
        static.save_pretrained(str(staging))
        full = {
            **record,
            "pca_dims": pca_dims,
            "model2vec_version": version("model2vec"),
            "seconds": round(time.perf_counter() - started, 2),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / RECORD).write_text(json.dumps(full, indent=2) + "\n")
        old = target.with_name(f".{target.name}-stale-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class Model2VecModel(ThreadedModel):
    kind = "model2vec"

    def __init__(
        self, name: str, location: Path, fingerprint: Fingerprint, *, source: str = ""
    ) -> None:
        super().__init__(name, location, fingerprint, source)

    def _load_sync(self) -> Any:
        from model2vec import StaticModel

        try:
            # max_length=None: `truncate` already cut each text, and model2vec's own pre-cut
            # works in characters, which would make the cache key differ from what it embeds.
            model = StaticModel.from_pretrained(
                str(self.folder), normalize=True, max_length=None, force_download=False
            )
        except Exception as exc:
            raise ModelError(f"model '{self.name}': loading {self.folder} failed: {exc}") from exc
        if model.dim != self._fingerprint.dimension:
            raise ModelError(
                f"model '{self.name}': {self.folder} holds {model.dim}-dimensional vectors, "
                f"expected {self._fingerprint.dimension}; delete the folder to distil it again"
            )
        return model

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        """Rows with no known token stay zero: a static model has nothing to say about them."""
        vectors = self._model.encode(
            texts,
            max_length=None,
            normalize=False,
            batch_size=max(1, len(texts)),
            use_multiprocessing=False,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)

    def info(self) -> ModelInfo:
        params = param_bytes = None
        if self._model is not None:
            weights = np.asarray(self._model.embedding)
            params = int(weights.size)
            param_bytes = int(weights.nbytes)
        return ModelInfo(
            name=self.name,
            kind=self.kind,
            dimension=self._fingerprint.dimension,
            max_seq_length=self._fingerprint.max_seq_length,
            device="cpu",
            loaded=self._model is not None,
            parameters=params,
            parameter_bytes=param_bytes,
            load_seconds=self._load_seconds,
            query_p50_ms=self.query_p50_ms(),
            source=self._source,
            extra=distilled_record(self.folder) or {},
        )

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
