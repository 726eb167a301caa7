"""sentence-transformers models, on the model's own thread (see `threaded`).

On a CPU, what a query needs loads in a fraction of a second: the verified ONNX Runtime export
(see `onnx_runtime`) and the tokenizer. torch and sentence-transformers, 2-4 s to import and
load, come in on the model thread only when a batch needs them: to make the export (once), or
for long batches once enough of them have run to repay the load.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.models.allocator import tune_allocator
from engine.models.base import Fingerprint, ModelError, ModelInfo
from engine.models.threaded import ThreadedModel

if TYPE_CHECKING:
    from engine.models.onnx_runtime import OnnxRunner

# Long batches run on ONNX Runtime until they have taken about what loading torch takes here
# (import and weights, 2-core CPU: 3-4 s); after that, torch's faster long-batch kernels repay
# their load. So a small update never loads torch, and a long indexing run loses at most the
# ~25% that ONNX Runtime is slower on long rows for those first seconds.
TORCH_AFTER_S = 4.0
_GPU_BUILD = re.compile(r"^(cuda|hip)\b[^=\n]*=\s*['\"]", re.MULTILINE)


def _gpu_possible() -> bool:
    """Whether torch could reach a GPU here, decided without importing torch (2 s of every cold
    command): its build is read from torch/version.py, a driver from the OS."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return True
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    version_file = Path(spec.submodule_search_locations[0]) / "version.py"
    try:
        build = _GPU_BUILD.search(version_file.read_text())
    except OSError:
        return True
    if build is None:
        return False
    if sys.platform != "linux":
        return True
    driver = "/proc/driver/nvidia/version" if build.group(1) == "cuda" else "/dev/kfd"
    return os.path.exists(driver)


def pick_device(requested: str) -> str:
    """auto = CUDA, then Apple MPS, then CPU; an explicit choice is checked, not trusted."""
    if requested == "cpu" or (requested == "auto" and not _gpu_possible()):
        return "cpu"
    if requested != "auto" and not requested.startswith("cuda"):
        return requested
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ModelError(f"device '{requested}' was asked for but CUDA is not available here")
    return requested


