"""sentence-transformers models, on the model's own thread (see `threaded`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.models.base import Fingerprint, ModelError, ModelInfo
from engine.models.threaded import ThreadedModel

if TYPE_CHECKING:
    from engine.models.onnx_runtime import OnnxRunner


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


class SentenceTransformerModel(ThreadedModel):
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
        onnx_file: Path | None = None,
    ) -> None:
        super().__init__(name, location, fingerprint, source)
        self._requested_device = device
        self._trust_remote_code = trust_remote_code
        self._device = "not loaded"
        # Where small batches' ONNX export lives; None keeps everything on torch.
        self._onnx_file = onnx_file
        self._runner: OnnxRunner | None = None
        self._small_runtime = "torch"

    def _load_sync(self) -> Any:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # Load reports and progress bars would land in the app's terminal and in --json output.
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        device = pick_device(self._requested_device)
        try:
            model = SentenceTransformer(
                str(self.folder),
                device=device,
                trust_remote_code=self._trust_remote_code,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(f"model '{self.name}': loading {self.folder} failed: {exc}") from exc
        if device.startswith("cuda"):
            model.half()
        model.max_seq_length = self._fingerprint.max_seq_length
        model.eval()
        self._device = device
        if device == "cpu" and self._onnx_file is not None:
            self._load_runner(model, self._onnx_file)
        return model

    def _load_runner(self, model: Any, onnx_file: Path) -> None:
        """Small batches on ONNX Runtime when the export loads and matches torch; otherwise the
        model still works, on torch alone, and `info()` says why."""
        import torch

        from engine.models.onnx_runtime import load_runner

        try:
            self._runner = load_runner(
                model, self.folder, onnx_file, threads=torch.get_num_threads()
            )
        except Exception as exc:
            self._small_runtime = f"torch (ONNX Runtime unavailable: {exc})"
            return
        self._small_runtime = f"onnxruntime, {self._runner.threads} threads"

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        """Small batches (queries) on ONNX Runtime when loaded; the rest through torch, where
        sentence-transformers sorts by length inside the batch too."""
        if self._runner is not None:
            small = self._runner.encode_if_small(texts)
            if small is not None:
                return small
        vectors = self._model.encode(
            texts,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _count_special(self, tokenizer: Any) -> int:
        return len(tokenizer.encode("", add_special_tokens=True).ids)

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
            small_batches=self._small_runtime,
        )
