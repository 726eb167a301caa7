"""Small batches through ONNX Runtime: the same weights, exported once, several times faster.

On a CPU, torch pays a fixed cost per call (thread wake-ups, module dispatch) that dwarfs the
arithmetic of one short query: about 12 ms for a MiniLM query where ONNX Runtime takes 3 ms. For
long batches torch's kernels win (fused attention, better GEMM blocking), so only small batches
take this path once torch is loaded.

The export is checked against torch once, when it is made: vectors agree to ~1e-7, so the
model's fingerprint, cache and indexes stay exactly as they were. The checksums of its files and
the probe result are then recorded beside it (`verified.json`), so a later load checks the
checksums alone and needs neither torch nor sentence-transformers (2-4 s of a cold command).
The weights sit in their own file (ONNX external data), so ONNX Runtime does not parse 90 MB
of protobuf to start a session (measured here under load: 5-15 ms to load the graph instead of
370-660 ms).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

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
GRAPH = "model.onnx"
WEIGHTS = "model.onnx.data"
RECORD = "verified.json"
RECORD_FORMAT = 2


class ExportNeeded(ModelError):
    """No usable verified export: missing, damaged, changed or for other weights. Making one
    needs torch; any other `ModelError` from here means it cannot be made (and says why)."""


def _sha256(path: Path) -> str:
    """file_digest reads into one reused buffer: ~15% faster on 90 MB of weights than reading
    fresh 4 MB blocks, which each cost page faults."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _versions() -> dict[str, str]:
    """What made or checked an export; a failed check is retried only when one of these moves."""
    import importlib.metadata

    out = {}
    for dist in ("torch", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def read_record(folder: Path) -> dict[str, Any] | None:
    """The verification record beside an export; None when absent or unreadable."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    """Written beside its final name, flushed, then renamed: a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(prefix=".verified-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"format": RECORD_FORMAT, **record}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / RECORD)
    finally:
        Path(tmp).unlink(missing_ok=True)


class OnnxRunner:
    """One ONNX Runtime session plus the model's own fast tokenizer, used on the model thread.

    The tokenizer is the model's (`ThreadedModel.truncate` uses it too: loading a second copy
    costs ~50 ms of a cold command); it is only read, never reconfigured, so it cuts rows to
    the window here the way its own truncation would.
    """

    def __init__(
        self,
        path: Path,
        tokenizer: Any,
        *,
        pad_id: int,
        dimension: int,
        max_length: int,
        threads: int,
    ) -> None:
        import onnxruntime as ort

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
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = pad_id

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._run_sorted(self._rows(texts))

    def _rows(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """Token and type ids per text, cut to the window as the tokenizer's own truncation
        cuts them: content tokens go from the end, the special tokens around them stay."""
        rows = []
        for e in self.tokenizer.encode_batch(texts):
            ids, types = e.ids, e.type_ids
            if len(ids) > self.max_length:
                mask = e.special_tokens_mask
                tail = len(mask) - len(bytes(mask).rstrip(b"\x01"))
                keep, end = self.max_length - tail, len(ids) - tail
                ids, types = ids[:keep] + ids[end:], types[:keep] + types[end:]
            rows.append((ids, types))
        return rows

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
        rows = self._rows(texts)
        if len(texts) > 1 and max(len(ids) for ids, _ in rows) > MAX_ROW_TOKENS:
            return None
        return self._run_sorted(rows)

    def _run_sorted(self, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """Rows sorted by length into sub-batches of at most MAX_PADDED_TOKENS padded tokens, so
        little compute goes to padding; results come back in input order."""
        if not rows:
            return np.empty((0, self.dimension), dtype=np.float32)
        lengths = [len(ids) for ids, _ in rows]
        order = sorted(range(len(rows)), key=lengths.__getitem__)
        parts: list[np.ndarray] = []
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and lengths[order[end]] * (end - start + 1) <= MAX_PADDED_TOKENS:
                end += 1
            parts.append(self._run([rows[i] for i in order[start:end]]))
            start = end
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        out[order] = np.vstack(parts)
        return out

    def release_arena(self) -> None:
        """Hand the memory arena's free blocks back to the system: one one-row call with ONNX
        Runtime's arena shrinkage on. The arena keeps the peak of the long batches it ran; once
        torch takes those over (see `engine.models.local`), both runtimes' working memory would
        add up: an indexing run of 150 SciFact documents peaked at 929 MB instead of 854."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._run(self._rows([""]), options)

    def _run(self, rows: list[tuple[list[int], list[int]]], options: Any = None) -> np.ndarray:
        """One session call, padded to its longest row; L2-normalised float32 rows, as every
        model in the engine returns."""
        width = max(len(ids) for ids, _ in rows)
        columns = {
            name: np.zeros((len(rows), width), dtype=np.int64)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        }
        columns["input_ids"].fill(self.pad_id)
        for row, (ids, types) in enumerate(rows):
            columns["input_ids"][row, : len(ids)] = ids
            columns["attention_mask"][row, : len(ids)] = 1
            columns["token_type_ids"][row, : len(ids)] = types
        feed = {name: columns[name] for name in self.inputs}
        vectors = np.asarray(self.session.run(None, feed, options)[0], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))


def load_verified(folder: Path, tokenizer: Any, digest: str, *, threads: int) -> OnnxRunner:
    """The export recorded as verified for the weights `digest`, once its files still match
    their recorded checksums; no torch. Raises `ExportNeeded` when one must be made (again).

    The small graph is checked before ONNX Runtime parses it; the weights (changed bytes can
    only make wrong numbers, a short file is refused) are hashed on another thread while the
    session starts, since hashlib releases the GIL: on two cores the check costs no wall time.
    """
    record = read_record(folder)
    if record is None:
        raise ExportNeeded(f"no verified ONNX export in {folder}")
    if record.get("fingerprint") != digest:
        raise ExportNeeded(f"the ONNX export in {folder} was made for other weights")
    if not record.get("ok"):
        reason = str(record.get("reason", "the last export failed its check"))
        if record.get("versions") != _versions():
            raise ExportNeeded(f"{reason}; trying again with new torch/onnxruntime versions")
        raise ModelError(reason)
    files = record.get("files") or {}
    for name in (GRAPH, WEIGHTS):
        if not isinstance(files.get(name), str):
            raise ExportNeeded(f"the record in {folder} lists no checksum for {name}")
    try:
        if _sha256(folder / GRAPH) != files[GRAPH]:
            raise ExportNeeded(f"{folder / GRAPH} does not match its recorded checksum")
    except OSError as exc:
        raise ExportNeeded(f"the ONNX export in {folder} is unreadable ({exc})") from exc
    weights: dict[str, str | Exception] = {}

    def hash_weights() -> None:
        try:
            weights["sha256"] = _sha256(folder / WEIGHTS)
        except OSError as exc:
            weights["error"] = exc

    hasher = threading.Thread(target=hash_weights, name="onnx-checksum", daemon=True)
    hasher.start()
    try:
        runner = OnnxRunner(
            folder / GRAPH,
            tokenizer,
            pad_id=int(record["pad_id"]),
            dimension=int(record["dimension"]),
            max_length=int(record["max_length"]),
            threads=threads,
        )
    except Exception as exc:  # damaged weights that ONNX Runtime refuses, a bad record
        hasher.join()
        raise ExportNeeded(f"the ONNX export in {folder} does not load ({exc})") from exc
    hasher.join()
    if weights.get("sha256") != files[WEIGHTS]:
        problem = weights.get("error") or "it does not match its recorded checksum"
        raise ExportNeeded(f"{folder / WEIGHTS}: {problem}")
    return runner


def _export(st_model: Any, target: Path) -> None:
    """Trace the whole sentence-transformers pipeline (encoder, pooling, normalise) into one
    graph, then move its weights into their own file beside it (see the module docstring)."""
    import onnx
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
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pipeline().eval(),
            tuple(features[n] for n in names),
            str(target),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(target))
    onnx.save_model(
        graph,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS,
        size_threshold=1024,
    )


def export_verified(
    st_model: Any, folder: Path, tokenizer: Any, digest: str, *, threads: int
) -> OnnxRunner:
    """Export `st_model`, check it against torch on fixed probe texts, and record the result
    beside it; returns the runner, or raises ModelError saying why ONNX Runtime cannot be used.

    The files are made in a staging folder and moved into place before the record that vouches
    for them is written, so a reader sees either no record, or one that matches (a reader that
    catches the moment between sees a checksum mismatch and makes its own export).
    """
    pad_id = st_model.tokenizer.pad_token_id
    if pad_id is None:
        raise ModelError("the model's tokenizer has no padding token")
    reference = st_model.encode(
        PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    shape = {
        "pad_id": int(pad_id),
        "dimension": int(reference.shape[1]),
        "max_length": int(st_model.max_seq_length),
    }
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        try:
            _export(st_model, staging / GRAPH)
            probe = OnnxRunner(staging / GRAPH, tokenizer, threads=threads, **shape)
            cosine = float(np.min(np.sum(probe.encode(PROBES) * reference, axis=1)))
            del probe
        except OSError:
            raise  # a full disk or a permission: not the export's fault, so nothing is recorded
        except Exception as exc:
            refuse(folder, digest, f"the ONNX export of this model does not run ({exc})")
        if cosine < MIN_PROBE_COSINE:
            refuse(folder, digest, f"the ONNX export differs from torch (probe cosine {cosine})")
        install(
            staging,
            folder,
            {
                "fingerprint": digest,
                "probe_min_cosine": cosine,
                "min_probe_cosine": MIN_PROBE_COSINE,
                **shape,
                "opset": OPSET,
            },
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_verified(folder, tokenizer, digest, threads=threads)


def install(staging: Path, folder: Path, record: dict[str, Any]) -> None:
    """Move a checked graph and its weights from `staging` into `folder`, then write the record
    that vouches for them, with their checksums (see `export_verified`)."""
    files = {}
    for name in (GRAPH, WEIGHTS):
        with (staging / name).open("rb") as fh:
            os.fsync(fh.fileno())
        files[name] = _sha256(staging / name)
    (folder / RECORD).unlink(missing_ok=True)
    for name in (WEIGHTS, GRAPH):
        os.replace(staging / name, folder / name)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    _write_record(
        folder,
        {"ok": True, **record, "files": files, "versions": _versions(), "created": created},
    )


def refuse(folder: Path, digest: str, reason: str) -> NoReturn:
    """Record a failed check, so later loads go straight to torch instead of exporting again
    (until torch or ONNX Runtime changes), then raise it."""
    record = {"ok": False, "fingerprint": digest, "reason": reason, "versions": _versions()}
    _write_record(folder, record)
    raise ModelError(reason)