def cpu_threads() -> int:
    """What torch would use: OMP_NUM_THREADS, else one thread per physical core."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdecimal() and int(configured) > 0:
        return int(configured)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    smt = Path("/sys/devices/system/cpu/smt/active")
    if cpus and cpus > 1 and smt.is_file() and smt.read_text().strip() == "1":
        cpus //= 2
    return max(1, cpus or 1)


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
        onnx_dir: Path | None = None,
        int8: bool = False,
    ) -> None:
        super().__init__(name, location, fingerprint, source)
        # int8 (see `quantized`): every batch on the quantised export in `onnx_dir`, never torch,
        # whose fp32 vectors are another model's.
        self._int8 = int8
        self._requested_device = device
        self._trust_remote_code = trust_remote_code
        self._device = "not loaded"
        # Where the ONNX export for small batches lives; None keeps everything on torch.
        self._onnx_dir = onnx_dir
        self._runner: OnnxRunner | None = None
        self._small_runtime = "torch"
        # The sentence-transformers model, loaded on first need (see the module docstring).
        self._st: Any = None
        self._torch_seconds: float | None = None
        self._long_on_onnx_s = 0.0

    def _load_sync(self) -> Any:
        tune_allocator()
        if self._int8 and self._onnx_dir is not None:
            self._device = "cpu"
            self._runner = self._int8_runner(self._onnx_dir)
            return self._runner
        self._device = pick_device(self._requested_device)
        if self._device == "cpu" and self._onnx_dir is not None:
            self._runner = self._onnx_runner(self._onnx_dir)
        return self._runner if self._runner is not None else self._torch()

    def _load_all(self) -> None:
        self._ready()
        if not self._int8:
            self._torch()

    def _torch(self) -> Any:
        """The sentence-transformers model, loaded on the model thread the first time."""
        if self._st is not None:
            return self._st
        if self._runner is not None:
            self._runner.release_arena()
        started = time.perf_counter()
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # Load reports and progress bars would land in the app's terminal and --json output.
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            model = SentenceTransformer(
                str(self.folder),
                device=self._device,
                trust_remote_code=self._trust_remote_code,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(f"model '{self.name}': loading {self.folder} failed: {exc}") from exc
        if self._device.startswith("cuda"):
            model.half()
        model.max_seq_length = self._fingerprint.max_seq_length
        model.eval()
        self._st = model
        self._torch_seconds = time.perf_counter() - started
        # Inside the first load, `_ready` times the whole of it; later loads count here.
        if self._model is not None:
            self._add_load_time(self._torch_seconds)
        return model

    def _onnx_runner(self, folder: Path) -> OnnxRunner | None:
        """The checksum-verified export, made (with torch) when missing or damaged; None keeps
        the model on torch alone, and `info()` says why."""
        from engine.models.onnx_runtime import ExportNeeded, export_verified, load_verified

        digest = self._fingerprint.digest
        threads = cpu_threads()
        try:
            if not (self.folder / "tokenizer.json").is_file():
                raise ModelError(f"{self.folder} has no tokenizer.json (needed without torch)")
            tokenizer = self._tokenizer_obj()
            try:
                runner = load_verified(folder, tokenizer, digest, threads=threads)
            except ExportNeeded:
                st_model = self._torch()
                runner = export_verified(st_model, folder, tokenizer, digest, threads=threads)
        except Exception as exc:
            self._small_runtime = f"torch (ONNX Runtime unavailable: {exc})"
            return None
        self._small_runtime = f"onnxruntime, {runner.threads} threads"
        return runner

    def _int8_runner(self, folder: Path) -> OnnxRunner:
        """The verified int8 export, quantised from the fp32 one (made first, with torch, when
        missing); a ModelError says why it cannot be used."""
        from engine.models.onnx_runtime import ExportNeeded, export_verified, load_verified
        from engine.models.quantized import INT8_DIR, quantize_verified

        digest = self._fingerprint.digest
        threads = cpu_threads()
        if not (self.folder / "tokenizer.json").is_file():
            raise ModelError(f"{self.folder} has no tokenizer.json (needed by ONNX Runtime)")
        tokenizer = self._tokenizer_obj()
        try:
            runner = load_verified(folder / INT8_DIR, tokenizer, digest, threads=threads)
        except ExportNeeded:
            try:
                fp32 = load_verified(folder, tokenizer, digest, threads=threads)
            except ExportNeeded:
                fp32 = export_verified(self._torch(), folder, tokenizer, digest, threads=threads)
                self._st = None  # only the export needed torch's model
            runner = quantize_verified(
                fp32, folder, folder / INT8_DIR, tokenizer, digest, threads=threads
            )
            del fp32
        self._small_runtime = f"onnxruntime int8, {runner.threads} threads"
        return runner

    def encode_sync(self, texts: list[str]) -> np.ndarray:
        """Small batches (queries) on ONNX Runtime; long ones too until torch pays (see
        TORCH_AFTER_S), then on torch, where sentence-transformers sorts by length as well."""
        runner = self._runner
        if self._int8 and runner is not None:
            return runner.encode(texts)
        if runner is not None:
            small = runner.encode_if_small(texts)
            if small is not None:
                return small
            if self._st is None and self._long_on_onnx_s < TORCH_AFTER_S:
                started = time.perf_counter()
                vectors = runner.encode(texts)
                self._long_on_onnx_s += time.perf_counter() - started
                return vectors
        vectors = self._torch().encode(
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
        if self._st is not None:
            tensors = list(self._st.parameters())
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
            query_p50_ms=self.query_p50_ms(),
            source=self._source,
            small_batches=self._small_runtime,
            extra={"torch_load_seconds": self._torch_seconds},
        )
