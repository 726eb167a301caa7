"""Small batches through ONNX Runtime: the same weights, exported once, several times faster.

On a CPU, torch pays a fixed cost per call (thread wake-ups, module dispatch) that dwarfs the
arithmetic of one short query: about 12 ms for a MiniLM query where ONNX Runtime takes 3 ms. For
long batches torch's kernels win (fused attention, better GEMM blocking), so only small batches
take this path. The export is verified against torch on every load: vectors agree to ~1e-7, so
the model's fingerprint, cache and indexes stay exactly as they were.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.base import ModelError

# Padded tokens (rows x longest row) up to which ONNX Runtime beats torch for MiniLM on a 2-core
# CPU (measured: 16-token texts win up to 32 rows, 64-token texts up to 16 rows, a lone text of
# any length wins). Longer batches go to torch.
MAX_PADDED_TOKENS = 1024
MAX_ROW_TOKENS = 128
# The export must reproduce torch's vectors; anything further off means a tokenizer or graph
# mismatch, and the model stays on torch.
MIN_PROBE_COSINE = 0.9999
PROBES = [
    "embedscope probe: Hello, World! Café, naïve résumé — 42 tokens?",
    " ".join(["A long passage keeps every layer and the padding mask honest."] * 40),
]
OPSET = 17


def _export(st_model: Any, target: Path) -> None:
    """Trace the whole sentence-transformers pipeline (encoder, pooling, normalise) into one
    graph; written beside its final name and renamed, so a reader never sees half a file."""
    import torch

    features = st_model.preprocess(PROBES[:1])
    names = [k for k, v in features.items() if isinstance(v, torch.Tensor)]

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st_model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.st(dict(zip(names, inputs, strict=True)))["sentence_embedding"]

    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pipeline().eval(),
                tuple(features[n] for n in names),
                tmp,
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


class OnnxRunner:
    """One ONNX Runtime session plus the model's own fast tokenizer, used on the model thread."""

    def __init__(
        self,
        path: Path,
        tokenizer_file: Path,
        *,
        pad_id: int,
        pad_token: str,
        max_length: int,
        threads: int,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Follow the process's OpenMP policy: spinning threads starve torch and the app on a
        # small machine (see engine/__init__.py); a user who chose ACTIVE gets spinning here too.
        spin = os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.threads = threads
        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self.tokenizer = tok

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._run(self.tokenizer.encode_batch(texts))

    def encode_if_small(self, texts: list[str]) -> np.ndarray | None:
        """The vectors of a batch small enough to beat torch here; None leaves it to torch."""
        encodings = self.tokenizer.encode_batch(texts)
        longest = len(encodings[0].ids) if encodings else 0
        if len(texts) > 1 and (
            longest > MAX_ROW_TOKENS or longest * len(texts) > MAX_PADDED_TOKENS
        ):
            return None
        return self._run(encodings)

    def _run(self, encodings: list[Any]) -> np.ndarray:
        """L2-normalised float32 rows, as every model in the engine returns."""
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {name: np.asarray(columns[name], dtype=np.int64) for name in self.inputs}
        vectors = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))


def load_runner(st_model: Any, folder: Path, target: Path, *, threads: int) -> OnnxRunner:
    """The verified runner for `st_model`: export on first use (or when the file is damaged or
    disagrees with torch), then check the export against torch on fixed probe texts."""
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelError(f"{folder} has no tokenizer.json (needed to run the model without torch)")
    tok = st_model.tokenizer
    if tok.pad_token_id is None:
        raise ModelError(f"the tokenizer in {folder} has no padding token")
    reference = st_model.encode(
        PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    problem = ""
    for attempt in range(2):
        if attempt or not target.is_file():
            _export(st_model, target)
        try:
            runner = OnnxRunner(
                target,
                tokenizer_file,
                pad_id=int(tok.pad_token_id),
                pad_token=str(tok.pad_token),
                max_length=int(st_model.max_seq_length),
                threads=threads,
            )
            vectors = runner.encode(PROBES)
        except Exception as exc:  # a damaged or stale file: export again once
            problem = f"the ONNX export at {target} does not load ({exc})"
            continue
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        if cosine >= MIN_PROBE_COSINE:
            return runner
        problem = f"the ONNX export differs from torch (probe cosine {cosine:.6f})"
    raise ModelError(problem)
