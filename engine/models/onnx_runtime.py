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

# Which batches ONNX Runtime takes (MiniLM, 2-core CPU, 32 texts, ms): rows of ~14 tokens: ORT
# in sub-batches 98, torch 111; ~45 tokens: 252 vs 270; ~62-99: within 4% either way; ~200 tokens:
# torch wins by a third. A lone text of any length: ORT 3-30 ms vs torch 12-36. So a batch whose
# rows fit MAX_ROW_TOKENS runs here, in length-sorted sub-batches of at most MAX_PADDED_TOKENS.
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
        dimension: int,
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
        self.dimension = dimension
        self.threads = threads
        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.enable_truncation(max_length=max_length)
        tok.no_padding()
        self.tokenizer = tok
        self.pad_id = pad_id

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._run_sorted(self.tokenizer.encode_batch(texts))

    def encode_if_small(self, texts: list[str]) -> np.ndarray | None:
        """The vectors of a batch whose rows are short enough to beat torch here (or of a lone
        text); None leaves the batch to torch.

        Indexing batches are mostly long: the longest text by characters, tokenized alone,
        usually turns them away before the whole batch is tokenized (7 ms for 32 abstracts).
        """
        if len(texts) > 1:
            longest = max(texts, key=len)
            if len(self.tokenizer.encode(longest).ids) > MAX_ROW_TOKENS:
                return None
        encodings = self.tokenizer.encode_batch(texts)
        if len(texts) > 1 and max(len(e.ids) for e in encodings) > MAX_ROW_TOKENS:
            return None
        return self._run_sorted(encodings)

    def _run_sorted(self, encodings: list[Any]) -> np.ndarray:
        """Rows sorted by length into sub-batches of at most MAX_PADDED_TOKENS padded tokens, so
        little compute goes to padding; results come back in input order."""
        if not encodings:
            return np.empty((0, self.dimension), dtype=np.float32)
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(encodings)), key=lengths.__getitem__)
        parts: list[np.ndarray] = []
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and lengths[order[end]] * (end - start + 1) <= MAX_PADDED_TOKENS:
                end += 1
            parts.append(self._run([encodings[i] for i in order[start:end]]))
            start = end
        out = np.empty((len(encodings), self.dimension), dtype=np.float32)
        out[order] = np.vstack(parts)
        return out

    def _run(self, encodings: list[Any]) -> np.ndarray:
        """One session call, padded to its longest row; L2-normalised float32 rows, as every
        model in the engine returns."""
        width = max(len(e.ids) for e in encodings)
        columns = {
            name: np.zeros((len(encodings), width), dtype=np.int64)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        }
        columns["input_ids"].fill(self.pad_id)
        for row, e in enumerate(encodings):
            columns["input_ids"][row, : len(e.ids)] = e.ids
            columns["attention_mask"][row, : len(e.ids)] = e.attention_mask
            columns["token_type_ids"][row, : len(e.ids)] = e.type_ids
        feed = {name: columns[name] for name in self.inputs}
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
                dimension=int(reference.shape[1]),
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
